package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// testImage is a deterministic image with the textures a root file system
// has: random (compressed) runs, zero runs longer than a maximum chunk, and
// repeated text.
func testImage(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	b := make([]byte, 0, size)
	words := []string{"usr", "lib", "share", "doc", "bin", "etc", "\n", "systemd", "debian", "#!/bin/sh\n", "\x00\x00"}
	for len(b) < size {
		n := min(size-len(b), 1+r.IntN(300<<10))
		switch r.IntN(3) {
		case 0:
			for range n {
				b = append(b, byte(r.Uint32()))
			}
		case 1:
			b = append(b, make([]byte, n)...)
		default:
			for i := 0; i < n; {
				w := words[r.IntN(len(words))]
				b = append(b, w...)
				i += len(w)
			}
		}
	}
	return b[:size]
}

func casync(t testing.TB, args ...string) string {
	t.Helper()
	bin := testenv.LookPath(t, "casync", "casync")
	out, err := exec.CommandContext(context.Background(), bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("casync %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestMakeMatchesCasync: for the same image and chunk sizes, Make writes the
// index `casync make` writes, byte for byte, and the same chunk files.
func TestMakeMatchesCasync(t *testing.T) {
	img := testImage(1, 6<<20)
	cases := []struct {
		name   string
		p      Params
		sha512 bool
	}{
		{"default sizes", DefaultParams, false},
		{"sha512-256, casync's default digest", DefaultParams, true},
		{"small chunks", Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}, false},
		{"min below the window", Params{Min: 16, Avg: 2 << 10, Max: 64 << 10}, false},
		{"uneven sizes", Params{Min: 5000, Avg: 30000, Max: 200000}, false},
		{"fixed size", Params{Min: 64 << 10, Avg: 64 << 10, Max: 64 << 10}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			imgPath := filepath.Join(dir, "image")
			if err := os.WriteFile(imgPath, img, 0o644); err != nil {
				t.Fatal(err)
			}
			digest := "sha256"
			if tc.sha512 {
				digest = "sha512-256"
			}
			casync(t, "make", "--digest="+digest, "--chunk-size="+tc.p.String(), "--store="+filepath.Join(dir, "castore"),
				filepath.Join(dir, "ca.caibx"), imgPath)
			want, err := os.ReadFile(filepath.Join(dir, "ca.caibx"))
			if err != nil {
				t.Fatal(err)
			}

			res, err := Make(context.Background(), bytes.NewReader(img), filepath.Join(dir, "store"), MakeOptions{Params: tc.p, SHA512256: tc.sha512})
			if err != nil {
				t.Fatal(err)
			}
			got, err := res.Index.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				wx, err := ParseIndex(want)
				if err != nil {
					t.Fatalf("casync's index: %v", err)
				}
				t.Fatalf("index differs from casync's: %d chunks, casync %d; first difference %s", len(res.Index.Chunks), len(wx.Chunks), firstDiff(res.Index, wx))
			}
			if sum := sha256.Sum256(img); res.SHA256 != sum {
				t.Fatalf("image sha256 %x, want %x", res.SHA256, sum)
			}
			if len(res.Index.Chunks) < 2 && tc.p.Max < uint64(len(img)) {
				t.Fatalf("only %d chunks", len(res.Index.Chunks))
			}
			// The same chunk files, by name (contents differ by compressor build).
			if a, b := storeNames(t, filepath.Join(dir, "store")), storeNames(t, filepath.Join(dir, "castore")); a != b {
				t.Fatalf("store files differ:\nshoal:  %.200s\ncasync: %.200s", a, b)
			}
		})
	}
}

func firstDiff(a, b *Index) string {
	if a.Flags != b.Flags || a.Params != b.Params {
		return fmt.Sprintf("header: flags %#x %v, casync %#x %v", a.Flags, a.Params, b.Flags, b.Params)
	}
	for i := range min(len(a.Chunks), len(b.Chunks)) {
		if a.Chunks[i] != b.Chunks[i] {
			return fmt.Sprintf("chunk %d: %d+%d %s, casync %d+%d %s", i, a.Chunks[i].Start, a.Chunks[i].Size, a.Chunks[i].ID, b.Chunks[i].Start, b.Chunks[i].Size, b.Chunks[i].ID)
		}
	}
	return "chunk count"
}

func storeNames(t testing.TB, dir string) string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".cacnk") {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(names, " ")
}

// TestCasyncExtractsShoalStore: casync extract rebuilds the image from an
// index and a store that Make wrote.
func TestCasyncExtractsShoalStore(t *testing.T) {
	img := testImage(2, 3<<20)
	dir := t.TempDir()
	res, err := Make(context.Background(), bytes.NewReader(img), filepath.Join(dir, "store"), MakeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := res.Index.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	idx := filepath.Join(dir, "image.caibx")
	if err := os.WriteFile(idx, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.img")
	casync(t, "extract", "--store="+filepath.Join(dir, "store"), idx, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img) {
		t.Fatalf("casync extracted %d bytes that differ from the image's %d", len(got), len(img))
	}
}
