package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/web"
)

// newFleetCmd is `shoal fleet status` and `shoal fleet device ID`: the
// status page's data for a terminal, read from the hub's /api/v1 JSON with
// the operator token.
func newFleetCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "fleet", Short: "The fleet as the hub sees it (status page data for terminals)"}

	var (
		oc                         opConn
		group, state, label, query string
		limit, page                int
		asJSON                     bool
	)
	status := &cobra.Command{
		Use:   "status",
		Short: "Counts by state and a page of devices with their latest report",
		Long: `shoal fleet status prints how many devices are in each state and a table of
devices: state, applied commit, release and slot, apps healthy/total, last
seen, attestation and clock offset.

--state takes a device state (the words the table and the status page use):
` + stateHelp() + `
or a condition: ` + strings.Join(store.Conditions, ", ") + `; or all.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state != "" && !slices.Contains(store.Filters, state) {
				return usageError{fmt.Errorf("--state %q: want one of %s", state, strings.Join(store.Filters, ", "))}
			}
			v := url.Values{}
			for k, val := range map[string]string{"group": group, "state": state, "label": label, "q": query} {
				if val != "" {
					v.Set(k, val)
				}
			}
			v.Set("per", strconv.Itoa(limit))
			v.Set("page", strconv.Itoa(page))
			var f web.Fleet
			if err := oc.do(cmd.Context(), "GET", "/api/v1/fleet?"+v.Encode(), nil, &f); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(f)
			}
			printFleet(w, f)
			return nil
		},
	}
	oc.flags(status)
	sf := status.Flags()
	sf.StringVar(&group, "group", "", "only devices in this group")
	sf.StringVar(&state, "state", "", "only devices in this state (see above)")
	sf.StringVar(&label, "label", "", "only devices with this label (key or key=value)")
	sf.StringVar(&query, "search", "", "only devices whose ID contains this")
	sf.IntVar(&limit, "limit", 50, "devices per page (at most 500)")
	sf.IntVar(&page, "page", 1, "page number")
	sf.BoolVar(&asJSON, "json", false, "print the hub's JSON")

	var (
		oc2     opConn
		devJSON bool
	)
	device := &cobra.Command{
		Use:   "device ID",
		Short: "One device: commits, apps, A/B update, attestation, clock and recent reports",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var d web.DeviceDetail
			if err := oc2.do(cmd.Context(), "GET", "/api/v1/devices/"+url.PathEscape(args[0]), nil, &d); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if devJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(d)
			}
			printDevice(w, d)
			return nil
		},
	}
	oc2.flags(device)
	device.Flags().BoolVar(&devJSON, "json", false, "print the hub's JSON")
	cmd.AddCommand(status, device)
	return cmd
}

// stateHelp lists the device states with what each means, one a line.
func stateHelp() string {
	var b strings.Builder
	for _, st := range api.States {
		fmt.Fprintf(&b, "  %-10s %s\n", st, st.Meaning())
	}
	return b.String()
}

func short(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return dash(s)
}

func seen(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func clockText(d web.Device) string {
	switch d.ClockState {
	case "ok":
		return d.Skew.String()
	case "skewed":
		return "skewed " + d.Skew.String()
	case "unknown", "untrusted":
		return d.ClockState
	}
	switch {
	case d.ClockTrusted == nil:
		return "-"
	case !*d.ClockTrusted:
		return "untrusted"
	}
	return d.Skew.String()
}

func printFleet(w io.Writer, f web.Fleet) {
	var parts []string
	for _, s := range store.Filters {
		if n := f.Counts[s]; n > 0 || s == store.FilterAll {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	fmt.Fprintln(w, strings.Join(parts, " · "))
	fmt.Fprintf(w, "%-24s %-10s %-9s %-12s %-5s %-20s %-8s %s\n", "DEVICE", "STATE", "COMMIT", "RELEASE", "APPS", "LAST SEEN", "ATTEST", "CLOCK")
	for _, d := range f.Devices {
		st := dash(d.State)
		if d.UpdateState == "trial" || d.UpdateState == "rolled-back" {
			st += "/" + d.UpdateState
		}
		rel := dash(d.Release)
		if d.Slot != "" {
			rel += "@" + d.Slot
		}
		fmt.Fprintf(w, "%-24s %-10s %-9s %-12s %-5s %-20s %-8s %s\n", d.ID, st, short(d.Commit), rel,
			fmt.Sprintf("%d/%d", d.AppsHealthy, d.AppsTotal), seen(d.LastSeen), d.Attestation, clockText(d))
	}
	end := f.Offset + len(f.Devices)
	fmt.Fprintf(w, "%d–%d of %d\n", min(f.Offset+1, end), end, f.Total)
}

// printRollback prints what a rollback left: when (absolute and how long
// ago, by the device's clock), the check, exit code, message and log lines.
func printRollback(w io.Writer, what string, rb *api.Rollback) {
	when := ""
	if !rb.Time.IsZero() {
		when = fmt.Sprintf(" %s (%s ago)", rb.Time.UTC().Format(time.RFC3339), time.Since(rb.Time).Round(time.Second))
	}
	fmt.Fprintf(w, "%s%s: %s", what, when, rb.Check)
	if rb.ExitCode != 0 {
		fmt.Fprintf(w, " (exit %d)", rb.ExitCode)
	}
	if rb.Message != "" {
		fmt.Fprintf(w, ": %s", rb.Message)
	}
	fmt.Fprintln(w)
	for _, l := range rb.LogTail {
		fmt.Fprintf(w, "  | %s\n", l)
	}
}

func printDevice(w io.Writer, dd web.DeviceDetail) {
	d := dd.Device
	fmt.Fprintf(w, "device     %s\nstate      %s\ngroups     %s\nlast seen  %s (report %d)\n", d.ID, dash(d.State), dash(strings.Join(d.Groups, ", ")), seen(d.LastSeen), d.Seq)
	fmt.Fprintf(w, "applied    %s\nattempted  %s\n", dash(d.Commit), dash(d.Attempted))
	if p := d.Problem; p != nil {
		fmt.Fprintf(w, "problem    %s: %s\n", p.Reason, p.Message)
	}
	fmt.Fprintf(w, "attest     %s", web.AttestText(d.Attestation))
	if len(dd.Verdicts) > 0 {
		switch v := dd.Verdicts[0]; {
		case v.OK && len(v.CheckedPCRs) > 0:
			fmt.Fprintf(w, " (PCRs %s held to the release's values, %s)", strings.Trim(fmt.Sprint(v.CheckedPCRs), "[]"), v.Time.UTC().Format(time.RFC3339))
		case v.OK:
			fmt.Fprintf(w, " (%s: the quote is fresh and signed, but the hub had no PCR values to hold it to: no --fleet, or the release lists no pcrs)", v.Time.UTC().Format(time.RFC3339))
		}
	}
	fmt.Fprintf(w, "\nclock      %s\n", clockText(d))
	if len(dd.Verdicts) > 0 && !dd.Verdicts[0].OK {
		for _, r := range dd.Verdicts[0].Reasons {
			fmt.Fprintf(w, "  failed   %s\n", r)
		}
	}
	if u := dd.Update; u != nil {
		fmt.Fprintf(w, "update     %s, running %s on slot %s", u.State, dash(u.Version), dash(u.Slot))
		if u.Target != "" {
			fmt.Fprintf(w, ", target %s", u.Target)
		}
		fmt.Fprintln(w)
		if rb := u.Rollback; rb != nil {
			printRollback(w, "  rollback", rb)
		}
	}
	if len(dd.Apps) > 0 {
		fmt.Fprintf(w, "\n%-20s %-10s %-10s %s\n", "APP", "STATE", "HEALTH", "NOTES")
		for _, a := range dd.Apps {
			fmt.Fprintf(w, "%-20s %-10s %-10s %s\n", a.Name, dash(a.State), dash(a.Health), strings.TrimSpace(a.Drift+" "+a.Message))
		}
		for _, a := range dd.Apps {
			if a.Rollback != nil {
				printRollback(w, "rollback of "+a.Name, a.Rollback)
			}
		}
	}
	if d.OfflineWork && d.LastReceipt != nil {
		r := d.LastReceipt
		fmt.Fprintf(w, "offline    bundle %s %s after the last report", r.Result, r.Applied.UTC().Format(time.RFC3339))
		if r.Commit != "" {
			fmt.Fprintf(w, ", commit %s", r.Commit)
		}
		if r.Release != "" {
			fmt.Fprintf(w, ", release %s", r.Release)
		}
		fmt.Fprintln(w)
	}
	if len(dd.Receipts) > 0 {
		fmt.Fprintf(w, "\nRECEIPTS (offline bundles)\n%-20s %-12s %-16s %-10s %-8s %s\n", "APPLIED", "BUNDLE", "COMMIT", "RELEASE", "RESULT", "ERRORS")
		for _, r := range dd.Receipts {
			res := r.Result
			if r.Reason != "" {
				res += " (" + r.Reason + ")"
			}
			fmt.Fprintf(w, "%-20s %-12s %-16s %-10s %-8s %s\n", r.Applied.UTC().Format(time.RFC3339), dash(short12(r.BundleHash)),
				dash(r.Commit[:min(len(r.Commit), 16)]), dash(r.Release), res, strings.Join(r.Errors, "; "))
		}
	}
	if len(dd.Reports) > 0 {
		fmt.Fprintf(w, "\n%-6s %-20s %-10s %s\n", "SEQ", "TIME", "STATE", "PROBLEM")
		for _, r := range dd.Reports[:min(len(dd.Reports), 10)] {
			prob := ""
			if r.Problem != nil {
				prob = r.Problem.Reason
			}
			fmt.Fprintf(w, "%-6d %-20s %-10s %s\n", r.Seq, r.Time.UTC().Format(time.RFC3339), r.State, prob)
		}
	}
}
