package main

import (
	"context"
	"flag"
	"testing"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/internal/clidoc"
)

var update = flag.Bool("update", false, "rewrite docs/cli/shoal-agent.md")

// TestCLIReference keeps docs/cli/shoal-agent.md equal to what --help says
// (go test ./cmd/shoal-agent -run CLIReference -update rewrites it).
func TestCLIReference(t *testing.T) {
	clidoc.Check(t, newWiredRootCmd(context.Background()), "../../docs/cli/shoal-agent.md", *update)
}

// TestGuideCommands checks every shoal-agent command the operator guide and
// the READMEs show against the command tree.
func TestGuideCommands(t *testing.T) {
	clidoc.CheckCommands(t, func() *cobra.Command { return newWiredRootCmd(context.Background()) }, "shoal-agent",
		"../../docs/guide/*.md", "../../docs/*.md", "../../README.md", "../../fleet-repo-example/README.md")
}
