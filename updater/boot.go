package updater

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/shoalfleet/shoal/updater/bootenv"
)

// Bootloader environment variables shared with the scripts in deploy/uboot
// and deploy/grub. U-Boot's bootcount feature (CONFIG_BOOTCOUNT_LIMIT with
// CONFIG_BOOTCOUNT_ENV) owns upgrade_available, bootcount, bootlimit and
// altbootcmd; the GRUB snippet implements the same rules.
const (
	VarSlot      = "shoal_slot"        // the slot to boot: a or b
	VarPrev      = "shoal_prev"        // the slot to fall back to
	VarTry       = "shoal_try"         // slot:sha256-prefix of the release on trial
	VarUpgrade   = "upgrade_available" // 1 while a trial is running
	VarCount     = "bootcount"         // boots of the trial so far
	VarLimit     = "bootlimit"         // boots allowed before falling back
	VarAltBoot   = "altbootcmd"        // U-Boot: what runs once bootcount > bootlimit
	altBootUBoot = "setenv " + VarSlot + " ${" + VarPrev + "}; setenv " + VarUpgrade + " 0; setenv " + VarCount + " 0; saveenv; run bootcmd"
)

// Slot names.
const (
	SlotA = "a"
	SlotB = "b"
)

func otherSlot(s string) string {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// Rebooter restarts the device. The real one asks systemd; tests simulate a boot.
type Rebooter interface {
	Reboot(ctx context.Context) error
}

// SystemdReboot reboots through systemd (systemctl reboot), so services stop cleanly.
type SystemdReboot struct{}

// Reboot asks systemd to reboot; it returns once the request is queued.
func (SystemdReboot) Reboot(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "systemctl", "reboot").CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl reboot: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// CommandReboot runs a command (argv) to reboot, e.g. a simulated device's boot script.
type CommandReboot []string

// Reboot runs the command and returns once it has exited.
func (c CommandReboot) Reboot(ctx context.Context) error {
	if len(c) == 0 {
		return fmt.Errorf("reboot: empty command")
	}
	out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("reboot command %s: %w: %s", c[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// BootIDFromKernel reads this boot's random ID from /proc.
func BootIDFromKernel() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// BootedSlotFromCmdline reads the slot the bootloader started from the kernel
// command line (shoal.slot=a|b, which the deploy/ scripts pass).
func BootedSlotFromCmdline() (string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", fmt.Errorf("booted slot: %w", err)
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, "shoal.slot="); ok && (v == SlotA || v == SlotB) {
			return v, nil
		}
	}
	return "", fmt.Errorf("booted slot: no shoal.slot=a|b on the kernel command line")
}

// SimulateBoot does to env what the bootloader does at power-on, following the
// rules deploy/uboot/boot.cmd (with U-Boot's bootcount) and deploy/grub/shoal.cfg
// implement, and returns the slot it boots. While upgrade_available=1 every
// boot counts; once bootcount passes bootlimit the bootloader falls back to
// shoal_prev and ends the trial. The count and the fallback are one env write,
// as saveenv and save_env make them.
func SimulateBoot(env bootenv.Env) (string, error) {
	vars, err := env.Load()
	if err != nil {
		return "", fmt.Errorf("simulated boot: %w", err)
	}
	if vars[VarUpgrade] == "1" {
		n, _ := strconv.Atoi(vars[VarCount])
		limit, err := strconv.Atoi(vars[VarLimit])
		if err != nil || limit < 1 {
			limit = 1
		}
		n++
		if n > limit {
			vars[VarSlot] = vars[VarPrev]
			vars[VarUpgrade] = "0"
			n = 0
		}
		vars[VarCount] = strconv.Itoa(n)
		if err := env.Save(vars); err != nil {
			return "", fmt.Errorf("simulated boot: %w", err)
		}
	}
	slot := vars[VarSlot]
	if slot != SlotB {
		slot = SlotA // both scripts boot slot a when the variable is unset
	}
	return slot, nil
}
