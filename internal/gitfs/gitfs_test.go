package gitfs

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// A commit's tree read through FS passes the standard fs.FS conformance test,
// sees the commit's content (not the working tree's), and honours a subdirectory.
func TestFS(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("fleet/devices/d1.yaml", "labels: {}\n")
	write("fleet/apps/web.yaml", "image: {}\n")
	write("README", "top\n")
	testenv.GitCommitAll(t, dir, "one")
	write("fleet/apps/web.yaml", "changed in the working tree\n")

	fsys, hash, err := Open(filepath.Join(dir, "fleet"), "HEAD")
	if err != nil {
		t.Fatal(err)
	}
	if len(hash) != 40 {
		t.Errorf("hash %q", hash)
	}
	if err := fstest.TestFS(fsys, "devices/d1.yaml", "apps/web.yaml"); err != nil {
		t.Fatal(err)
	}
	b, err := fs.ReadFile(fsys, "apps/web.yaml")
	if err != nil || string(b) != "image: {}\n" {
		t.Fatalf("apps/web.yaml = %q, %v; want the committed content", b, err)
	}
	if _, err := fs.Stat(fsys, "README"); err == nil {
		t.Error("README outside the subdirectory is visible")
	}
	if _, _, err := Open(dir, "no-such-rev"); err == nil {
		t.Error("a bad revision opened")
	}
}
