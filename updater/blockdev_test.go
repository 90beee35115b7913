package updater

import (
	"bytes"
	"context"
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

// loopDevice attaches a fresh backing file of size bytes to a loop block
// device and detaches it when the test ends.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	losetup := testenv.LookPath(t, "losetup", "mount")
	backing := filepath.Join(t.TempDir(), "backing.img")
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.CommandContext(context.Background(), losetup, "--find", "--show", backing).CombinedOutput()
	if err != nil {
		testenv.Missing(t, "a loop block device ("+strings.TrimSpace(string(out))+")", "run as root with /dev/loop-control available")
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.CommandContext(context.Background(), losetup, "-d", dev).Run() })
	return dev
}

// TestBlockDeviceSlots runs an update with both slots and a redundant U-Boot
// env on real block devices (loop devices), read back by fw_printenv.
func TestBlockDeviceSlots(t *testing.T) {
	ctx := context.Background()
	d := newDevice(t, "uboot")
	slotA, slotB, envDev := loopDevice(t, 8<<20), loopDevice(t, 8<<20), loopDevice(t, 1<<20)
	if err := os.WriteFile(slotA, d.known[0], 0); err != nil {
		t.Fatal(err)
	}
	d.slots = map[string]string{SlotA: slotA, SlotB: slotB}
	cfg := bootenv.UBootConfig{Copies: []bootenv.Location{{Device: envDev, Offset: 0x10000, Size: 0x4000}, {Device: envDev, Offset: 0x20000, Size: 0x4000}}}
	writeFile(t, d.cfgPath, []byte(cfg.String()))
	env, err := bootenv.NewUBoot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.env, d.envPath = env, envDev
	if err := env.Save(map[string]string{VarSlot: SlotA}); err != nil {
		t.Fatal(err)
	}
	u := d.updater()
	img := randBytes(t, 3<<20+512)
	rel := d.release("1.1.0", img)
	pol := spec.UpdatePolicy{TrialTimeout: spec.Duration(time.Minute)}
	if st, err := u.Step(ctx, rel, pol, pass); err != nil || st.Phase != PhaseRebooting {
		t.Fatalf("install onto a block device: %+v, %v", st, err)
	}
	if got := d.toolGet(VarSlot); got != SlotB {
		t.Fatalf("fw_printenv on the block device reads shoal_slot=%q", got)
	}
	d.boot()
	if st, err := u.Step(ctx, rel, pol, pass); err != nil || st.Phase != PhaseCommitted || d.booted != SlotB {
		t.Fatalf("commit: %+v, %v, booted %s", st, err, d.booted)
	}
	got := make([]byte, len(img))
	f, err := os.Open(slotB)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("slot b block device does not hold the image: %v", err)
	}
}
