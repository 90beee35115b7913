package main

import (
	"context"
	"flag"
	"testing"

	"github.com/shoalfleet/shoal/internal/clidoc"
)

var update = flag.Bool("update", false, "rewrite docs/cli/shoal-agent.md")

// TestCLIReference keeps docs/cli/shoal-agent.md equal to what --help says
// (go test ./cmd/shoal-agent -run CLIReference -update rewrites it).
func TestCLIReference(t *testing.T) {
	clidoc.Check(t, newWiredRootCmd(context.Background()), "../../docs/cli/shoal-agent.md", *update)
}
