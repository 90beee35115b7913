package main

import (
	"flag"
	"testing"

	"github.com/shoalfleet/shoal/internal/clidoc"
)

var update = flag.Bool("update", false, "rewrite docs/cli/shoal.md")

// TestCLIReference keeps docs/cli/shoal.md equal to what --help says
// (go test ./cmd/shoal -run CLIReference -update rewrites it).
func TestCLIReference(t *testing.T) {
	clidoc.Check(t, newRootCmd(), "../../docs/cli/shoal.md", *update)
}

// TestGuideCommands checks every shoal command the operator guide and the
// READMEs show against the command tree: each subcommand, flag and argument
// count must be one shoal accepts.
func TestGuideCommands(t *testing.T) {
	clidoc.CheckCommands(t, newRootCmd, "shoal", "../../docs/guide/*.md", "../../docs/*.md", "../../README.md", "../../fleet-repo-example/README.md")
}
