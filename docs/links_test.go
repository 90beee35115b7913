package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	linkRE    = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRE = regexp.MustCompile(`^#{1,6}\s+(.*)$`)
	anchorDel = regexp.MustCompile("[^a-z0-9 _-]")
)

// anchors returns the GitHub anchors of a markdown file's headings.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	inFence := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
		}
		m := headingRE.FindStringSubmatch(line)
		if inFence || m == nil {
			continue
		}
		a := strings.ReplaceAll(anchorDel.ReplaceAllString(strings.ToLower(m[1]), ""), " ", "-")
		for i := 0; out[a]; i++ {
			a = strings.TrimSuffix(a, "-"+string(rune('0'+i))) + "-" + string(rune('1'+i))
		}
		out[a] = true
	}
	return out
}

// TestLinks fails on a relative link in the docs or the READMEs that does not
// lead to a file of the repository, or to a heading of it.
func TestLinks(t *testing.T) {
	var files []string
	for _, p := range []string{"*.md", "guide/*.md", "bench/*.md", "cli/*.md", "../README.md", "../fleet-repo-example/README.md", "../demo/README.md"} {
		m, err := filepath.Glob(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 5 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				path := f
				if file != "" {
					path = filepath.Join(filepath.Dir(f), file)
				}
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s:%d: link %s: %v", f, i+1, target, err)
					continue
				}
				if anchor != "" && strings.HasSuffix(path, ".md") && !anchors(t, path)[anchor] {
					t.Errorf("%s:%d: link %s: no heading with anchor #%s in %s", f, i+1, target, anchor, path)
				}
			}
		}
	}
}
