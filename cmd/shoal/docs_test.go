package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

var update = flag.Bool("update", false, "rewrite docs/cli/shoal.md")

// TestCLIReference keeps docs/cli/shoal.md equal to what --help says
// (go test ./cmd/shoal -run CLIReference -update rewrites it).
func TestCLIReference(t *testing.T) {
	got := cliReference(newRootCmd())
	const path = "../../docs/cli/shoal.md"
	if *update {
		if err := os.MkdirAll("../../docs/cli", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/shoal -run CLIReference -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run go test ./cmd/shoal -run CLIReference -update", path)
	}
}

// cliReference renders every command's help as markdown.
func cliReference(root *cobra.Command) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# `%s` command reference\n\nGenerated from the commands' own help; do not edit by hand.\n", root.Name())
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		fmt.Fprintf(&b, "\n## `%s`\n\n", c.CommandPath())
		long := c.Long
		if long == "" {
			long = c.Short
		}
		fmt.Fprintf(&b, "%s\n\n```\n%s\n", strings.TrimSpace(long), c.UseLine())
		if fl := c.NonInheritedFlags().FlagUsages(); fl != "" {
			fmt.Fprintf(&b, "\nFlags:\n%s", fl)
		}
		b.WriteString("```\n")
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return b.Bytes()
}
