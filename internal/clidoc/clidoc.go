// Package clidoc renders a cobra command tree's help as a markdown reference,
// so the CLI docs are generated from --help and tests keep them equal.
package clidoc

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// Markdown renders every command under root: its long help, usage line and flags.
func Markdown(root *cobra.Command) []byte {
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
