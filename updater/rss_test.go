package updater

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater/delta"
)

const rssDir = "SHOAL_RSS_DIR"

// TestPeakRSSChild installs the release TestPeakRSS prepared, in a process
// of its own. Run on its own it has nothing to install and returns at once.
func TestPeakRSSChild(t *testing.T) {
	dir := os.Getenv(rssDir)
	if dir == "" {
		return
	}
	d := &device{t: t, dir: dir, kind: "grub", booted: SlotA}
	d.slots = map[string]string{SlotA: filepath.Join(dir, "slot-a.img"), SlotB: filepath.Join(dir, "slot-b.img")}
	d.openEnv()
	var job struct {
		Release *spec.Release
		Seed    []byte
	}
	if err := json.Unmarshal(fileBytes(t, filepath.Join(dir, "job.json")), &job); err != nil {
		t.Fatal(err)
	}
	d.key = ed25519.NewKeyFromSeed(job.Seed)
	o := d.options()
	o.BufferSize, o.CheckpointEvery = 0, 0 // the defaults a device runs with
	u, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	st, err := u.Install(context.Background(), job.Release, spec.UpdatePolicy{})
	if err != nil || st.Phase != PhaseRebooting {
		t.Fatalf("%+v, %v", st, err)
	}
	// VmHWM, not the parent's rusage: on Linux a child's ru_maxrss starts from
	// the parent's RSS, whose memory the child shares until exec.
	for _, l := range strings.Split(string(fileBytes(t, "/proc/self/status")), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			fmt.Printf("peak-rss-kb=%s\n", strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
}

// TestPeakRSS installs a 256 MiB raw image and a 256 MiB zstd image (level 3
// and best compression), and a 256 MiB image from a chunk index seeded from
// an image that differs in a quarter of its megabytes, in a child process each
// and checks the child's peak RSS stays under 40 MB: memory does not grow
// with the image.
func TestPeakRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 256 MiB images")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	tests := []struct {
		name  string
		level zstd.EncoderLevel // 0: raw
		delta bool
	}{
		{"raw", 0, false},
		{"zstd default", zstd.SpeedDefault, false},
		{"zstd best", zstd.SpeedBestCompression, false},
		{"delta", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice(t, "grub")
			blk := randBytes(t, 1<<20)
			img := filepath.Join(d.dir, "image")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			var w io.Writer = f
			var zw *zstd.Encoder
			if tc.level != 0 {
				zw, _ = zstd.NewWriter(f, zstd.WithEncoderLevel(tc.level), zstd.WithEncoderConcurrency(1))
				w = zw
			}
			h := newSHA()
			var old *os.File
			if tc.delta {
				if old, err = os.Create(d.slots[SlotA]); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < size>>20; i++ {
				blk[i%len(blk)]++ // half-compressible: no two blocks alike
				half := blk[:len(blk)/2]
				chunk := append(append([]byte{}, half...), make([]byte, len(blk)/2)...)
				w.Write(chunk)
				h.Write(chunk)
				if old != nil {
					if i%4 == 1 {
						chunk = randBytes(t, len(chunk))
					}
					old.Write(chunk)
				}
			}
			if old != nil {
				old.Close()
			}
			if zw != nil {
				zw.Close()
			}
			f.Close()
			rel := &spec.Release{Version: "1.1.0", URL: img, Size: size, SHA256: hexSum(h)}
			if tc.delta {
				f, err := os.Open(img)
				if err != nil {
					t.Fatal(err)
				}
				store := filepath.Join(d.dir, "store")
				res, err := delta.Make(context.Background(), f, store, delta.MakeOptions{})
				f.Close()
				if err != nil {
					t.Fatal(err)
				}
				b, _ := res.Index.MarshalBinary()
				writeFile(t, filepath.Join(d.dir, "image.caibx"), b)
				rel.Delta = &spec.Delta{Index: filepath.Join(d.dir, "image.caibx"), SHA256: sha(b), Store: store}
			}
			d.sign(rel)
			b, _ := json.Marshal(map[string]any{"Release": rel, "Seed": d.key.Seed()})
			writeFile(t, filepath.Join(d.dir, "job.json"), b)
			cmd := exec.CommandContext(context.Background(), exe, "-test.run=^TestPeakRSSChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), rssDir+"="+d.dir)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			var peakKB int64
			for _, l := range strings.Split(string(out), "\n") {
				if v, ok := strings.CutPrefix(l, "peak-rss-kb="); ok {
					peakKB, _ = strconv.ParseInt(v, 10, 64)
				}
			}
			if peakKB == 0 {
				t.Fatalf("child reported no peak RSS:\n%s", out)
			}
			peak := peakKB * 1024
			t.Logf("%s: peak RSS %.1f MiB installing %d MiB", tc.name, float64(peak)/(1<<20), size>>20)
			if peak >= 40e6 {
				t.Fatalf("peak RSS %d bytes, want under 40 MB", peak)
			}
		})
	}
}
