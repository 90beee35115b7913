package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"

	"cuelang.org/go/cue/cuecontext"
	cueyaml "cuelang.org/go/encoding/yaml"
	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/spec"
)

// loadFleet loads a fleet repo directory and prints its load errors.
func loadFleet(w io.Writer, dir string) (*spec.Fleet, int) {
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		fmt.Fprintf(w, "shoal: %s is not a directory\n", dir)
		return nil, 1
	}
	f, err := spec.Load(os.DirFS(dir))
	return f, printErrors(w, err)
}

// renderDevice loads the fleet repo in dir and renders one device, printing
// what is wrong with either.
func renderDevice(cmd *cobra.Command, dir, device string) (*spec.Device, error) {
	if device == "" {
		return nil, usageError{errors.New("--device is required")}
	}
	f, n := loadFleet(cmd.ErrOrStderr(), dir)
	if f == nil || n > 0 {
		return nil, silentError{exitInvalid}
	}
	d, err := f.Render(device)
	if err != nil {
		printErrors(cmd.ErrOrStderr(), err)
		return nil, silentError{exitInvalid}
	}
	return d, nil
}

// printErrors prints err (spec.Errors one per line) and returns how many there were.
func printErrors(w io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var errs spec.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintln(w, e)
		}
		return len(errs)
	}
	fmt.Fprintln(w, err)
	return 1
}

func newValidateCmd() *cobra.Command {
	var workers int
	cmd := &cobra.Command{
		Use:   "validate DIR",
		Short: "Check every file and every device of a fleet repo",
		Long: `validate loads the fleet repo in DIR, checks every file against the schema
and renders every device. Then it checks every image tar in DIR a device
would load (image.source.path): its sha256 must be image.source.sha256 and
it must hold the tag image.ref names (docker save format or an OCI image
layout). Every problem is printed as file:line:column, the field path and
what is wrong; a device that matches no group is a warning.
The last line sums up devices, apps and releases.

Exit codes: 0 valid, 1 invalid, 2 usage error.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
			f, nerr := loadFleet(errw, args[0])
			if f == nil {
				return silentError{exitInvalid}
			}
			results := f.RenderAll(workers)
			// A problem in a shared file shows up for every device it touches: print it once.
			seen := map[string]int{}
			var order []string
			var warnings []string
			for _, r := range results {
				warnings = append(warnings, r.Warnings...)
				if r.Err == nil {
					continue
				}
				var errs spec.Errors
				if !errors.As(r.Err, &errs) {
					errs = spec.Errors{{Msg: fmt.Sprintf("device %q: %v", r.ID, r.Err)}}
				}
				for _, e := range errs {
					k := e.Error()
					if seen[k] == 0 {
						order = append(order, k)
					}
					seen[k]++
				}
			}
			// Image tars kept in the repo: checked once the spec is.
			if nerr == 0 && len(order) == 0 {
				for _, e := range checkImageTars(args[0], f, results) {
					order = append(order, e.Error())
					seen[e.Error()] = 1
				}
			}
			if nerr == 0 {
				for _, k := range order {
					if seen[k] > 1 {
						fmt.Fprintf(errw, "%s (%d devices)\n", k, seen[k])
					} else {
						fmt.Fprintln(errw, k)
					}
				}
				nerr = len(order)
			}
			for _, w := range warnings {
				fmt.Fprintln(errw, "warning:", w)
			}
			bad := 0
			for _, r := range results {
				if r.Err != nil {
					bad++
				}
			}
			status := "ok"
			if nerr > 0 {
				status = fmt.Sprintf("%d error(s), %d device(s) invalid", nerr, bad)
			}
			fmt.Fprintf(out, "%s: %d devices, %d groups, %d apps, %d releases: %s\n",
				args[0], len(results), len(f.GroupNames()), len(f.AppNames()), len(f.ReleaseNames()), status)
			if nerr > 0 {
				return silentError{exitInvalid}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&workers, "workers", runtime.GOMAXPROCS(0), "devices rendered in parallel")
	return cmd
}

func newRenderCmd() *cobra.Command {
	var device string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "render --device ID DIR",
		Short: "Print the spec one device renders to",
		Long: `render prints what device ID gets from the fleet repo in DIR: every layer
(schema defaults, app definitions, fleet, matching groups, the device file)
resolved, as YAML or, with --json, as the canonical JSON whose sha256 the agent
compares to detect change. The hash is printed as a comment (YAML) or on stderr.

Exit codes: 0 ok, 1 invalid, 2 usage error.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := renderDevice(cmd, args[0], device)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				fmt.Fprintf(out, "%s\n", d.Canonical())
				fmt.Fprintf(cmd.ErrOrStderr(), "sha256 %s\n", d.Hash())
				return nil
			}
			y, err := toYAML(d.Canonical())
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "# device %s, spec sha256 %s\n%s", d.ID, d.Hash(), y)
			return nil
		},
	}
	cmd.Flags().StringVar(&device, "device", "", "device ID (a devices/<ID>.yaml file)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print canonical JSON instead of YAML")
	return cmd
}

func toYAML(js []byte) ([]byte, error) {
	v := cuecontext.New().CompileBytes(js)
	if err := v.Err(); err != nil {
		return nil, err
	}
	return cueyaml.Encode(v)
}

func newDevicesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "devices DIR",
		Short: "List the devices of a fleet repo with their labels and groups",
		Long: `devices lists every device of the fleet repo in DIR: its ID, labels, the
groups it matches (in the order they apply), its release and app count.

Exit codes: 0 ok, 1 invalid, 2 usage error.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, n := loadFleet(cmd.ErrOrStderr(), args[0])
			if f == nil || n > 0 {
				return silentError{exitInvalid}
			}
			type row struct {
				ID      string            `json:"id"`
				Labels  map[string]string `json:"labels,omitempty"`
				Groups  []string          `json:"groups"`
				Release string            `json:"release,omitempty"`
				Apps    int               `json:"apps"`
				Error   string            `json:"error,omitempty"`
			}
			var rows []row
			failed := false
			for _, r := range f.RenderAll(runtime.GOMAXPROCS(0)) {
				if r.Err != nil {
					failed = true
					rows = append(rows, row{ID: r.ID, Error: r.Err.Error()})
					continue
				}
				rw := row{ID: r.ID, Labels: r.Device.Labels, Groups: r.Device.Groups, Apps: len(r.Device.Apps)}
				if r.Device.Release != nil {
					rw.Release = r.Device.Release.Name
				}
				rows = append(rows, rw)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rows); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tLABELS\tGROUPS\tRELEASE\tAPPS")
				for _, r := range rows {
					if r.Error != "" {
						fmt.Fprintf(tw, "%s\t(invalid: %s)\t\t\t\n", r.ID, strings.SplitN(r.Error, "\n", 2)[0])
						continue
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", r.ID, labelString(r.Labels), strings.Join(r.Groups, ","), dash(r.Release), r.Apps)
				}
				tw.Flush()
			}
			if failed {
				return silentError{exitInvalid}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func labelString(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return dash(strings.Join(keys, ","))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newDiffCmd() *cobra.Command {
	var device string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "diff [--device ID] REV1 REV2 DIR",
		Short: "Show which devices a commit changes, and how",
		Long: `diff renders every device of the fleet repo in DIR (a Git working tree, or a
directory inside one) at two revisions and prints, for each device whose
spec differs, what changes: apps added, removed or changed (with the changed
fields), the release, and policies. Use it to see the blast radius of a
commit before pushing it, e.g. shoal diff origin/main HEAD .

Revisions are anything Git resolves: a branch, tag, commit or HEAD~1.

When the fleet declares a rollout, each changed device also shows the wave
it falls in when the hub rolls REV2 out to devices that run REV1 (devices
that run something else when the rollout starts may shift the waves).

Exit codes: 0 ok (whether or not anything changes), 1 invalid (either
revision does not validate), 2 usage error.`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			errw := cmd.ErrOrStderr()
			renders := make([]map[string]*spec.Device, 2)
			var hash2 string
			for i, rev := range args[:2] {
				fsys, hash, err := gitfs.Open(args[2], rev)
				if err != nil {
					return err
				}
				hash2 = hash
				m, ok := renderRev(errw, fsys, rev, hash, device)
				if !ok {
					return silentError{exitInvalid}
				}
				renders[i] = m
			}
			ids := map[string]bool{}
			for _, m := range renders {
				for id := range m {
					ids[id] = true
				}
			}
			sorted := make([]string, 0, len(ids))
			for id := range ids {
				sorted = append(sorted, id)
			}
			sort.Strings(sorted)
			type deviceDiff struct {
				ID      string        `json:"id"`
				Changes []spec.Change `json:"changes"`
				Rollout *wavePlace    `json:"rollout,omitempty"`
			}
			places := placeWaves(renders[0], renders[1], hash2)
			var diffs []deviceDiff
			for _, id := range sorted {
				if ch := spec.Diff(renders[0][id], renders[1][id]); len(ch) > 0 {
					dd := deviceDiff{ID: id, Changes: ch}
					if p, ok := places[id]; ok {
						dd.Rollout = &p
					}
					diffs = append(diffs, dd)
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(diffs)
			}
			for _, d := range diffs {
				what := "changes"
				switch {
				case renders[0][d.ID] == nil:
					what = "is added"
				case renders[1][d.ID] == nil:
					what = "is removed"
				}
				if d.Rollout != nil {
					what += " (rollout: " + d.Rollout.String() + ")"
				}
				fmt.Fprintf(out, "device %s %s:\n", d.ID, what)
				for _, c := range d.Changes {
					fmt.Fprintf(out, "  %s\n", c)
				}
			}
			fmt.Fprintf(out, "%d of %d devices change between %s and %s\n", len(diffs), len(sorted), args[0], args[1])
			if len(places) > 0 {
				fmt.Fprintf(out, "rollout of %.12s: %s\n", hash2, waveSummary(places))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&device, "device", "", "only this device")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// renderRev renders every device (or one) of a fleet at one revision.
func renderRev(errw io.Writer, fsys fs.FS, rev, hash, device string) (map[string]*spec.Device, bool) {
	f, err := spec.Load(fsys)
	if err != nil {
		fmt.Fprintf(errw, "revision %s (%.12s) does not validate:\n", rev, hash)
		printErrors(errw, err)
		return nil, false
	}
	out := map[string]*spec.Device{}
	ok := true
	for _, r := range f.RenderAll(runtime.GOMAXPROCS(0)) {
		if device != "" && r.ID != device {
			continue
		}
		if r.Err != nil {
			fmt.Fprintf(errw, "revision %s (%.12s), device %s:\n", rev, hash, r.ID)
			printErrors(errw, r.Err)
			ok = false
			continue
		}
		out[r.ID] = r.Device
	}
	return out, ok
}

// exactArgs is cobra.ExactArgs with a usage error, so the exit code is 2.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %d argument(s), got %d (see --help)", cmd.Name(), n, len(args))}
		}
		return nil
	}
}
