package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// abDevice is a simulated A/B device in a temp dir: file-backed slots (a
// holds the factory image), a GRUB env made by grub-editenv, a release
// signing key whose public half is the device's trust root, and a signed
// release 2.0.0 of a random image.
type abDevice struct {
	dir                   string
	editenv               string // grub-editenv
	slotA, slotB, grubenv string
	roots                 string // release trust roots (PEM)
	img                   []byte
	imgPath               string
	sum                   [sha256.Size]byte
	rel                   spec.Release // Version, Size, SHA256
	sig                   string       // rel's signature
}

func newABDevice(t *testing.T, imgSize int) *abDevice {
	t.Helper()
	d := &abDevice{dir: t.TempDir(), editenv: testenv.LookPath(t, "grub-editenv", "grub-common")}
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	d.roots = d.write(t, "release-keys.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	d.slotA = d.write(t, "slot-a.img", []byte("factory image"))
	d.slotB = d.write(t, "slot-b.img", nil)
	d.grubenv = filepath.Join(d.dir, "grubenv")
	if out, err := exec.Command(d.editenv, d.grubenv, "create").CombinedOutput(); err != nil {
		t.Fatalf("grub-editenv create: %v\n%s", err, out)
	}
	d.img = make([]byte, imgSize)
	rand.Read(d.img)
	d.imgPath = d.write(t, "os-2.0.0.img", d.img)
	d.sum = sha256.Sum256(d.img)
	d.rel = spec.Release{Version: "2.0.0", Size: int64(imgSize), SHA256: hex.EncodeToString(d.sum[:])}
	var err error
	if d.sig, err = updater.SignRelease(&d.rel, key); err != nil {
		t.Fatal(err)
	}
	return d
}

// write writes a file under the device's dir and returns its path.
func (d *abDevice) write(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(d.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// slotBHoldsImage reports whether slot b starts with the release image.
func (d *abDevice) slotBHoldsImage() bool {
	got, _ := os.ReadFile(d.slotB)
	return len(got) >= len(d.img) && sha256.Sum256(got[:len(d.img)]) == d.sum
}

// env lists the GRUB env with grub-editenv.
func (d *abDevice) env(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(d.editenv, d.grubenv, "list").CombinedOutput()
	if err != nil {
		t.Fatalf("grub-editenv list: %v\n%s", err, out)
	}
	return string(out)
}

// updateConfig returns the agent config's update section for this device:
// running version running, booted from slot a (a booted-slot file).
func (d *abDevice) updateConfig(t *testing.T, running string) string {
	t.Helper()
	booted := d.write(t, "booted", []byte("a\n"))
	return fmt.Sprintf("update:\n  slot_a: %s\n  slot_b: %s\n  bootloader: grub\n  grub_env: %s\n  trust_roots: %s\n  running_version: %s\n  booted_slot_file: %s\n",
		d.slotA, d.slotB, d.grubenv, d.roots, running, booted)
}

// releaseFile writes the signed release's metadata beside its image, where
// `shoal-agent update install IMAGE` looks for it.
func (d *abDevice) releaseFile(t *testing.T) {
	t.Helper()
	rel := d.rel
	rel.Signature = d.sig
	b, _ := json.Marshal(rel)
	d.write(t, filepath.Base(d.imgPath)+".release.json", b)
}
