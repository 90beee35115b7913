package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/rollout"
	"github.com/shoalfleet/shoal/spec"
)

// newRolloutCmd is `shoal rollout status|approve|pause|resume|abort`.
func newRolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Staged rollouts on the hub: status, approve, pause, resume, abort",
		Long: `rollout shows and steers the hub's staged rollouts (operator token). The
fleet repo's rollout section declares them; the hub (with --fleet) rolls out
each new commit that changes devices wave by wave, and these commands act on
the newest rollout, or on the rollout of --commit (a prefix will do).

Exit codes: 0 ok, 1 failed (no such rollout or wave, hub unreachable), 2 usage error.`,
	}
	var (
		oc      opConn
		commit  string
		output  string
		devices bool
	)
	status := &cobra.Command{
		Use:   "status",
		Short: "Show a rollout: its waves, their devices, bake time left, failed gates and events",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			q := url.Values{}
			if commit != "" {
				q.Set("commit", commit)
			}
			if devices {
				q.Set("devices", "1")
			}
			var v api.RolloutView
			if err := oc.do(cmd.Context(), "GET", "/v1/admin/rollouts/current?"+q.Encode(), nil, &v); err != nil {
				return err
			}
			return printRollout(cmd.OutOrStdout(), &v, output, devices)
		},
	}
	oc.flags(status)
	status.Flags().StringVar(&commit, "commit", "", "the rollout of this commit (a prefix will do; default: the newest rollout)")
	status.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	status.Flags().BoolVar(&devices, "devices", false, "list every device of each wave, not only the failed ones")
	cmd.AddCommand(status)
	for _, a := range []struct{ name, short string }{
		{"approve", "Approve a wave that waits for an operator (default: the next one that waits)"},
		{"pause", "Pause a rollout: no wave opens and no device is granted the commit until resumed"},
		{"resume", "Resume a paused rollout"},
		{"abort", "Abort a rollout: no device is granted its commit any more (devices that took it keep it)"},
	} {
		var (
			oc                                   opConn
			commit, wave, track, reason, outflag string
		)
		c := &cobra.Command{
			Use:   a.name,
			Short: a.short,
			Args:  exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := checkOutput(outflag); err != nil {
					return err
				}
				req := &api.RolloutAction{APIVersion: api.Version, Action: a.name, Commit: commit, Wave: wave, Track: track, Reason: reason}
				if err := req.Validate(); err != nil {
					return usageError{err}
				}
				var v api.RolloutView
				if err := oc.do(cmd.Context(), "POST", "/v1/admin/rollouts/action", req, &v); err != nil {
					return err
				}
				if outflag == "json" {
					return printRollout(cmd.OutOrStdout(), &v, outflag, false)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: rollout %d of %.12s is %s\n", a.name, v.ID, v.Commit, v.Status)
				return nil
			},
		}
		oc.flags(c)
		f := c.Flags()
		f.StringVar(&commit, "commit", "", "the rollout of this commit (a prefix will do; default: the newest rollout)")
		f.StringVar(&reason, "reason", "", "why, recorded with the action in the rollout's events")
		f.StringVarP(&outflag, "output", "o", "text", "text or json (the rollout after the action)")
		if a.name == "approve" {
			f.StringVar(&wave, "wave", "", "the wave: its name or 1-based index (default: the next wave that waits for approval)")
			f.StringVar(&track, "track", "", "only this track (default: every track with that wave)")
		}
		cmd.AddCommand(c)
	}
	return cmd
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return usageError{fmt.Errorf("--output %q: want text or json", o)}
	}
	return nil
}

