package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
	"github.com/shoalfleet/shoal/updater/bootenv"
	"github.com/shoalfleet/shoal/updater/delta"
)

// canary is the device in the canary group; only it has A/B slots in the demo.
const canary = "gw-01"

// Release the canary group gets: an image of random bytes, signed with a key
// the demo makes and gives the canary as its trust root.
const (
	releaseName    = "gateway-os-2026.11.0"
	releaseVersion = "2026.11.0"
	runningVersion = "2026.10.2"
	// badName is a later release whose kernel never comes up on the canary:
	// its trial fails and the bootloader falls back.
	badName    = "gateway-os-2026.12.0"
	badVersion = "2026.12.0"
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
	d.factory = osImage(nil, 1)
	slotA, err := write("slot-a.img", d.factory)
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
	d.boot, d.releaseKey = boot, key
	if err := d.writeRelease(releaseName, releaseVersion); err != nil {
		return "", err
	}
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

// osImage returns a 4 MiB stand-in for a root file system: from is the
// release it upgrades (nil: a new one), changed in a few places as a
// package upgrade changes a file system; seed makes each one its own.
func osImage(from []byte, seed uint64) []byte {
	r := mathrand.New(mathrand.NewPCG(seed, 42))
	if from == nil {
		img := make([]byte, 4<<20)
		for i := range img[:3<<20] { // files, then free space
			img[i] = byte(r.Uint32())
		}
		return img
	}
	img := append([]byte(nil), from...)
	for range 3 { // a library, its changelog, dpkg's status file
		off, n := r.IntN(3<<20), 4<<10+r.IntN(60<<10)
		for i := off; i < off+n && i < len(img); i++ {
			img[i] = byte(r.Uint32())
		}
	}
	return img
}

// writeRelease makes a release image beside the canary's slots (its running
// image with a few changes), and its delta: a casync chunk index and a
// chunk store; it signs the release with the canary's trust root and adds
// it to the fleet repo.
func (d *demo) writeRelease(name, version string) error {
	vs := sha256.Sum256([]byte(version))
	img := osImage(d.factory, binary.LittleEndian.Uint64(vs[:]))
	imgPath := filepath.Join(d.boot, name+".img")
	if err := os.WriteFile(imgPath, img, 0o600); err != nil {
		return err
	}
	store := filepath.Join(d.boot, "store")
	res, err := delta.Make(context.Background(), bytes.NewReader(img), store, delta.MakeOptions{Params: delta.Params{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}})
	if err != nil {
		return fmt.Errorf("chunk the release: %w", err)
	}
	idx, err := res.Index.MarshalBinary()
	if err != nil {
		return err
	}
	idxPath := filepath.Join(d.boot, name+".caibx")
	if err := os.WriteFile(idxPath, idx, 0o600); err != nil {
		return err
	}
	sum, isum := sha256.Sum256(img), sha256.Sum256(idx)
	rel := spec.Release{Version: version, Size: int64(len(img)), SHA256: hex.EncodeToString(sum[:]),
		Delta: &spec.Delta{Index: idxPath, SHA256: hex.EncodeToString(isum[:]), Store: store}}
	sig, err := updater.SignRelease(&rel, d.releaseKey)
	if err != nil {
		return fmt.Errorf("sign release: %w", err)
	}
	return d.writeFile("releases/"+name+".yaml", fmt.Sprintf("version: %s\nurl: file://%s\nsize: %d\nsha256: %s\nsignature: %s\ndelta:\n  index: %s\n  sha256: %q\n  store: %s\n",
		version, imgPath, len(img), rel.SHA256, sig, idxPath, rel.Delta.SHA256, store))
}

// canaryGroup is the canary group's file, rolling release name out.
func canaryGroup(name string) string {
	return "description: Canary devices, updated first\nselector:\n  devices: [gw-01]\npriority: 10\nspec:\n  release: " + name + "\n"
}

// rolloutToCanary commits the canary group on release name, pokes it and
// waits for the canary to write the slot and ask for a reboot; it returns the
// commit and the GRUB env the canary left.
func (d *demo) rolloutToCanary(ctx context.Context, name, version, what string) (string, map[string]string, error) {
	if err := d.writeFile("groups/canary.yaml", canaryGroup(name)); err != nil {
		return "", nil, err
	}
	if err := d.shoal(ctx, "validate", d.repo); err != nil {
		return "", nil, err
	}
	commit, err := d.commit(ctx, "canary: "+name)
	if err != nil {
		return "", nil, err
	}
	if err := d.shoal(ctx, "poke", "--group", "canary", "--commit", commit); err != nil {
		return "", nil, err
	}
	d.say("committed %s %s for the canary group as %s and poked it", what, version, commit[:8])
	marker := filepath.Join(d.boot, "reboot-requested")
	if err := d.until(ctx, canary+" to ask for a reboot", func() bool {
		_, err := os.Stat(marker)
		return err == nil
	}); err != nil {
		return "", nil, err
	}
	if err := os.Remove(marker); err != nil {
		return "", nil, err
	}
	vars, err := bootenv.NewGRUB(filepath.Join(d.boot, "grubenv")).Load()
	if err != nil {
		return "", nil, fmt.Errorf("grub env: %w", err)
	}
	return commit, vars, nil
}

// powerOn writes what the simulated bootloader chose (the booted slot and a
// new boot ID) and starts the canary's agent: the device's OS is up.
func (d *demo) powerOn(ctx context.Context, slot string, boot int) error {
	if err := os.WriteFile(filepath.Join(d.boot, "booted-slot"), []byte(slot+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.boot, "boot-id"), []byte(fmt.Sprintf("boot-%d\n", time.Now().UnixNano())), 0o600); err != nil {
		return err
	}
	var err error
	d.agents[canary], err = d.start(ctx, fmt.Sprintf("%s-boot%d", canary, boot), "shoal-agent", "--config", d.cfgs[canary])
	return err
}

// release rolls the OS release out to the canary group: slot write, a
// simulated reboot (stop the agent, let the simulated bootloader pick the
// slot, start the agent), the trial, and the commit after the health gate.
func (d *demo) release(ctx context.Context) error {
	commit, vars, err := d.rolloutToCanary(ctx, releaseName, releaseVersion, "OS release")
	if err != nil {
		return err
	}
	env := bootenv.NewGRUB(filepath.Join(d.boot, "grubenv"))
	d.say("%s verified and wrote slot b, set the GRUB env for a trial (shoal_slot=%s upgrade_available=%s) and asked to reboot", canary, vars["shoal_slot"], vars["upgrade_available"])

	// The simulated reboot.
	if err := d.stop(d.agents[canary]); err != nil {
		return err
	}
	slot, err := updater.SimulateBoot(env)
	if err != nil {
		return fmt.Errorf("simulated boot: %w", err)
	}
	if err := d.powerOn(ctx, slot, 2); err != nil {
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
	if dl := got[canary].Update.Delta; dl != nil && dl.Mode == updater.ModeDelta {
		d.say("%s installed it from the delta: fetched %s of chunks against %s for the full image (%.0f%% saved); %s came from slot a",
			canary, iec(dl.Fetched), iec(dl.Full), 100*(1-float64(dl.Fetched)/float64(dl.Full)), iec(dl.Seeded))
	} else {
		return fmt.Errorf("%s did not install the release from its delta: %+v", canary, dl)
	}
	if _, err := d.waitAll(ctx, "converge on the release commit", func(_ string, s api.Status) bool {
		return s.State == api.StateConverged && s.Commit.Applied == commit
	}); err != nil {
		return err
	}
	d.releaseCommit, d.canaryUpdate = commit, got[canary].Update
	if err := d.onStep(ctx, "release"); err != nil {
		return err
	}
	return d.failedTrial(ctx)
}

// failedTrial rolls out a release whose kernel never comes up: the canary
// writes slot a and reboots; every trial boot of slot a hangs (the demo does
// not start the agent), so GRUB's boot counter passes the boot limit and it
// falls back to slot b by itself. The agent, up again on slot b, records the
// fallback and marks the release bad; the canary group then goes back to
// the good release.
func (d *demo) failedTrial(ctx context.Context) error {
	if err := d.writeRelease(badName, badVersion); err != nil {
		return err
	}
	commit, vars, err := d.rolloutToCanary(ctx, badName, badVersion, "OS release (whose kernel will hang)")
	if err != nil {
		return err
	}
	target := vars["shoal_slot"]
	d.say("%s wrote %s to slot %s, set a trial with boot_limit=%s and asked to reboot", canary, badVersion, target, vars["bootlimit"])
	if err := d.stop(d.agents[canary]); err != nil {
		return err
	}
	env := bootenv.NewGRUB(filepath.Join(d.boot, "grubenv"))
	hung := 0
	slot := target
	for slot == target {
		if hung > 10 {
			return fmt.Errorf("the simulated bootloader kept booting slot %s after %d hung boots", target, hung)
		}
		if slot, err = updater.SimulateBoot(env); err != nil {
			return fmt.Errorf("simulated boot: %w", err)
		}
		if slot == target {
			hung++
		}
	}
	if hung == 0 {
		return fmt.Errorf("the simulated bootloader did not try slot %s", target)
	}
	if err := d.powerOn(ctx, slot, 3); err != nil {
		return err
	}
	d.say("slot %s hung on each of %d trial boots; GRUB passed its boot limit and fell back to slot %s, where %s came up", target, hung, slot, canary)
	got, err := d.wait(ctx, "record the failed trial", []string{canary}, func(_ string, s api.Status) bool {
		u := s.Update
		return s.Commit.Attempted == commit && u != nil && u.Rollback != nil && u.Version == releaseVersion && u.Slot == slot
	})
	if err != nil {
		return err
	}
	u := got[canary].Update
	d.failedUpdate, d.failedProblem = u, got[canary].Problem
	why := u.Rollback.Message
	if p := got[canary].Problem; p != nil {
		why = p.Reason + ": " + firstLine(p.Message)
	}
	d.say("%s stays on %s in slot %s, update state %q (%s); %s is marked bad and not tried again: %s",
		canary, u.Version, u.Slot, u.State, u.Rollback.Check, badVersion, why)
	if err := d.onStep(ctx, "trial-failed"); err != nil {
		return err
	}

	// Back to the good release, so the canary converges again.
	if err := d.writeFile("groups/canary.yaml", canaryGroup(releaseName)); err != nil {
		return err
	}
	back, err := d.commit(ctx, "canary: back to "+releaseName)
	if err != nil {
		return err
	}
	if err := d.shoal(ctx, "poke", "--group", "canary", "--commit", back); err != nil {
		return err
	}
	if _, err := d.wait(ctx, "converge on "+releaseVersion+" again", []string{canary}, func(_ string, s api.Status) bool {
		return s.State == api.StateConverged && s.Commit.Applied == back && s.Update != nil && s.Update.Version == releaseVersion
	}); err != nil {
		return err
	}
	d.say("canary group back on %s (%s); %s converged", releaseVersion, back[:8], canary)
	return nil
}

// iec writes a byte count for the narration: 12.3 KiB.
func iec(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
