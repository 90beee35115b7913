package spec

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
)

// A break turns line i (0-based) of a file into something invalid. It returns
// the new lines, the 1-based line the error must be reported at, and a
// fragment the message must hold; ok is false where the break does not apply.
type lineBreak struct {
	name  string
	yaml  bool // applies to YAML files (else CUE)
	apply func(lines []string, i int) (out []string, want int, msg string, ok bool)
}

var (
	// key: value, or - key: value, or - value, capturing the indentation, the
	// key part (with its ": " or "- ") and the value (comment dropped).
	yamlLineRE = regexp.MustCompile(`^( *)((?:- )?(?:[A-Za-z0-9_".-]+: +)?|- )([^#]*?)(\s+#.*)?$`)
	plainKeyRE = regexp.MustCompile(`^( *)(- )?([A-Za-z0-9_.-]+): +([A-Za-z0-9/_.-][^#:"'\[\]{}]*?)(\s+#.*)?$`)
	keyLineRE  = regexp.MustCompile(`^( *)(- )?([A-Za-z0-9_".-]+):( |$)`)
)

func content(l string) bool {
	t := strings.TrimSpace(l)
	return t != "" && !strings.HasPrefix(t, "#") && !strings.HasPrefix(t, "//")
}

func replaced(lines []string, i int, l ...string) []string {
	out := append([]string(nil), lines[:i]...)
	out = append(out, l...)
	return append(out, lines[i+1:]...)
}

// nextContent is the 1-based number of the first content line after line i (0-based).
func nextContent(lines []string, i int) int {
	for j := i + 1; j < len(lines); j++ {
		if content(lines[j]) {
			return j + 1
		}
	}
	return len(lines)
}

var breaks = []lineBreak{
	{"indent+1", true, func(lines []string, i int) ([]string, int, string, bool) {
		if !content(lines[i]) {
			return nil, 0, "", false
		}
		return replaced(lines, i, " "+lines[i]), -1, "", true
	}},
	{"indent-1", true, func(lines []string, i int) ([]string, int, string, bool) {
		if !content(lines[i]) || !strings.HasPrefix(lines[i], " ") {
			return nil, 0, "", false
		}
		return replaced(lines, i, lines[i][1:]), -1, "", true
	}},
	{"unclosed-bracket", true, func(lines []string, i int) ([]string, int, string, bool) {
		m := yamlLineRE.FindStringSubmatch(lines[i])
		if m == nil || !content(lines[i]) || m[3] == "" || strings.HasPrefix(m[3], "|") || strings.HasPrefix(m[3], ">") {
			return nil, 0, "", false
		}
		v := m[3]
		if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
			v = v[:len(v)-1]
		} else {
			v = "[" + v
		}
		return replaced(lines, i, m[1]+m[2]+v+m[4]), i + 1, "never closed", true
	}},
	{"unclosed-quote", true, func(lines []string, i int) ([]string, int, string, bool) {
		m := yamlLineRE.FindStringSubmatch(lines[i])
		if m == nil || !content(lines[i]) || m[3] == "" || strings.ContainsAny(m[3], "[]{}|>") {
			return nil, 0, "", false
		}
		v := m[3]
		if strings.HasPrefix(v, `"`) && strings.HasSuffix(v, `"`) && len(v) > 1 {
			v = v[:len(v)-1]
		} else {
			v = `"` + v
		}
		return replaced(lines, i, m[1]+m[2]+v+m[4]), i + 1, "never closed", true
	}},
	{"tab", true, func(lines []string, i int) ([]string, int, string, bool) {
		if !content(lines[i]) {
			return nil, 0, "", false
		}
		return replaced(lines, i, "\t"+strings.TrimLeft(lines[i], " ")), i + 1, "tab", true
	}},
	{"stray-colon", true, func(lines []string, i int) ([]string, int, string, bool) {
		m := plainKeyRE.FindStringSubmatch(lines[i])
		if m == nil {
			return nil, 0, "", false
		}
		return replaced(lines, i, m[1]+m[2]+m[3]+": "+m[4]+": x"+m[5]), i + 1, "", true
	}},
	{"duplicate-key", true, func(lines []string, i int) ([]string, int, string, bool) {
		m := keyLineRE.FindStringSubmatch(lines[i])
		if m == nil {
			return nil, 0, "", false
		}
		dup := lines[i]
		if m[2] != "" {
			dup = m[1] + "  " + lines[i][len(m[1])+2:]
		}
		// The copy goes after the whole value, so it is a sibling of the key.
		j := i + 1
		ind := len(m[1]) + len(m[2])
		for j < len(lines) && (!content(lines[j]) || len(lines[j])-len(strings.TrimLeft(lines[j], " ")) > ind) {
			j++
		}
		out := append(append(append([]string(nil), lines[:j]...), dup), lines[j:]...)
		return out, j + 1, "duplicate key", true
	}},
	{"cue-unclosed-bracket", false, func(lines []string, i int) ([]string, int, string, bool) {
		t := strings.TrimSpace(lines[i])
		k := strings.Index(lines[i], ": ")
		if !content(lines[i]) || k < 0 || strings.HasSuffix(t, "{") {
			return nil, 0, "", false
		}
		return replaced(lines, i, lines[i][:k+2]+"["+lines[i][k+2:]), -2, "", true
	}},
	{"cue-stray-token", false, func(lines []string, i int) ([]string, int, string, bool) {
		if !content(lines[i]) {
			return nil, 0, "", false
		}
		return replaced(lines, i, lines[i]+" ]"), i + 1, "", true
	}},
}

