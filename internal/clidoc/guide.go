package clidoc

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// A Command is one invocation of a program found in a document's shell
// blocks: its arguments after the program name, and where it is.
type Command struct {
	Args []string
	File string
	Line int
	// Mention: an inline code span in prose, which may leave out arguments
	// and flag values ("`shoal fleet device` shows…").
	Mention bool
}

// CheckCommands fails t for every command of program in the ```sh blocks of
// the files matching patterns that the command tree newRoot builds would
// refuse: an unknown subcommand, a group with no action of its own, an
// unknown flag, a flag value of the wrong type, the wrong number of
// arguments. It fails when the files name no such command at all, so a
// renamed program or a moved guide does not pass by checking nothing.
func CheckCommands(t testing.TB, newRoot func() *cobra.Command, program string, patterns ...string) {
	t.Helper()
	var files []string
	for _, p := range patterns {
		m, err := filepath.Glob(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range Commands(string(b), program) {
			c.File = f
			n++
			verify := Verify
			if c.Mention {
				verify = VerifyMention
			}
			if err := verify(newRoot(), c.Args); err != nil {
				t.Errorf("%s:%d: %s %s: %v", c.File, c.Line, program, strings.Join(c.Args, " "), err)
			}
		}
	}
	if n == 0 {
		t.Fatalf("no %s command found in %v", program, patterns)
	}
}

// Verify checks args (without the program name) against root as cobra would
// parse them, without running anything.
func Verify(root *cobra.Command, args []string) error {
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if cmd == root && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		return fmt.Errorf("unknown command %q", rest[0])
	}
	if !cmd.Runnable() {
		return fmt.Errorf("%q is a group of commands, not a command", cmd.CommandPath())
	}
	cmd.InitDefaultHelpFlag()
	if err := cmd.ParseFlags(rest); err != nil {
		return err
	}
	if help, _ := cmd.Flags().GetBool("help"); help {
		return nil
	}
	return cmd.ValidateArgs(cmd.Flags().Args())
}

// VerifyMention checks a command named in prose: the subcommand must exist
// and every --flag or -f it names must be one of that command's flags;
// arguments and flag values may be left out.
func VerifyMention(root *cobra.Command, args []string) error {
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if (cmd == root || cmd.HasSubCommands()) && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		return fmt.Errorf("unknown command %q for %q", rest[0], cmd.CommandPath())
	}
	cmd.InitDefaultHelpFlag()
	fs := cmd.Flags()
	fs.AddFlagSet(cmd.InheritedFlags())
	for _, a := range rest {
		switch {
		case strings.HasPrefix(a, "--"):
			name, _, _ := strings.Cut(a[2:], "=")
			if fs.Lookup(name) == nil {
				return fmt.Errorf("unknown flag: --%s", name)
			}
		case strings.HasPrefix(a, "-") && len(a) == 2:
			if fs.ShorthandLookup(a[1:]) == nil {
				return fmt.Errorf("unknown shorthand flag: %s", a)
			}
		}
	}
	return nil
}

var (
	fenceRE   = regexp.MustCompile("^\\s*```+\\s*([A-Za-z]*)")
	heredocRE = regexp.MustCompile(`<<-?\s*['"]?([A-Za-z_][A-Za-z0-9_]*)['"]?`)
	assignRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	spanRE    = regexp.MustCompile("`([^`]+)`")
)

// Commands returns the invocations of program in the ```sh (or bash, shell)
// blocks of a markdown document (at the start of a pipeline element, after
// environment assignments or sudo, or inside $( )) and in its inline code
// spans that start with the program's name. Continuation lines are
// joined, comments and heredoc bodies skipped; quotes are removed and
// variables left as written.
func Commands(doc, program string) []Command {
	var out []Command
	lines := strings.Split(doc, "\n")
	inShell, inFence := false, false
	heredoc := ""
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if m := fenceRE.FindStringSubmatch(line); m != nil && heredoc == "" {
			if inFence {
				inFence, inShell = false, false
			} else {
				inFence = true
				switch m[1] {
				case "sh", "bash", "shell":
					inShell = true
				}
			}
			continue
		}
		if !inFence {
			// Inline code spans that start with the program name.
			for _, m := range spanRE.FindAllStringSubmatch(line, -1) {
				for _, words := range pipelines(m[1]) {
					if len(words) > 0 && words[0] == program {
						out = append(out, Command{Args: words[1:], Line: i + 1, Mention: true})
					}
				}
			}
			continue
		}
		if !inShell {
			continue
		}
		if heredoc != "" {
			if strings.TrimSpace(line) == heredoc {
				heredoc = ""
			}
			continue
		}
		start := i
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + lines[i]
		}
		if m := heredocRE.FindStringSubmatch(line); m != nil {
			heredoc = m[1]
		}
		for _, words := range pipelines(line) {
			for len(words) > 0 && (assignRE.MatchString(words[0]) || words[0] == "sudo" || words[0] == "exec") {
				words = words[1:]
			}
			if len(words) > 0 && filepath.Base(words[0]) == program {
				out = append(out, Command{Args: words[1:], Line: start + 1})
			}
		}
	}
	return out
}

// pipelines splits a shell line into the words of each simple command:
// at ; & | && || and ( ), with quotes and redirections removed and a comment
// cut. A command substitution $( ) is a command of its own, and a word
// ("$()") of the command around it.
func pipelines(line string) [][]string {
	type frame struct {
		words []string
		word  strings.Builder
		has   bool // word has content (possibly an empty quoted string)
		quote rune
	}
	var (
		out   [][]string
		stack []*frame
		f     = &frame{}
	)
	endWord := func() {
		if f.has {
			f.words = append(f.words, f.word.String())
		}
		f.word.Reset()
		f.has = false
	}
	endCmd := func() {
		endWord()
		if len(f.words) > 0 {
			out = append(out, f.words)
		}
		f.words = nil
	}
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == '$' && i+1 < len(rs) && rs[i+1] == '(' && f.quote != '\'':
			stack = append(stack, f)
			f = &frame{}
			i++
		case r == ')' && f.quote == 0 && len(stack) > 0:
			endCmd()
			f, stack = stack[len(stack)-1], stack[:len(stack)-1]
			f.word.WriteString("$()")
			f.has = true
		case f.quote != 0:
			if r == f.quote {
				f.quote = 0
			} else {
				f.word.WriteRune(r)
			}
		case r == '\'' || r == '"':
			f.quote, f.has = r, true
		case r == '\\' && i+1 < len(rs):
			i++
			f.word.WriteRune(rs[i])
			f.has = true
		case r == '#' && !f.has:
			i = len(rs)
		case r == ' ' || r == '\t':
			endWord()
		case r == ';' || r == '&' || r == '|' || r == ')' || r == '(' || r == '`':
			endCmd()
		case r == '>' || r == '<':
			// A redirection (2>&1, > file, <<EOF): drop it and its target.
			if w := f.word.String(); f.has && strings.Trim(w, "0123456789") == "" {
				f.word.Reset()
				f.has = false
			}
			endWord()
			for i+1 < len(rs) && (rs[i+1] == '>' || rs[i+1] == '&' || rs[i+1] == '<' || rs[i+1] == '-') {
				i++
			}
			for i+1 < len(rs) && rs[i+1] == ' ' {
				i++
			}
			for i+1 < len(rs) && !strings.ContainsRune(" ;&|)", rs[i+1]) {
				i++
			}
		default:
			f.word.WriteRune(r)
			f.has = true
		}
	}
	for {
		endCmd()
		if len(stack) == 0 {
			return out
		}
		f, stack = stack[len(stack)-1], stack[:len(stack)-1]
	}
}
