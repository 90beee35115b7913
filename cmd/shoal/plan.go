package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/reconcile"
)

func newPlanCmd() *cobra.Command {
	var device, prefix string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "plan --device ID DIR",
		Short: "Show what a device would do to its containers, writing nothing",
		Long: `plan renders device ID from the fleet repo in DIR, observes the containers
of the local Docker Engine (DOCKER_HOST and friends are honoured) and prints
the actions the agent would take, each with its reason: load or pull an
image, create, recreate, start, stop, remove, keep. It is a dry run: nothing
is written to the Engine.

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
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(p)
			}
			fmt.Fprint(cmd.OutOrStdout(), p)
			return nil
		},
	}
	cmd.Flags().StringVar(&device, "device", "", "device ID (a devices/<ID>.yaml file)")
	cmd.Flags().StringVar(&prefix, "prefix", "shoal-", "container name prefix the device's agent uses")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the plan as JSON")
	return cmd
}
