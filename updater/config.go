package updater

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/shoalfleet/shoal/updater/bootenv"
)

// Config is the updater's section of the device config: where the slots and
// the bootloader env are and which keys sign releases. Trust roots come from
// here, never from the fleet repo the device is asked to trust.
type Config struct {
	SlotA          string `json:"slot_a"`                    // block device or file of slot a
	SlotB          string `json:"slot_b"`                    // block device or file of slot b
	Bootloader     string `json:"bootloader"`                // uboot | grub
	FwEnvConfig    string `json:"fw_env_config,omitempty"`   // U-Boot: default /etc/fw_env.config
	GRUBEnv        string `json:"grub_env,omitempty"`        // GRUB: default /boot/grub/grubenv
	TrustRoots     string `json:"trust_roots"`               // PEM file of ed25519 / ECDSA P-256 public keys
	RunningVersion string `json:"running_version,omitempty"` // default: VERSION_ID of /etc/os-release
	// RebootCommand replaces `systemctl reboot` (argv; e.g. a simulated device's boot script).
	RebootCommand []string `json:"reboot_command,omitempty"`
	// BootedSlotFile and BootIDFile, when set, are read instead of the kernel's
	// shoal.slot= and boot_id: for simulated devices, whose "bootloader" writes them.
	BootedSlotFile string `json:"booted_slot_file,omitempty"`
	BootIDFile     string `json:"boot_id_file,omitempty"`
	// ChunkStores are tried for a delta release's chunks before the
	// release's own store: directories or http(s) URLs of casync stores.
	ChunkStores []string `json:"chunk_stores,omitempty"`
}

// Options turns c into Options with the real device's reboot, boot ID and
// booted slot; the caller adds Logger, Now, Progress and the like.
func (c Config) Options(stateDir string) (Options, error) {
	o := Options{StateDir: stateDir, Slots: map[string]string{SlotA: c.SlotA, SlotB: c.SlotB}, RunningVersion: c.RunningVersion,
		ChunkStores: c.ChunkStores}
	switch c.Bootloader {
	case "uboot":
		path := c.FwEnvConfig
		if path == "" {
			path = "/etc/fw_env.config"
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return o, fmt.Errorf("updater config: %w", err)
		}
		cfg, err := bootenv.ParseFwEnvConfig(bytes.NewReader(b))
		if err != nil {
			return o, fmt.Errorf("updater config %s: %w", path, err)
		}
		cfg.LockPath = "/var/lock/fw_printenv.lock" // the lock fw_setenv takes
		env, err := bootenv.NewUBoot(cfg)
		if err != nil {
			return o, fmt.Errorf("updater config: %w", err)
		}
		o.Env, o.UBoot = env, true
	case "grub":
		path := c.GRUBEnv
		if path == "" {
			path = "/boot/grub/grubenv"
		}
		o.Env = bootenv.NewGRUB(path)
	default:
		return o, fmt.Errorf("updater config: bootloader %q: want uboot or grub", c.Bootloader)
	}
	if c.TrustRoots == "" {
		return o, fmt.Errorf("updater config: no trust_roots file: releases cannot be verified")
	}
	pemData, err := os.ReadFile(c.TrustRoots)
	if err != nil {
		return o, fmt.Errorf("updater config: %w", err)
	}
	if o.TrustRoots, err = ParseTrustRoots(pemData); err != nil {
		return o, fmt.Errorf("updater config %s: %w", c.TrustRoots, err)
	}
	if o.RunningVersion == "" {
		o.RunningVersion = osReleaseVersion("/etc/os-release")
	}
	if len(c.RebootCommand) > 0 {
		o.Rebooter = CommandReboot(c.RebootCommand)
	}
	if c.BootedSlotFile != "" {
		o.BootedSlot = func() (string, error) {
			s, err := readTrimmed(c.BootedSlotFile)
			if err == nil && s != SlotA && s != SlotB {
				err = fmt.Errorf("booted slot file %s: %q is not a or b", c.BootedSlotFile, s)
			}
			return s, err
		}
	}
	if c.BootIDFile != "" {
		o.BootID = func() (string, error) { return readTrimmed(c.BootIDFile) }
	}
	return o, nil
}

// osReleaseVersion reads VERSION_ID from an os-release file; "" when absent.
func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func osReleaseVersion(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VERSION_ID="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}
