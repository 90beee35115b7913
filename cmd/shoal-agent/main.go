// Command shoal-agent is the Shoal device daemon: it pulls the fleet repo,
// renders this device's spec and converges containers, the OS and trust on it.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/internal/version"
)

// Exit codes, documented in --help.
const (
	exitOK      = 0
	exitFailed  = 1 // the command ran and failed (not converged, invalid input)
	exitUsage   = 2 // bad flags or arguments
	exitUnready = 3 // --once: the pass ran but the device is not converged
)

// usageError marks errors that come from how the command was called.
type usageError struct{ error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	root := newWiredRootCmd(ctx)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(os.Stderr, "shoal-agent:", err)
	var ue usageError
	var ce interface{ ExitCode() int }
	switch {
	case errors.As(err, &ue), strings.HasPrefix(err.Error(), "unknown command"):
		return exitUsage
	case errors.As(err, &ce):
		return ce.ExitCode()
	}
	return exitFailed
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "shoal-agent",
		Short: "Shoal device agent: converge this device on the fleet repo",
		Long: `shoal-agent keeps one device converged on what a Git fleet repo declares.

Each pass fetches the fleet repo, renders this device's spec (validated against
the CUE schema; an invalid commit keeps the last good one), reconciles
containers through the Docker Engine, advances the A/B OS update, attests with
the TPM, checks the clock, and queues a status report for the hub.

Exit codes: 0 ok, 1 failed, 2 usage error, 3 (--once) ran but not converged.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	return root
}

// newWiredRootCmd is the root with the agent and its device parts wired in.
func newWiredRootCmd(ctx context.Context) *cobra.Command {
	root := newRootCmd()
	w := newParts(ctx).wiring()
	root.RunE = agentRunE(root, w)
	root.AddCommand(
		newAgentRunCmd(w),
		newAgentStatusCmd(),
		newAgentConfigCmd(),
		newEnrolCmd(),
		newUpdateCmd(),
		newProvisionApplyCmd(),
	)
	return root
}
