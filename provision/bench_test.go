package provision

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// benchSet is a fleet repo whose apps load image tars from url sources,
// with the tars (random bytes, SHOAL_BENCH_MB in total, default 64) in an
// image dir, and a bundle of them made once.
type benchSet struct {
	fleet, images string
	tars          []string
	total         int64
}

func newBenchSet(b *testing.B) *benchSet {
	b.Helper()
	mb := 64
	if v, err := strconv.Atoi(os.Getenv("SHOAL_BENCH_MB")); err == nil && v > 0 {
		mb = v
	}
	git, err := exec.LookPath("git")
	if err != nil {
		b.Skip("git missing")
	}
	s := &benchSet{fleet: b.TempDir(), images: b.TempDir()}
	const apps = 5
	per := int64(mb) << 20 / apps
	rng := rand.NewChaCha8([32]byte{1})
	write := func(name, data string) {
		p := filepath.Join(s.fleet, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	write("fleet.cue", "spec: network: \"edge\"\n")
	write("devices/dev-1.yaml", "labels:\n  role: edge\n")
	group := "selector:\n  match_labels:\n    role: edge\nspec:\n  apps:\n"
	for i := range apps {
		buf := make([]byte, per)
		rng.Read(buf)
		sum := sha(buf)
		p := filepath.Join(s.images, sum+".tar")
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			b.Fatal(err)
		}
		s.tars = append(s.tars, p)
		s.total += per
		write(fmt.Sprintf("apps/app%d.yaml", i), fmt.Sprintf("image:\n  ref: example/app%d:1\n  source:\n    url: https://images.example/%d.tar\n    sha256: %s\n", i, i, sum))
		group += fmt.Sprintf("    app%d: {}\n", i)
	}
	write("groups/edge.yaml", group)
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"-c", "user.name=op", "-c", "user.email=op@example", "commit", "-q", "-m", "first"}} {
		if out, err := exec.Command(git, append([]string{"-C", s.fleet}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	return s
}

func (s *benchSet) create(b *testing.B, out string) {
	f, err := os.Create(out)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := Create(context.Background(), f, CreateOptions{FleetDir: s.fleet, Devices: []string{"dev-1"}, Key: newKey(b), ImageDir: s.images, TempDir: b.TempDir()}); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkCreate writes a bundle of the image tars (hash pass, then the
// write with a re-hash).
func BenchmarkCreate(b *testing.B) {
	s := newBenchSet(b)
	out := filepath.Join(b.TempDir(), "b.shoal")
	b.SetBytes(s.total)
	b.ResetTimer()
	for range b.N {
		s.create(b, out)
	}
}

// BenchmarkCreateBaseline is `tar -cf` of the same tars plus `sha256sum` of them.
func BenchmarkCreateBaseline(b *testing.B) {
	s := newBenchSet(b)
	out := filepath.Join(b.TempDir(), "b.tar")
	b.SetBytes(s.total)
	b.ResetTimer()
	for range b.N {
		run(b, "sh", append([]string{"-c", "sha256sum \"$@\" >/dev/null && tar -cf " + out + " \"$@\" && sync " + out, "sh"}, s.tars...)...)
	}
}

// BenchmarkApply verifies and applies the bundle into a fresh state dir
// (images kept for the reconciler, not loaded into an Engine).
func BenchmarkApply(b *testing.B) {
	s := newBenchSet(b)
	bundle := filepath.Join(b.TempDir(), "b.shoal")
	s.create(b, bundle)
	b.SetBytes(s.total)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		state := b.TempDir()
		b.StartTimer()
		if _, err := Apply(context.Background(), bundle, ApplyOptions{StateDir: state, DeviceID: "dev-1", NoReceipt: true, TrustFirstBundle: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyBaseline is `tar -xf` of a tar of the same files plus
// `sha256sum` of what it wrote.
func BenchmarkApplyBaseline(b *testing.B) {
	s := newBenchSet(b)
	tarFile := filepath.Join(b.TempDir(), "b.tar")
	run(b, "tar", append([]string{"-cf", tarFile, "-C", s.images}, baseNames(s.tars)...)...)
	b.SetBytes(s.total)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		dir := b.TempDir()
		b.StartTimer()
		run(b, "sh", "-c", "tar -xf "+tarFile+" -C "+dir+" && sha256sum "+dir+"/* >/dev/null && sync "+dir+"/*")
	}
}

func baseNames(ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = filepath.Base(p)
	}
	return out
}

func run(b *testing.B, name string, args ...string) {
	b.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s %v: %v %s", name, args, err, stderr.String())
	}
}
