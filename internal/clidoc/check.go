package clidoc

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"
)

// Check fails t when the reference at path differs from root's help; with
// update it rewrites the file first.
func Check(t testing.TB, root *cobra.Command, path string, update bool) {
	t.Helper()
	got := Markdown(root)
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (rerun the test with -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: rerun the test with -update", path)
	}
}
