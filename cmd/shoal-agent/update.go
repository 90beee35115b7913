package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// updateFlags override the config's update settings for one command. Every
// field starts from the agent config (--config), as the daemon reads it.
type updateFlags struct {
	stateDir string
	cfg      updater.Config
	booted   string
	noReboot bool
	json     bool
}

func (f *updateFlags) bind(cmd *cobra.Command) {
	p := cmd.PersistentFlags()
	p.StringVar(&f.stateDir, "state-dir", "", "agent state directory (default: the config's state_dir; update state lives in its update/)")
	p.StringVar(&f.cfg.SlotA, "slot-a", "", "block device or file of slot a (default: the config's update.slot_a)")
	p.StringVar(&f.cfg.SlotB, "slot-b", "", "block device or file of slot b (default: the config's update.slot_b)")
	p.StringVar(&f.cfg.Bootloader, "bootloader", "", "bootloader env to drive: uboot or grub (default: the config's update.bootloader)")
	p.StringVar(&f.cfg.FwEnvConfig, "fw-env-config", "", "U-Boot env locations, as fw_printenv -c takes them (default: the config's update.fw_env_config)")
	p.StringVar(&f.cfg.GRUBEnv, "grub-env", "", "GRUB environment block (default: the config's update.grub_env)")
	p.StringVar(&f.cfg.TrustRoots, "trust-roots", "", "PEM public keys (ed25519, ECDSA P-256) releases must be signed by (default: the config's update.trust_roots)")
	p.StringVar(&f.cfg.RunningVersion, "running-version", "", "version of the running OS (default: the config's, else VERSION_ID of /etc/os-release)")
	p.StringVar(&f.booted, "booted-slot", "", "slot the running system booted from (default: shoal.slot= on the kernel command line)")
	p.StringArrayVar(&f.cfg.ChunkStores, "chunk-store", nil, "casync chunk store (directory or http(s) URL) tried for a delta release's chunks before its own; repeatable")
}

// errNoUpdates is returned when the device has no A/B updates configured.
type errNoUpdates struct{ config string }

func (e errNoUpdates) Error() string {
	return fmt.Sprintf("A/B OS updates are not configured on this device: set update.bootloader, update.slot_a, update.slot_b and update.trust_roots in %s (shoal-agent config --defaults documents them)", e.config)
}

// settings returns the update config and the updater's state dir: the agent
// config's, with the flags the command line set over it.
func (f *updateFlags) settings(cmd *cobra.Command) (updater.Config, string, error) {
	cfg, err := agent.LoadConfig(configFlag(cmd))
	if err != nil {
		return updater.Config{}, "", err
	}
	u, stateDir := cfg.Update, cfg.StateDir
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		}
	}
	set("state-dir", &stateDir, f.stateDir)
	set("slot-a", &u.SlotA, f.cfg.SlotA)
	set("slot-b", &u.SlotB, f.cfg.SlotB)
	set("bootloader", &u.Bootloader, f.cfg.Bootloader)
	set("fw-env-config", &u.FwEnvConfig, f.cfg.FwEnvConfig)
	set("grub-env", &u.GRUBEnv, f.cfg.GRUBEnv)
	set("trust-roots", &u.TrustRoots, f.cfg.TrustRoots)
	set("running-version", &u.RunningVersion, f.cfg.RunningVersion)
	if u.Bootloader == "" {
		return u, "", errNoUpdates{configFlag(cmd)}
	}
	// The daemon keeps the update state machine in the state dir's update/.
	return u, filepath.Join(stateDir, "update"), nil
}

func (f *updateFlags) updater(cmd *cobra.Command, progress bool) (*updater.Updater, error) {
	c, stateDir, err := f.settings(cmd)
	if err != nil {
		return nil, err
	}
	o, err := c.Options(stateDir)
	if err != nil {
		return nil, err
	}
	if f.booted != "" {
		if f.booted != updater.SlotA && f.booted != updater.SlotB {
			return nil, usageError{fmt.Errorf("--booted-slot %q: want a or b", f.booted)}
		}
		o.BootedSlot = func() (string, error) { return f.booted, nil }
	}
	if f.noReboot {
		o.Rebooter = announceReboot{cmd.ErrOrStderr()}
	}
	if progress && term.IsTerminal(int(os.Stderr.Fd())) {
		o.Progress = os.Stderr
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return updater.New(o)
}

// announceReboot leaves the reboot to the operator.
type announceReboot struct{ w io.Writer }

func (a announceReboot) Reboot(context.Context) error {
	fmt.Fprintln(a.w, "bootloader env set; reboot when ready (--no-reboot given)")
	return nil
}

// newUpdateCmd is `shoal-agent update`: status, manual install, commit and
// rollback of the A/B OS update.
func newUpdateCmd() *cobra.Command {
	var f updateFlags
	cmd := &cobra.Command{
		Use:   "update",
		Short: "A/B OS update: status, manual install, commit, rollback",
		Long: `update inspects and drives the A/B OS update state machine:

  idle → downloading → installed → rebooting → trial → committed | rolled-back

The agent runs it on every pass; these subcommands are for a person at the
device. They read the agent config (--config) as the daemon does; a flag
overrides one setting for one command. On a device with no A/B updates
configured (no update.bootloader), status says so and exits 0, and the other
subcommands fail saying so. A manual install makes the same checks as the agent (signature against
the trust roots, anti-rollback, releases that failed before) but ignores
update windows and holds.`,
	}
	f.bind(cmd)
	cmd.AddCommand(newUpdateStatusCmd(&f), newUpdateInstallCmd(&f), newUpdateCommitCmd(&f), newUpdateRollbackCmd(&f))
	return cmd
}

func newUpdateStatusCmd(f *updateFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the update state machine, slots and the last failure",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := f.updater(cmd, false)
			var off errNoUpdates
			if errors.As(err, &off) {
				if f.json {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{"configured": false, "message": off.Error()})
				}
				fmt.Fprintln(cmd.OutOrStdout(), off.Error())
				return nil
			}
			if err != nil {
				return err
			}
			st, err := u.Status(cmd.Context())
			if err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), st, f.json)
		},
	}
	cmd.Flags().BoolVar(&f.json, "json", false, "print the status as JSON")
	return cmd
}

