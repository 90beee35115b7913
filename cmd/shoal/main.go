// Command shoal is the operator's CLI: validate, render and diff a fleet repo,
// plan a device, make tokens and bundles, and run the hub (`shoal hub`).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	exitInvalid = 1 // invalid input or a failed operation
	exitUsage   = 2 // bad flags or arguments
)

// usageError marks errors that come from how the command was called.
type usageError struct{ error }

// silentError carries an exit code for a failure already reported to the user.
type silentError struct{ code int }

func (e silentError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var se silentError
	if errors.As(err, &se) {
		return se.code
	}
	fmt.Fprintln(stderr, "shoal:", err)
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		return exitUsage
	}
	return exitInvalid
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "shoal",
		Short: "Shoal operator CLI: fleet repo tools and the hub",
		Long: `shoal works on a Shoal fleet repo (validate, render, diff, plan) and runs
and talks to the hub.

Exit codes: 0 ok, 1 invalid input or failed operation, 2 usage error.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newValidateCmd(),
		newRenderCmd(),
		newDevicesCmd(),
		newDiffCmd(),
		newReleaseCmd(),
		newPlanCmd(),
		newHubCmd(),
		newTokenCmd(),
		newPokeCmd(),
		newFleetCmd(),
		newProvisionCmd(),
		newKeysCmd(),
		newReceiptsCmd(),
		newRelayCmd(),
		newRolloutCmd(),
	)
	return root
}
