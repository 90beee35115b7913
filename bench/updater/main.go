// Command updater-bench measures installing an OS image into a file slot with
// the updater (signature check, streaming sha256, fsync, read-back verify)
// against the shell baseline `dd bs=4M conv=fsync` plus `sha256sum`, in the
// same run on the same image, and reports the install's peak RSS.
//
//	go run ./bench/updater -size 1024 -rounds 3 -dir /var/tmp
package main

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
	"github.com/shoalfleet/shoal/updater/bootenv"
)

type job struct {
	Dir     string        `json:"dir"`
	Release *spec.Release `json:"release"`
	Seed    []byte        `json:"seed"`
}

func main() {
	size := flag.Int("size", 1024, "image size in MiB")
	rounds := flag.Int("rounds", 3, "rounds of ours and the baseline, interleaved")
	dir := flag.String("dir", os.TempDir(), "directory for the image and the slots (same filesystem for both)")
	child := flag.String("install", "", "internal: run one install described by this job file")
	flag.Parse()
	ctx := context.Background()
	if *child != "" {
		if err := install(ctx, *child); err != nil {
			fmt.Fprintln(os.Stderr, "install:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, *size, *rounds, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "updater-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, sizeMiB, rounds int, base string) error {
	dir, err := os.MkdirTemp(base, "shoal-updater-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "image.img")
	digest, err := makeImage(img, int64(sizeMiB)<<20)
	if err != nil {
		return err
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	rel := &spec.Release{Name: "bench", Version: "2.0.0", URL: img, Size: int64(sizeMiB) << 20, SHA256: digest}
	if rel.Signature, err = updater.SignRelease(rel, key); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var ours, theirs []time.Duration
	var peakKB int64
	for r := range rounds {
		// Ours: a fresh device each round, the install in a child process so its peak RSS is its own.
		dev := filepath.Join(dir, fmt.Sprint("dev", r))
		if err := os.MkdirAll(dev, 0o755); err != nil {
			return err
		}
		jb, _ := json.Marshal(job{Dir: dev, Release: rel, Seed: key.Seed()})
		jf := filepath.Join(dev, "job.json")
		if err := os.WriteFile(jf, jb, 0o644); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, exe, "-install", jf)
		cmd.Stderr = os.Stderr
		start := time.Now()
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("ours: %w", err)
		}
		ours = append(ours, time.Since(start))
		var kb int64
		if _, err := fmt.Sscanf(string(out), "peak-rss-kb=%d", &kb); err != nil {
			return fmt.Errorf("ours: no peak RSS in %q", out)
		}
		peakKB = max(peakKB, kb)
		os.RemoveAll(dev)

		// Baseline: dd with fsync into a slot file, then sha256sum of the image.
		slot := filepath.Join(dir, "dd-slot.img")
		start = time.Now()
		dd := exec.CommandContext(ctx, "dd", "if="+img, "of="+slot, "bs=4M", "conv=fsync", "status=none")
		if out, err := dd.CombinedOutput(); err != nil {
			return fmt.Errorf("dd: %w: %s", err, out)
		}
		sum, err := exec.CommandContext(ctx, "sha256sum", img).Output()
		if err != nil {
			return fmt.Errorf("sha256sum: %w", err)
		}
		theirs = append(theirs, time.Since(start))
		if string(sum[:64]) != digest {
			return fmt.Errorf("sha256sum disagrees with the image digest")
		}
		os.Remove(slot)
	}
	med := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	mibs := func(d time.Duration) float64 { return float64(sizeMiB) / d.Seconds() }
	o, b := med(ours), med(theirs)
	fmt.Printf("image %d MiB, %d rounds, medians\n", sizeMiB, rounds)
	fmt.Printf("ours (verify sig, stream+sha256, fsync, read-back verify): %v  %.0f MiB/s  all: %v\n", o.Round(time.Millisecond), mibs(o), ours)
	fmt.Printf("baseline (dd bs=4M conv=fsync + sha256sum):                %v  %.0f MiB/s  all: %v\n", b.Round(time.Millisecond), mibs(b), theirs)
	fmt.Printf("throughput ratio ours/baseline: %.2f\n", mibs(o)/mibs(b))
	fmt.Printf("peak RSS (VmHWM) of the install process: %.1f MiB\n", float64(peakKB)/1024)
	return nil
}

// makeImage writes size random-looking bytes (a repeated 1 MiB random block,
// incompressible to the page cache) and returns their sha256.
func makeImage(path string, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	blk := make([]byte, 1<<20)
	if _, err := rand.Read(blk); err != nil {
		return "", err
	}
	h := sha256.New()
	w := io.MultiWriter(f, h)
	for off := int64(0); off < size; off += int64(len(blk)) {
		blk[0]++ // no two blocks alike
		if _, err := w.Write(blk[:min(int64(len(blk)), size-off)]); err != nil {
			return "", err
		}
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func install(ctx context.Context, jobFile string) error {
	b, err := os.ReadFile(jobFile)
	if err != nil {
		return err
	}
	var j job
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	key := ed25519.NewKeyFromSeed(j.Seed)
	slotA, slotB := filepath.Join(j.Dir, "a.img"), filepath.Join(j.Dir, "b.img")
	for _, s := range []string{slotA, slotB} {
		if err := os.WriteFile(s, nil, 0o644); err != nil {
			return err
		}
	}
	u, err := updater.New(updater.Options{
		StateDir:       filepath.Join(j.Dir, "state"),
		Slots:          map[string]string{updater.SlotA: slotA, updater.SlotB: slotB},
		Env:            bootenv.NewGRUB(filepath.Join(j.Dir, "grubenv")),
		TrustRoots:     []crypto.PublicKey{key.Public()},
		Rebooter:       noReboot{},
		BootID:         func() (string, error) { return "bench", nil },
		BootedSlot:     func() (string, error) { return updater.SlotA, nil },
		RunningVersion: "1.0.0",
	})
	if err != nil {
		return err
	}
	st, err := u.Step(ctx, j.Release, spec.UpdatePolicy{}, nil)
	if err != nil {
		return err
	}
	if st.Phase != updater.PhaseRebooting {
		return fmt.Errorf("install ended in phase %s", st.Phase)
	}
	// VmHWM rather than the parent's rusage: on Linux a child's ru_maxrss
	// starts from the parent's RSS, whose memory it shares until exec.
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			fmt.Printf("peak-rss-kb=%s\n", strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	return nil
}

type noReboot struct{}

func (noReboot) Reboot(context.Context) error { return nil }
