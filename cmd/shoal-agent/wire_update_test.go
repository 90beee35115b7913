package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/updater"
	"github.com/shoalfleet/shoal/updater/bootenv"
)

// The agent drives the A/B updater from the fleet repo: a release named in
// the spec is verified and written to the inactive file slot, the GRUB env
// (read back with grub-editenv) is set for a trial, the reboot command runs;
// after a simulated boot into the new slot the next pass passes the health
// gate and commits.
func TestAgentWiredUpdatesOS(t *testing.T) {
	d := newABDevice(t, 512<<10)
	dir, editenv, grubenv := d.dir, d.editenv, d.grubenv
	write := func(name string, b []byte) string { return d.write(t, name, b) }
	img, sum, rel, sig, imgPath := d.img, d.sum, d.rel, d.sig, d.imgPath
	slotA, slotB, roots := d.slotA, d.slotB, d.roots
	bootedFile := write("booted-slot", []byte("a\n"))
	bootIDFile := write("boot-id", []byte("boot-1\n"))
	marker := filepath.Join(dir, "rebooted")

	repo := filepath.Join(dir, "fleet")
	files := map[string]string{
		"devices/d1.yaml": "spec:\n  release: os-2\n  update:\n    offline_ok: true\n",
		"releases/os-2.yaml": fmt.Sprintf("version: 2.0.0\nurl: file://%s\nsize: %d\nsha256: %s\nsignature: %s\n",
			imgPath, len(img), rel.SHA256, sig),
	}
	for name, data := range files {
		p := filepath.Join(repo, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(data), 0o644)
	}
	testenv.GitCommitAll(t, repo, "release os-2")

	state := filepath.Join(dir, "state")
	cfgPath := write("agent.yaml", []byte(fmt.Sprintf(`device_id: d1
state_dir: %s
repo:
  url: file://%s
metrics_addr: ""
containers:
  enabled: false
trust:
  tpm: none
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
`, state, repo, slotA, slotB, grubenv, roots, marker, bootedFile, bootIDFile)))

	// Pass 1: install into slot b, set the trial, ask for a reboot. Not converged yet.
	if code := run(context.Background(), []string{"--once", "--config", cfgPath}); code != exitUnready {
		t.Fatalf("first pass exit %d, want %d (rebooting into the trial)", code, exitUnready)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("reboot command did not run: %v", err)
	}
	got, _ := os.ReadFile(slotB)
	if sha256.Sum256(got[:len(img)]) != sum {
		t.Fatal("slot b does not hold the release image")
	}
	out, err := exec.Command(editenv, grubenv, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "upgrade_available=1") || !strings.Contains(string(out), "shoal_slot=b") {
		t.Fatalf("grub-editenv list: %v\n%s", err, out)
	}

	// The simulated bootloader boots slot b on trial.
	booted, err := updater.SimulateBoot(bootenv.NewGRUB(grubenv))
	if err != nil || booted != "b" {
		t.Fatalf("simulated boot: slot %q, %v", booted, err)
	}
	write("booted-slot", []byte(booted))
	write("boot-id", []byte("boot-2"))

	// Pass 2: the trial's health gate passes (offline allowed, no containers): commit.
	if code := run(context.Background(), []string{"--once", "--config", cfgPath}); code != exitOK {
		t.Fatalf("trial pass exit %d, want 0", code)
	}
	out, _ = exec.Command(editenv, grubenv, "list").CombinedOutput()
	if strings.Contains(string(out), "upgrade_available=1") || !strings.Contains(string(out), "shoal_slot=b") {
		t.Fatalf("after commit, grub env:\n%s", out)
	}
	st, err := agent.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	if st.Applied.Commit == "" {
		t.Fatal("no applied commit")
	}
}
