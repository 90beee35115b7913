package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/reconcile"
	"github.com/shoalfleet/shoal/spec"
)

func newPlanCmd() *cobra.Command {
	var device, prefix, since string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "plan --device ID DIR",
		Short: "Show what a device would do to its containers, writing nothing",
		Long: `plan renders device ID from the fleet repo in DIR, observes the containers
of the local Docker Engine (DOCKER_HOST and friends are honoured) and prints
the actions the agent would take, each with its reason: load or pull an
image, create, recreate, start, stop, remove, keep. It is a dry run: nothing
is written to the Engine.

When DIR is in a Git work tree and the fleet declares a rollout, plan also
says which wave of the rollout of HEAD the device falls in, among the
devices HEAD changes since --since (default HEAD~1): whether it asks the hub
for a grant at all, and when it would get one.

Exit codes: 0 ok, 1 invalid spec or Engine unreachable, 2 usage error.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := renderDevice(cmd, args[0], device)
			if err != nil {
				return err
			}
			cli, err := reconcile.NewClient()
			if err != nil {
				return fmt.Errorf("docker engine: %w", err)
			}
			defer cli.Close()
			r, err := reconcile.New(cli, reconcile.Options{Prefix: prefix, RepoRoot: os.DirFS(args[0])})
			if err != nil {
				return err
			}
			p, err := r.DryRun(cmd.Context(), d)
			if err != nil {
				return fmt.Errorf("plan device %q: %w", device, err)
			}
			place, note := planWave(args[0], device, since)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					*reconcile.Plan
					Rollout     *wavePlace `json:"rollout,omitempty"`
					RolloutNote string     `json:"rolloutNote,omitempty"`
				}{p, place, note})
			}
			if place != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "rollout: %s\n", place)
			} else if note != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "rollout: %s\n", note)
			}
			fmt.Fprint(cmd.OutOrStdout(), p)
			return nil
		},
	}
	cmd.Flags().StringVar(&device, "device", "", "device ID (a devices/<ID>.yaml file)")
	cmd.Flags().StringVar(&prefix, "prefix", "shoal-", "container name prefix the device's agent uses")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the plan as JSON")
	cmd.Flags().StringVar(&since, "since", "HEAD~1", "the revision the device runs, for its rollout wave")
	return cmd
}

// planWave places device in the waves of the rollout of HEAD of the Git
// work tree holding dir, among the devices HEAD changes since since. It
// returns the place, or a note saying why there is none ("" when dir is
// not in Git).
func planWave(dir, device, since string) (*wavePlace, string) {
	afterFS, head, err := gitfs.Open(dir, "HEAD")
	if err != nil {
		return nil, ""
	}
	render := func(fsys fs.FS) map[string]*spec.Device {
		f, err := spec.Load(fsys)
		if err != nil {
			return nil
		}
		out := map[string]*spec.Device{}
		for _, r := range f.RenderAll(runtime.GOMAXPROCS(0)) {
			if r.Err == nil {
				out[r.ID] = r.Device
			}
		}
		return out
	}
	after := render(afterFS)
	if after == nil || after[device] == nil {
		return nil, fmt.Sprintf("HEAD (%.12s) does not render device %q", head, device)
	}
	if after[device].Rollout == nil {
		return nil, "the fleet holds this device to no rollout: it applies new commits at once"
	}
	before := map[string]*spec.Device{}
	if beforeFS, _, err := gitfs.Open(dir, since); err == nil {
		if b := render(beforeFS); b != nil {
			before = b
		}
	}
	if p, ok := placeWaves(before, after, head)[device]; ok {
		return &p, ""
	}
	return nil, fmt.Sprintf("HEAD (%.12s) does not change this device since %s: no grant needed", head, since)
}
