package testenv

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

var (
	exampleRef    = regexp.MustCompile(`(?m)^  ref: (\S+)`)
	examplePath   = regexp.MustCompile(`(?m)^    path: (\S+)`)
	exampleSHA256 = regexp.MustCompile(`(?m)^    sha256: "?[0-9a-f]{64}"?`)
)

// ExampleFleet copies the fleet repo at src (fleet-repo-example) into a
// temporary directory and stands in for the image tars its apps load
// (image.source.path), which are built from source rather than kept in Git
// (`go run ./examples/imagebuild -fleet DIR` makes the real ones): each is a
// docker save manifest naming the app's image.ref, and the app's
// image.source.sha256 is set to its sha256. That is enough for what reads a
// fleet repo (shoal validate, render, diff), not to run a container.
func ExampleFleet(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	apps, err := filepath.Glob(filepath.Join(dst, "apps", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, app := range apps {
		b, err := os.ReadFile(app)
		if err != nil {
			t.Fatal(err)
		}
		ref, path := exampleRef.FindSubmatch(b), examplePath.FindSubmatch(b)
		if ref == nil || path == nil {
			continue
		}
		manifest, err := json.Marshal([]map[string]any{{"Config": "config.json", "RepoTags": []string{string(ref[1])}, "Layers": []string{}}})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(manifest)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(manifest)
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		tarPath := filepath.Join(dst, filepath.FromSlash(string(path[1])))
		if err := os.MkdirAll(filepath.Dir(tarPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tarPath, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(buf.Bytes())
		b = exampleSHA256.ReplaceAll(b, []byte("    sha256: "+hex.EncodeToString(sum[:])))
		if err := os.WriteFile(app, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}