// TestSyntaxErrorsPointAtTheLine breaks every line of every file of the
// example fleet in several ways and checks that the error names the file and
// the line that was broken. The rules (spec/yamlsyntax.go, and the guide's
// troubleshooting under spec-invalid): an unclosed bracket or quote is reported where it opens; a
// line that is itself valid but leaves the next line no place to fit (an
// indentation change) is reported at that next line; a duplicate key at the
// second occurrence. CUE's own parser reports a bracket that is never closed
// at the first token that cannot be inside it: on that line or the next.
func TestSyntaxErrorsPointAtTheLine(t *testing.T) {
	root := "../fleet-repo-example"
	orig := fstest.MapFS{}
	var files []string
	err := fs.WalkDir(os.DirFS(root), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(path.Join(root, p))
		if err != nil {
			return err
		}
		orig[p] = &fstest.MapFile{Data: b}
		if exts[path.Ext(p)] {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Load(orig); err != nil {
		t.Fatalf("the example fleet does not load: %v", err)
	}
	counts := map[string]int{}
	done := map[string]bool{}
	ctx := cuecontext.New()
	for _, file := range files {
		text := string(orig[file].Data)
		lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
		isYAML := path.Ext(file) != ".cue"
		inBlock := map[int]bool{}
		if isYAML {
			inBlock = blockScalarLines(lines)
		}
		for _, br := range breaks {
			if br.yaml != isYAML {
				continue
			}
			for i := range lines {
				if inBlock[i] {
					continue // any text is valid inside a block scalar
				}
				out, want, msg, ok := br.apply(lines, i)
				if !ok {
					continue
				}
				broken := strings.Join(out, "\n")
				// Half the breaks on the last line also drop the final newline.
				if i%2 == 0 || i != len(lines)-1 {
					broken += "\n"
				}
				if isYAML && want == -1 && yamlValid([]byte(broken)) == nil {
					continue // still YAML: the schema's business, not a syntax error
				}
				// Every break of each kind is parsed as Load and Render parse
				// a file; the first of each kind per file goes all the way
				// through Load (and Render, for a device file).
				var e *Error
				if done[file+br.name] {
					e = parseError(t, ctx, file, broken)
				} else {
					done[file+br.name] = true
					e = firstError(t, orig, file, broken)
				}
				if e == nil {
					t.Errorf("%s line %d, %s: no error for\n%s", file, i+1, br.name, broken)
					continue
				}
				counts[br.name]++
				switch {
				case e.File != file:
					t.Errorf("%s line %d, %s: error names %s: %v", file, i+1, br.name, e.File, e)
				case want == -2 && e.Line != i+1 && e.Line != nextContent(out, i):
					t.Errorf("%s line %d, %s: reported at line %d, want %d or %d: %v", file, i+1, br.name, e.Line, i+1, nextContent(out, i), e)
				case want == -1 && e.Line < i+1:
					t.Errorf("%s line %d, %s: reported before the broken line: %v", file, i+1, br.name, e)
				case want == -1 && !firstBadLine(out, e.Line):
					t.Errorf("%s line %d, %s: line %d is not the first line that cannot follow the ones above: %v\n%s", file, i+1, br.name, e.Line, e, broken)
				case want > 0 && e.Line != want:
					t.Errorf("%s line %d, %s: reported at line %d, want %d: %v\n%s", file, i+1, br.name, e.Line, want, e, broken)
				case !strings.Contains(e.Msg, msg):
					t.Errorf("%s line %d, %s: message %q lacks %q", file, i+1, br.name, e.Msg, msg)
				}
			}
		}
	}
	for _, br := range breaks {
		if counts[br.name] == 0 {
			t.Errorf("break %s never applied", br.name)
		}
	}
	t.Logf("broken files checked: %v", counts)
}

var blockStart = regexp.MustCompile(`:\s+[|>][-+0-9]*\s*(#.*)?$`)

// blockScalarLines marks the lines (0-based) that are the text of a block
// scalar (key: | or key: >), indented past the key.
func blockScalarLines(lines []string) map[int]bool {
	in := map[int]bool{}
	for i := 0; i < len(lines); i++ {
		if !blockStart.MatchString(lines[i]) {
			continue
		}
		ind := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
		for j := i + 1; j < len(lines); j++ {
			if strings.TrimSpace(lines[j]) != "" && len(lines[j])-len(strings.TrimLeft(lines[j], " ")) <= ind {
				break
			}
			in[j] = true
			i = j
		}
	}
	return in
}

// firstBadLine reports whether the lines above line n (1-based) are valid
// YAML and the lines through it are not: the rule for where a syntax error is
// reported.
func firstBadLine(lines []string, n int) bool {
	through := func(k int) []byte { return []byte(strings.Join(lines[:k], "\n") + "\n") }
	return n >= 1 && n <= len(lines) && yamlValid(through(n-1)) == nil && yamlValid(through(n)) != nil
}

// parseError parses one file as Load and Render do and returns its first error.
func parseError(t *testing.T, ctx *cue.Context, name, data string) *Error {
	t.Helper()
	_, err := parse(ctx, &file{path: name, data: []byte(data)})
	if err == nil {
		return nil
	}
	errs := toErrors(err, name)
	if len(errs) == 0 {
		t.Fatalf("%s: no Errors from %v", name, err)
	}
	return errs[0]
}

// firstError loads the fleet with one file replaced (rendering every device
// when the file is a device file) and returns the first error in that file,
// or the first error at all.
func firstError(t *testing.T, orig fstest.MapFS, file, data string) *Error {
	t.Helper()
	fsys := fstest.MapFS{}
	for k, v := range orig {
		fsys[k] = v
	}
	fsys[file] = &fstest.MapFile{Data: []byte(data)}
	f, err := Load(fsys)
	if err == nil && strings.HasPrefix(file, "devices/") {
		_, err = f.Render(strings.TrimSuffix(path.Base(file), path.Ext(file)))
	}
	if err == nil {
		return nil
	}
	var errs Errors
	if !errors.As(err, &errs) || len(errs) == 0 {
		t.Fatalf("%s: error is not spec.Errors: %v", file, err)
	}
	for _, e := range errs {
		if e.File == file {
			return e
		}
	}
	return errs[0]
}
