package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// The example fleet's releases are signed with the example release key, and
// the one whose image ships in the repo has its real size and sha256.
func TestExampleReleasesVerify(t *testing.T) {
	const dir = "../../fleet-repo-example"
	f, err := spec.Load(os.DirFS(dir))
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(filepath.Join(dir, "keys/example-release.pub"))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := updater.ParseTrustRoots(pem)
	if err != nil {
		t.Fatal(err)
	}
	local := 0
	for _, name := range f.ReleaseNames() {
		r := f.Release(name)
		if err := updater.VerifyRelease(r, roots); err != nil {
			t.Errorf("release %s: %v", name, err)
		}
		if strings.Contains(r.URL, "://") {
			continue
		}
		local++
		b, err := os.ReadFile(filepath.Join(dir, r.URL))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if int64(len(b)) != r.Size || hex.EncodeToString(sum[:]) != r.SHA256 {
			t.Errorf("release %s: file has size %d sha256 %x, release says %d %s", name, len(b), sum, r.Size, r.SHA256)
		}
	}
	if local != 1 {
		t.Errorf("%d releases with a shipped image, want 1", local)
	}
}
