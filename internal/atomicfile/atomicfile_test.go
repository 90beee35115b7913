package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	tests := []struct {
		name    string
		initial []byte // nil: no file before
		data    []byte
	}{
		{"create", nil, []byte("hello")},
		{"replace longer with shorter", []byte("a much longer old content"), []byte("new")},
		{"empty", []byte("old"), []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "state.json")
			if tt.initial != nil {
				if err := os.WriteFile(p, tt.initial, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFile(p, tt.data, 0o640); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.data) {
				t.Fatalf("content = %q, want %q", got, tt.data)
			}
			fi, _ := os.Stat(p)
			if fi.Mode().Perm() != 0o640 {
				t.Fatalf("mode = %v, want 0640", fi.Mode().Perm())
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Fatalf("dir holds %d entries, want only the file (no temp left)", len(ents))
			}
		})
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	err := WriteFile(filepath.Join(t.TempDir(), "nope", "f"), []byte("x"), 0o600)
	if err == nil {
		t.Fatal("want error for a missing directory")
	}
}

func TestCleanTempAndRemove(t *testing.T) {
	dir := t.TempDir()
	leftover := filepath.Join(dir, ".state.json.tmp-123")
	keep := filepath.Join(dir, "state.json")
	for _, p := range []string{leftover, keep} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := CleanTemp(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("temp file survived: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("real file removed: %v", err)
	}
	if err := Remove(keep); err != nil {
		t.Fatal(err)
	}
	if err := Remove(keep); err != nil {
		t.Fatalf("removing a missing file: %v", err)
	}
}
