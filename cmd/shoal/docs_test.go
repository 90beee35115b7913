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
