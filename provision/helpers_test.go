package provision

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// fleetRepo is a real git checkout of a small fleet repo.
type fleetRepo struct {
	t   *testing.T
	dir string
	git string
}

func newFleet(t *testing.T, image, sum string) *fleetRepo {
	t.Helper()
	g := testenv.LookPath(t, "git", "git")
	r := &fleetRepo{t: t, dir: t.TempDir(), git: g}
	r.run("init", "-q", "-b", "main")
	r.write("fleet.cue", "defaults: time: servers: [\"ntp.example:123\"]\nspec: network: \"edge\"\n")
	r.write("groups/edge.yaml", "selector:\n  match_labels:\n    role: edge\nspec:\n  apps:\n    web: {}\n")
	r.write("devices/dev-1.yaml", "labels:\n  role: edge\n")
	r.write("devices/dev-2.yaml", "labels:\n  role: edge\n")
	r.write("devices/other.yaml", "labels:\n  role: none\n")
	r.setImage(image, sum)
	r.commit("first")
	return r
}

// setImage points the web app at ref, loaded from a tar with sha256 sum
// (fetched from a URL when online, from the bundle when not).
func (r *fleetRepo) setImage(ref, sum string) {
	r.write("apps/web.yaml", "image:\n  ref: "+ref+"\n  source:\n    url: https://images.example/"+sum+".tar\n    sha256: "+sum+"\nrestart: always\n")
}

func (r *fleetRepo) write(name, data string) {
	r.t.Helper()
	p := filepath.Join(r.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

func (r *fleetRepo) run(args ...string) string {
	r.t.Helper()
	cmd := exec.Command(r.git, append([]string{"-C", r.dir, "-c", "user.name=op", "-c", "user.email=op@example", "-c", "commit.gpgsign=false"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func (r *fleetRepo) commit(msg string) string {
	r.t.Helper()
	r.run("add", "-A")
	r.run("commit", "-q", "--allow-empty", "-m", msg)
	return r.run("rev-parse", "HEAD")
}

// stick returns a directory standing for the USB stick: an ext4 image
// loop-mounted where the machine allows it, else a plain directory.
func stick(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		mkfs = "/usr/sbin/mkfs.ext4"
	}
	img := filepath.Join(t.TempDir(), "stick.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", img).CombinedOutput(); err != nil {
		t.Logf("stick is a directory (mkfs.ext4: %v %s)", err, out)
		return dir
	}
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		t.Logf("stick is a directory (mount -o loop: %v %s)", err, out)
		return dir
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount stick: %v %s", err, out)
		}
	})
	t.Logf("stick is a loop-mounted ext4 image at %s", dir)
	return dir
}

// treeHash hashes every file, directory and link under dir (path, mode,
// content or target), so a test can show a tree is unchanged byte for byte.
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			line += " " + hex.EncodeToString(s[:])
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	s := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(s[:])
}

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// create writes a bundle for o into dir/name and returns its path.
func create(t *testing.T, dir, name string, o CreateOptions) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if o.TempDir == "" {
		o.TempDir = t.TempDir()
	}
	if _, err := Create(ctx, f, o); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// entry is one raw tar member, for tests that tamper with bundles.
type entry struct {
	hdr  tar.Header
	data []byte
}

func readEntries(t *testing.T, p string) []entry {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var out []entry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{hdr: *h, data: b})
	}
}

func writeEntries(t *testing.T, p string, es []entry) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.hdr
		if h.Typeflag == tar.TypeReg || h.Typeflag == 0 {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// resign replaces the envelope of es with one over the manifest as edit leaves it.
func resign(t *testing.T, es []entry, key ed25519.PrivateKey, edit func(m *Manifest)) []entry {
	t.Helper()
	var env envelope
	if err := json.Unmarshal(es[0].data, &env); err != nil {
		t.Fatal(err)
	}
	var m Manifest
	if err := json.Unmarshal(env.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	b, _, err := sign(&m, key)
	if err != nil {
		t.Fatal(err)
	}
	out := append([]entry(nil), es...)
	out[0].data = b
	return out
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func fmtInt(n int) string { return fmt.Sprint(n) }
