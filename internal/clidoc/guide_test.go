package clidoc

import (
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestCommands(t *testing.T) {
	doc := strings.Join([]string{
		"Some text with `shoal validate` inline, and `ls`.",
		"```sh",
		"shoal validate .   # check it",
		"SHOAL_HUB=https://h:8443 sudo shoal fleet status --state converged | grep gw-01",
		"export FP=\"$(shoal hub ca --fingerprint 2>/dev/null)\"",
		"TOKEN=$(shoal token create --device gw-01 | awk '/^token:/ {print $2}')",
		"shoal-agent enrol --token $(awk '/^token:/ {print $2}' tok) --ca-fingerprint \"$(cat fp)\" --hub h",
		"$TRIAL/bin/shoal hub --db sqlite://$TRIAL/hub.db \\",
		"    --listen 127.0.0.1:8443 > $TRIAL/hub.log 2>&1 &",
		"cat > agent.yaml <<'EOF'",
		"shoal not-a-command-inside-a-heredoc",
		"EOF",
		"shoal-agent status; shoal render --device 'gw 01' .",
		"```",
		"```text",
		"shoal this is output, not a command",
		"```",
	}, "\n")
	got := Commands(doc, "shoal")
	want := []Command{
		{Args: []string{"validate"}, Line: 1, Mention: true},
		{Args: []string{"validate", "."}, Line: 3},
		{Args: []string{"fleet", "status", "--state", "converged"}, Line: 4},
		{Args: []string{"hub", "ca", "--fingerprint"}, Line: 5},
		{Args: []string{"token", "create", "--device", "gw-01"}, Line: 6},
		{Args: []string{"hub", "--db", "sqlite://$TRIAL/hub.db", "--listen", "127.0.0.1:8443"}, Line: 8},
		{Args: []string{"render", "--device", "gw 01", "."}, Line: 13},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Commands:\n got %+v\nwant %+v", got, want)
	}
	agent := Commands(doc, "shoal-agent")
	wantAgent := []Command{
		{Args: []string{"enrol", "--token", "$()", "--ca-fingerprint", "$()", "--hub", "h"}, Line: 7},
		{Args: []string{"status"}, Line: 13},
	}
	if !reflect.DeepEqual(agent, wantAgent) {
		t.Errorf("Commands:\n got %+v\nwant %+v", agent, wantAgent)
	}
}

func TestVerify(t *testing.T) {
	newRoot := func() *cobra.Command {
		root := &cobra.Command{Use: "prog"}
		root.PersistentFlags().String("config", "", "")
		grp := &cobra.Command{Use: "grp"}
		leaf := &cobra.Command{Use: "leaf ID", Args: cobra.ExactArgs(1), RunE: func(*cobra.Command, []string) error { return nil }}
		leaf.Flags().Int("n", 0, "")
		grp.AddCommand(leaf)
		root.AddCommand(grp)
		return root
	}
	for _, c := range []struct {
		name string
		args string
		ok   bool
	}{
		{"leaf", "grp leaf x --n 3", true},
		{"inherited flag", "grp leaf x --config c", true},
		{"help", "grp leaf --help", true},
		{"unknown command", "nope", false},
		{"group only", "grp", false},
		{"unknown flag", "grp leaf x --m 3", false},
		{"bad value", "grp leaf x --n three", false},
		{"missing argument", "grp leaf", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Verify(newRoot(), strings.Fields(c.args))
			if (err == nil) != c.ok {
				t.Errorf("Verify(%q) = %v, want ok=%v", c.args, err, c.ok)
			}
		})
	}
	for _, c := range []struct {
		name string
		args string
		ok   bool
	}{
		{"group", "grp", true},
		{"no argument", "grp leaf --n", true},
		{"inherited flag", "grp leaf --config", true},
		{"unknown command", "grp nope", false},
		{"unknown flag", "grp leaf --m", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := VerifyMention(newRoot(), strings.Fields(c.args))
			if (err == nil) != c.ok {
				t.Errorf("VerifyMention(%q) = %v, want ok=%v", c.args, err, c.ok)
			}
		})
	}
}
