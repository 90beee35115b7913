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
	st, err := u.Step(context.Background(), job.Release, spec.UpdatePolicy{}, pass)
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
// and best compression) in a child process each and checks the child's peak
// RSS stays under 40 MB: memory does not grow with the image.
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
	}{
		{"raw", 0},
		{"zstd default", zstd.SpeedDefault},
		{"zstd best", zstd.SpeedBestCompression},
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
			for i := 0; i < size>>20; i++ {
				blk[i%len(blk)]++ // half-compressible: no two blocks alike
				half := blk[:len(blk)/2]
				chunk := append(append([]byte{}, half...), make([]byte, len(blk)/2)...)
				w.Write(chunk)
				h.Write(chunk)
			}
			if zw != nil {
				zw.Close()
			}
			f.Close()
			rel := &spec.Release{Version: "1.1.0", URL: img, Size: size, SHA256: hexSum(h)}
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