func newUpdateInstallCmd(f *updateFlags) *cobra.Command {
	var relPath string
	var pol spec.UpdatePolicy
	cmd := &cobra.Command{
		Use:   "install FILE|URL",
		Short: "Install a signed release image into the inactive slot and reboot into a trial",
		Long: `install streams FILE or URL (http, https, file; raw, gzip or zstd) into the
inactive slot, verifies it, sets the bootloader env to try it and reboots.

A release with a delta (a casync chunk index and store) is assembled from the
running slot and the chunks it lacks instead, each chunk checked; the plan,
bytes to fetch against the full image, is printed with the status.

The release metadata (version, size, sha256, signature; JSON as in a rendered
device spec) comes from --release, by default FILE.release.json.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{errors.New("install takes one FILE or URL")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			src := args[0]
			if relPath == "" {
				if strings.Contains(src, "://") && !strings.HasPrefix(src, "file://") {
					return usageError{errors.New("installing from a URL needs --release")}
				}
				relPath = strings.TrimPrefix(src, "file://") + ".release.json"
			}
			b, err := os.ReadFile(relPath)
			if err != nil {
				return fmt.Errorf("release metadata: %w", err)
			}
			var rel spec.Release
			if err := json.Unmarshal(b, &rel); err != nil {
				return fmt.Errorf("release metadata %s: %w", relPath, err)
			}
			rel.URL = src
			u, err := f.updater(cmd, true)
			if err != nil {
				return err
			}
			st, err := u.Install(cmd.Context(), &rel, pol)
			if perr := printStatus(cmd.OutOrStdout(), st, false); perr != nil && err == nil {
				err = perr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&relPath, "release", "", "release metadata JSON (default FILE.release.json)")
	cmd.Flags().BoolVar(&pol.AllowDowngrade, "allow-downgrade", false, "install a release older than the committed one")
	cmd.Flags().IntVar(&pol.BootLimit, "boot-limit", 3, "trial boots before the bootloader falls back (1-9)")
	cmd.Flags().BoolVar(&f.noReboot, "no-reboot", false, "set the env but leave the reboot to the operator")
	return cmd
}

func newUpdateCommitCmd(f *updateFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "commit",
		Short: "End the running trial as passed: the new slot becomes the default",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := f.updater(cmd, false)
			if err != nil {
				return err
			}
			st, err := u.Commit(cmd.Context())
			if err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), st, false)
		},
	}
}

func newUpdateRollbackCmd(f *updateFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "End the running trial as failed and reboot into the previous slot, or cancel a pending install",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := f.updater(cmd, false)
			if err != nil {
				return err
			}
			st, err := u.Rollback(cmd.Context())
			if err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), st, false)
		},
	}
	cmd.Flags().BoolVar(&f.noReboot, "no-reboot", false, "set the env but leave the reboot to the operator")
	return cmd
}

func printStatus(w io.Writer, st updater.Status, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	ref := func(r *updater.ReleaseRef) string {
		if r == nil {
			return "-"
		}
		v := r.Version
		if v == "" {
			v = "(unknown version)"
		}
		return fmt.Sprintf("%s in slot %s", v, r.Slot)
	}
	fmt.Fprintf(w, "phase:       %s\n", st.Phase)
	fmt.Fprintf(w, "booted slot: %s\n", st.BootedSlot)
	fmt.Fprintf(w, "committed:   %s\n", ref(st.Committed))
	if st.Target != nil {
		fmt.Fprintf(w, "target:      %s\n", ref(st.Target))
	}
	if p := st.Progress; p != nil && p.Total > 0 {
		fmt.Fprintf(w, "progress:    %d of %d bytes (%.0f%%)\n", p.Bytes, p.Total, 100*float64(p.Bytes)/float64(p.Total))
	}
	if st.Delta != nil {
		fmt.Fprintf(w, "download:    %s\n", st.Delta.Summary())
	}
	if st.Waiting != "" {
		fmt.Fprintf(w, "waiting:     %s\n", st.Waiting)
	}
	if !st.NextWindow.IsZero() {
		fmt.Fprintf(w, "next window: %s\n", st.NextWindow.Format(time.RFC3339))
	}
	if st.Reason != "" && st.Reason != st.Waiting {
		fmt.Fprintf(w, "reason:      %s\n", st.Reason)
	}
	if st.Message != "" {
		fmt.Fprintf(w, "message:     %s\n", st.Message)
	}
	for sha, why := range st.Bad {
		fmt.Fprintf(w, "bad release: %s: %s\n", sha[:min(12, len(sha))], why)
	}
	return nil
}
