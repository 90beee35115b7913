package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/provision"
)

// TestAgentInstallsReleaseFromStick: a bundle on the watched stick that
// carries an OS release is installed by the daemon through its real updater
// (signature checked against the device's release keys) into the inactive
// file slot, with the GRUB env set for the trial boot, and no network.
func TestAgentInstallsReleaseFromStick(t *testing.T) {
	d := newABDevice(t, 256<<10)
	dir, img, rel, sig := d.dir, d.img, d.rel, d.sig
	write := func(name string, b []byte) string { return d.write(t, name, b) }
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
	if _, err := provision.Create(t.Context(), out, provision.CreateOptions{FleetDir: f.Dir, Devices: []string{"d1"}, Key: key,
		Release: true, ReleaseFile: d.imgPath, TempDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	out.Close()

	marker := filepath.Join(dir, "rebooted")
	cfgPath, _ := stickConfig(t, dir, stick, "none", "2s", fmt.Sprintf(`update:
  slot_a: %s
  slot_b: %s
  bootloader: grub
  grub_env: %s
  trust_roots: %s
  running_version: 1.0.0
  reboot_command: [sh, -c, "echo reboot > %s"]
  booted_slot_file: %s
  boot_id_file: %s
`, d.slotA, d.slotB, d.grubenv, d.roots, marker, write("booted-slot", []byte("a\n")), write("boot-id", []byte("boot-1\n"))))

	logs := runDaemon(t, cfgPath)
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
	if !d.slotBHoldsImage() {
		t.Fatal("slot b does not hold the bundle's release image")
	}
	if env := d.env(t); !strings.Contains(env, "upgrade_available=1") || !strings.Contains(env, "shoal_slot=b") {
		t.Fatalf("GRUB env after the install:\n%s", env)
	}
	if a, _ := os.ReadFile(d.slotA); string(a) != "factory image" {
		t.Errorf("the running slot a changed: %q", a)
	}
}