func printRollout(w io.Writer, v *api.RolloutView, output string, devices bool) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	status := v.Status
	if v.Urgent {
		status += " (urgent)"
	}
	fmt.Fprintf(w, "rollout %d of %.12s: %s\n", v.ID, v.Commit, status)
	if v.Reason != "" {
		fmt.Fprintf(w, "  %s\n", v.Reason)
	}
	c := v.Counts
	fmt.Fprintf(w, "  started %s; %d device(s): %d healthy, %d failed, %d pending; %d admitted, %d granted\n",
		v.Created.Local().Format(time.RFC3339), c.Members, c.Healthy, c.Failed, c.Pending, c.Admitted, c.Granted)
	if g := gateList(c.FailedGates); g != "" {
		fmt.Fprintf(w, "  failed gates: %s\n", g)
	}
	for _, t := range v.Tracks {
		fmt.Fprintf(w, "track %s\n", t.Name)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  WAVE\tSTATE\tDEVICES\tHEALTHY\tFAILED\tPENDING\tGRANTED\tBAKE\tTHRESHOLD")
		for _, wv := range t.Waves {
			state := wv.State
			if wv.Approval && !wv.Approved && wv.State == rollout.WaveWaiting {
				state += " (needs approval)"
			}
			bake := wv.Bake.String()
			if wv.State == rollout.WaveBaking {
				bake = wv.BakeLeft.Round(time.Second).String() + " left of " + bake
			}
			fmt.Fprintf(tw, "  %d %s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", wv.Index, wv.Name, state, wv.Counts.Members, wv.Counts.Healthy,
				wv.Counts.Failed, wv.Counts.Pending, wv.Counts.Granted, bake, wv.Threshold)
		}
		tw.Flush()
		for _, wv := range t.Waves {
			if wv.Note != "" {
				fmt.Fprintf(w, "  wave %d: %s\n", wv.Index, wv.Note)
			}
			for _, d := range wv.Devices {
				if !devices && d.Verdict != string(rollout.Failed) {
					continue
				}
				line := fmt.Sprintf("    wave %d: %s %s", wv.Index, d.ID, d.Verdict)
				if len(d.Gates) > 0 {
					line += " (" + strings.Join(d.Gates, ", ") + ")"
				}
				if d.Granted {
					line += ", granted"
				} else if d.Admitted {
					line += ", admitted"
				}
				if d.Why != "" && d.Why != rollout.WhyWave {
					line += ", " + d.Why
				}
				if d.Flag != "" {
					line += ", " + d.Flag
				}
				fmt.Fprintln(w, line)
			}
		}
	}
	if len(v.Events) > 0 {
		fmt.Fprintln(w, "events (newest first):")
		for _, e := range v.Events {
			dev := ""
			if e.Device != "" {
				dev = " " + e.Device
			}
			fmt.Fprintf(w, "  %s %s%s: %s\n", e.Time.Local().Format(time.RFC3339), e.Kind, dev, e.Message)
		}
	}
	return nil
}

func gateList(g map[string]int) string {
	var parts []string
	for _, name := range rollout.Gates {
		if n := g[name]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", name, n))
		}
	}
	return strings.Join(parts, ", ")
}

// wavePlace is where a changed device falls in the rollout of a commit.
type wavePlace struct {
	Track string `json:"track"`
	Index int    `json:"wave"` // 1-based
	Name  string `json:"waveName"`
	Waves int    `json:"waves"`
}

func (p wavePlace) String() string {
	return fmt.Sprintf("track %s, wave %d of %d (%s)", p.Track, p.Index, p.Waves, p.Name)
}

// placeWaves places the devices that change from before to after (by spec
// hash) in the waves of their rollout policy at after, for commit, as the
// hub does with the devices that run before's specs. Devices the fleet
// does not hold to a rollout are left out.
func placeWaves(before, after map[string]*spec.Device, commit string) map[string]wavePlace {
	tracks := map[string][]rollout.Candidate{}
	policies := map[string]*spec.Rollout{}
	for id, d := range after {
		if d == nil || d.Rollout == nil {
			continue
		}
		if b := before[id]; b != nil && b.Hash() == d.Hash() {
			continue
		}
		tracks[d.Rollout.Track] = append(tracks[d.Rollout.Track], rollout.Candidate{ID: id, Labels: d.Labels})
		policies[d.Rollout.Track] = d.Rollout
	}
	out := map[string]wavePlace{}
	for track, cands := range tracks {
		p := policies[track]
		for id, i := range rollout.Assign(p, commit, cands) {
			out[id] = wavePlace{Track: track, Index: i + 1, Name: p.Waves[i].Name, Waves: len(p.Waves)}
		}
	}
	return out
}

// waveSummary says how many of the changed devices go in each wave.
func waveSummary(places map[string]wavePlace) string {
	count := map[string]int{}
	for _, p := range places {
		count[fmt.Sprintf("%s\x00%03d\x00%s", p.Track, p.Index, p.Name)]++
	}
	keys := make([]string, 0, len(count))
	for k := range count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		f := strings.Split(k, "\x00")
		parts = append(parts, fmt.Sprintf("%s wave %s (%s): %d", f[0], strings.TrimLeft(f[1], "0"), f[2], count[k]))
	}
	return strings.Join(parts, ", ")
}
