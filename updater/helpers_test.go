package updater

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater/bootenv"
)

// device is a simulated device: two file slots, a real bootloader env file,
// and a boot that applies the bootloader's rules.
type device struct {
	t        testing.TB
	dir      string
	kind     string // "uboot" or "grub"
	slots    map[string]string
	env      bootenv.Env
	cfgPath  string // fw_env.config for U-Boot
	envPath  string
	booted   string
	bootN    int
	rebooted int
	oldSHA   string
	known    [][]byte // images that verify: the factory image and every release's
	key      ed25519.PrivateKey
	now      time.Time
}

func newDevice(t testing.TB, kind string) *device {
	t.Helper()
	d := &device{t: t, dir: t.TempDir(), kind: kind, booted: SlotA, now: time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)}
	d.slots = map[string]string{SlotA: filepath.Join(d.dir, "slot-a.img"), SlotB: filepath.Join(d.dir, "slot-b.img")}
	old := randBytes(t, 300<<10)
	d.oldSHA = sha(old)
	d.known = [][]byte{old}
	writeFile(t, d.slots[SlotA], old)
	writeFile(t, d.slots[SlotB], nil)
	d.openEnv()
	if err := d.env.Save(map[string]string{VarSlot: SlotA, "bootcmd": "run shoal_boot"}); err != nil {
		t.Fatal(err)
	}
	_, d.key, _ = ed25519.GenerateKey(rand.Reader)
	return d
}

func (d *device) openEnv() {
	t := d.t
	switch d.kind {
	case "uboot":
		d.envPath = filepath.Join(d.dir, "uboot.env")
		if _, err := os.Stat(d.envPath); err != nil {
			writeFile(t, d.envPath, make([]byte, 0x8000))
		}
		cfg := bootenv.UBootConfig{Copies: []bootenv.Location{
			{Device: d.envPath, Offset: 0, Size: 0x2000}, {Device: d.envPath, Offset: 0x4000, Size: 0x2000},
		}}
		d.cfgPath = filepath.Join(d.dir, "fw_env.config")
		writeFile(t, d.cfgPath, []byte(cfg.String()))
		env, err := bootenv.NewUBoot(cfg)
		if err != nil {
			t.Fatal(err)
		}
		d.env = env
	case "grub":
		d.envPath = filepath.Join(d.dir, "grubenv")
		d.env = bootenv.NewGRUB(d.envPath)
	default:
		t.Fatalf("bootloader %q", d.kind)
	}
}

func (d *device) options() Options {
	return Options{
		StateDir:        filepath.Join(d.dir, "state"),
		Slots:           d.slots,
		Env:             d.env,
		UBoot:           d.kind == "uboot",
		TrustRoots:      []crypto.PublicKey{d.key.Public()},
		Rebooter:        rebootFunc(func(context.Context) error { d.rebooted++; return nil }),
		BootID:          func() (string, error) { return fmt.Sprint("boot-", d.bootN), nil },
		BootedSlot:      func() (string, error) { return d.booted, nil },
		RunningVersion:  "1.0.0",
		Now:             func() time.Time { return d.now },
		BufferSize:      64 << 10,
		CheckpointEvery: 128 << 10,
	}
}

func (d *device) updater() *Updater {
	d.t.Helper()
	u, err := New(d.options())
	if err != nil {
		d.t.Fatal(err)
	}
	return u
}

// boot powers the device on: the bootloader's rules, then a check that the
// slot it starts holds a verified image and that the Debian tool reads the env.
func (d *device) boot() {
	t := d.t
	t.Helper()
	slot, err := SimulateBoot(d.env)
	if err != nil {
		t.Fatalf("boot %d: %v", d.bootN+1, err)
	}
	d.booted = slot
	d.bootN++
	b, err := os.ReadFile(d.slots[slot])
	if err != nil {
		t.Fatal(err)
	}
	verified := false
	for _, img := range d.known {
		verified = verified || (len(b) >= len(img) && bytes.Equal(b[:len(img)], img))
	}
	if !verified {
		t.Fatalf("boot %d: slot %s does not hold a verified image", d.bootN, slot)
	}
	if got := d.toolGet(VarSlot); got != "" && got != slot && d.readVars()[VarUpgrade] != "1" {
		t.Fatalf("boot %d: booted %s but the env says %s", d.bootN, slot, got)
	}
}

func (d *device) readVars() map[string]string {
	d.t.Helper()
	v, err := d.env.Load()
	if err != nil {
		d.t.Fatalf("our env reader: %v", err)
	}
	return v
}

// toolGet reads one variable with the Debian tool for this bootloader; it
// fails the test when the tool cannot read the env.
func (d *device) toolGet(name string) string {
	t := d.t
	t.Helper()
	switch d.kind {
	case "uboot":
		out, err := exec.CommandContext(context.Background(), testenv.LookPath(t, "fw_printenv", "libubootenv-tool"), "-c", d.cfgPath).CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("Cannot read environment")) {
			t.Fatalf("fw_printenv cannot read the env: %v: %s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, name+"="); ok {
				return v
			}
		}
	case "grub":
		out, err := exec.CommandContext(context.Background(), testenv.LookPath(t, "grub-editenv", "grub-common"), d.envPath, "list").CombinedOutput()
		if err != nil {
			t.Fatalf("grub-editenv cannot read the env: %v: %s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, name+"="); ok {
				return v
			}
		}
	}
	return ""
}

// release writes image to a file and returns a release for it, signed by d's key.
func (d *device) release(version string, image []byte) *spec.Release {
	d.t.Helper()
	path := filepath.Join(d.dir, "image-"+version+"-"+sha(image)[:8]+".img")
	writeFile(d.t, path, image)
	d.known = append(d.known, image)
	rel := &spec.Release{Name: "os-" + version, Version: version, URL: path, Size: int64(len(image)), SHA256: sha(image)}
	d.sign(rel)
	return rel
}

func (d *device) sign(rel *spec.Release) {
	d.t.Helper()
	sig, err := SignRelease(rel, d.key)
	if err != nil {
		d.t.Fatal(err)
	}
	rel.Signature = sig
}

type rebootFunc func(context.Context) error

func (f rebootFunc) Reboot(ctx context.Context) error { return f(ctx) }

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func fileBytes(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func chunkManifest(img []byte, size int) *spec.ChunkManifest {
	m := &spec.ChunkManifest{Size: int64(size)}
	for off := 0; off < len(img); off += size {
		m.SHA256 = append(m.SHA256, sha(img[off:min(off+size, len(img))]))
	}
	return m
}

func newSHA() hash.Hash { return sha256.New() }

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
