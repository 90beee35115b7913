package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/provision"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// TestAgentInstallsReleaseFromStick: a bundle on the watched stick that
// carries an OS release is installed by the daemon through its real updater
// (signature checked against the device's release keys) into the inactive
// file slot, with the GRUB env set for the trial boot, and no network.
func TestAgentInstallsReleaseFromStick(t *testing.T) {
	editenv := testenv.LookPath(t, "grub-editenv", "grub-common")
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pub, relKey, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	roots := write("release-keys.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	slotA := write("slot-a.img", []byte("factory image"))
	slotB := write("slot-b.img", nil)
	grubenv := filepath.Join(dir, "grubenv")
	if out, err := exec.Command(editenv, grubenv, "create").CombinedOutput(); err != nil {
		t.Fatalf("grub-editenv create: %v\n%s", err, out)
	}
	img := make([]byte, 256<<10)
	rand.Read(img)
	imgPath := write("os-2.0.0.img", img)
	sum := sha256.Sum256(img)
	rel := spec.Release{Version: "2.0.0", Size: int64(len(img)), SHA256: hex.EncodeToString(sum[:])}
	sig, err := updater.SignRelease(&rel, relKey)
	if err != nil {
		t.Fatal(err)
	}

	f := newFleet(t)
	f.commit(map[string]string{
		"fleet.cue":       "spec: network: \"plant\"\n",
		"devices/d1.yaml": "labels:\n  role: gw\nspec:\n  release: os-2\n  update:\n    offline_ok: true\n",
		"releases/os-2.yaml": fmt.Sprintf("version: 2.0.0\nurl: https://releases.invalid/os-2.img\nsize: %d\nsha256: %s\nsignature: %s\n",
			len(img), rel.SHA256, sig),
	})
	key, _ := provision.GenerateKey()
	stick := t.TempDir()
	bundlePath := filepath.Join(stick, "1-os.shoal")
	out, err := os.Create(bundlePath + ".part")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := provision.Create(t.Context(), out, provision.CreateOptions{FleetDir: f.dir, Devices: []string{"d1"}, Key: key,
		Release: true, ReleaseFile: imgPath, TempDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	out.Close()

	state := filepath.Join(dir, "state")
	marker := filepath.Join(dir, "rebooted")
	cfgPath := write("agent.yaml", []byte(fmt.Sprintf(`device_id: d1
state_dir: %s
repo:
  url: file://%s/offline
metrics_addr: ""
docker_root: ""
poll_interval: 1h
retry_min: 50ms
retry_max: 2s
containers:
  enabled: false
trust:
  tpm: none
provision:
  watch: %s
  interval: 100ms
update:
  slot_a: %s
  slot_b: %s
  bootloader: grub
  grub_env: %s
  trust_roots: %s
  running_version: 1.0.0
  reboot_command: [sh, -c, "echo reboot > %s"]
  booted_slot_file: %s
  boot_id_file: %s
`, state, dir, stick, slotA, slotB, grubenv, roots, marker, write("booted-slot", []byte("a\n")), write("boot-id", []byte("boot-1\n")))))

	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		root := newWiredRootCmd(ctx)
		root.SetArgs([]string{"--config", cfgPath})
		root.SetOut(&logs)
		root.SetErr(&logs)
		done <- root.ExecuteContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent: %v\n%s", err, logs.String())
			}
		case <-time.After(20 * time.Second):
			t.Errorf("agent did not stop\n%s", logs.String())
		}
	})
	// The stick's copy finishes: the daemon sees the whole bundle at once.
	if err := os.Rename(bundlePath+".part", bundlePath); err != nil {
		t.Fatal(err)
	}

	receipt := bundlePath + ".d1.receipt.json"
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(receipt); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no receipt on the stick\nagent log:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, err := os.ReadFile(receipt)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := api.VerifyReceipt(b)
	if err != nil || rc.Result != api.ReceiptApplied || rc.Release != "2.0.0" {
		t.Fatalf("receipt: %+v %v\nagent log:\n%s", rc, err, logs.String())
	}
	got, _ := os.ReadFile(slotB)
	if len(got) < len(img) || sha256.Sum256(got[:len(img)]) != sum {
		t.Fatal("slot b does not hold the bundle's release image")
	}
	env, err := exec.Command(editenv, grubenv, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(env), "upgrade_available=1") || !strings.Contains(string(env), "shoal_slot=b") {
		t.Fatalf("grub-editenv list after the install: %v\n%s", err, env)
	}
	if a, _ := os.ReadFile(slotA); string(a) != "factory image" {
		t.Errorf("the running slot a changed: %q", a)
	}
}
