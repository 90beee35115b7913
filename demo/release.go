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
	"path/filepath"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
	"github.com/shoalfleet/shoal/updater/bootenv"
)

// canary is the device in the canary group; only it has A/B slots in the demo.
const canary = "gw-01"

// Release the canary group gets: an image of random bytes, signed with a key
// the demo makes and gives the canary as its trust root.
const (
	releaseName    = "gateway-os-2026.11.0"
	releaseVersion = "2026.11.0"
	runningVersion = "2026.10.2"
)

// canaryConfig adds file-backed A/B slots, a GRUB env file, the release trust
// root and a simulated reboot (a marker file the demo acts on) to cfg, and
// writes the release and its image into the fleet repo's reach.
func (d *demo) canaryConfig(cfg, state string) (string, error) {
	boot := filepath.Join(filepath.Dir(state), "boot")
	if err := os.MkdirAll(boot, 0o700); err != nil {
		return "", err
	}
	write := func(name string, b []byte) (string, error) {
		p := filepath.Join(boot, name)
		return p, os.WriteFile(p, b, 0o600)
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	roots, err := write("release-keys.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		return "", err
	}
	slotA, err := write("slot-a.img", []byte("factory image "+runningVersion))
	if err != nil {
		return "", err
	}
	slotB, err := write("slot-b.img", nil)
	if err != nil {
		return "", err
	}
	booted, err := write("booted-slot", []byte("a\n"))
	if err != nil {
		return "", err
	}
	bootID, err := write("boot-id", []byte("boot-1\n"))
	if err != nil {
		return "", err
	}
	img := make([]byte, 512<<10)
	rand.Read(img)
	imgPath, err := write(releaseName+".img", img)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(img)
	rel := spec.Release{Version: releaseVersion, Size: int64(len(img)), SHA256: hex.EncodeToString(sum[:])}
	sig, err := updater.SignRelease(&rel, key)
	if err != nil {
		return "", fmt.Errorf("sign release: %w", err)
	}
	if err := d.writeFile("releases/"+releaseName+".yaml", fmt.Sprintf("version: %s\nurl: file://%s\nsize: %d\nsha256: %s\nsignature: %s\n",
		releaseVersion, imgPath, len(img), rel.SHA256, sig)); err != nil {
		return "", err
	}
	d.boot = boot
	return cfg + fmt.Sprintf(`update:
  slot_a: %s
  slot_b: %s
  bootloader: grub
  grub_env: %s
  trust_roots: %s
  running_version: %s
  reboot_command: [sh, -c, "echo reboot > %s"]
  booted_slot_file: %s
  boot_id_file: %s
`, slotA, slotB, filepath.Join(boot, "grubenv"), roots, runningVersion, filepath.Join(boot, "reboot-requested"), booted, bootID), nil
}

// release rolls the OS release out to the canary group: slot write, a
// simulated reboot (stop the agent, let the simulated bootloader pick the
// slot, start the agent), the trial, and the commit after the health gate.
func (d *demo) release(ctx context.Context) error {
	if err := d.writeFile("groups/canary.yaml", "description: Canary devices, updated first\nselector:\n  devices: [gw-01]\npriority: 10\nspec:\n  release: "+releaseName+"\n"); err != nil {
		return err
	}
	if err := d.shoal(ctx, "validate", d.repo); err != nil {
		return err
	}
	commit, err := d.commit(ctx, "canary: "+releaseName)
	if err != nil {
		return err
	}
	if err := d.shoal(ctx, "poke", "--group", "canary", "--commit", commit); err != nil {
		return err
	}
	d.say("committed OS release %s for the canary group as %s and poked it", releaseVersion, commit[:8])
	marker := filepath.Join(d.boot, "reboot-requested")
	if err := d.until(ctx, canary+" to ask for a reboot", func() bool {
		_, err := os.Stat(marker)
		return err == nil
	}); err != nil {
		return err
	}
	env := bootenv.NewGRUB(filepath.Join(d.boot, "grubenv"))
	vars, err := env.Load()
	if err != nil {
		return fmt.Errorf("grub env: %w", err)
	}
	d.say("%s verified and wrote slot b, set the GRUB env for a trial (shoal_slot=%s upgrade_available=%s) and asked to reboot", canary, vars["shoal_slot"], vars["upgrade_available"])

	// The simulated reboot.
	if err := d.stop(d.agents[canary]); err != nil {
		return err
	}
	slot, err := updater.SimulateBoot(env)
	if err != nil {
		return fmt.Errorf("simulated boot: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d.boot, "booted-slot"), []byte(slot+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.boot, "boot-id"), []byte(fmt.Sprintf("boot-%d\n", time.Now().UnixNano())), 0o600); err != nil {
		return err
	}
	if d.agents[canary], err = d.start(ctx, canary+"-boot2", "shoal-agent", "--config", d.cfgs[canary]); err != nil {
		return err
	}
	d.say("%s rebooted (simulated) into slot %s on trial; waiting for its health gate and commit", canary, slot)
	got, err := d.wait(ctx, "commit the release", []string{canary}, func(_ string, s api.Status) bool {
		return s.State == api.StateConverged && s.Commit.Applied == commit && s.Update != nil && s.Update.Version == releaseVersion && s.Update.Slot == "b"
	})
	if err != nil {
		return err
	}
	vars, err = env.Load()
	if err != nil {
		return fmt.Errorf("grub env: %w", err)
	}
	if vars["upgrade_available"] == "1" {
		return fmt.Errorf("grub env still on trial after the commit: %v", vars)
	}
	d.say("%s committed %s (update state %q, slot %s); the trial flag is cleared", canary, releaseVersion, got[canary].Update.State, got[canary].Update.Slot)
	if _, err := d.waitAll(ctx, "converge on the release commit", func(_ string, s api.Status) bool {
		return s.State == api.StateConverged && s.Commit.Applied == commit
	}); err != nil {
		return err
	}
	d.releaseCommit, d.canaryUpdate = commit, got[canary].Update
	return d.onStep(ctx, "release")
}
