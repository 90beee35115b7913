package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/docker/docker/client"
	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/provision"
	"github.com/shoalfleet/shoal/spec"
)

// newProvisionApplyCmd is `shoal-agent provision apply PATH`: apply an
// offline bundle (or every bundle on a mounted stick) to this device.
func newProvisionApplyCmd() *cobra.Command {
	var (
		uf         updateFlags
		deviceID   string
		keyFiles   []string
		tpmPath    string
		noDocker   bool
		noReceipt  bool
		trustFirst bool
		pcrs       []int
	)
	apply := &cobra.Command{
		Use:   "apply PATH",
		Short: "Apply a bundle file, or every bundle for this device in a directory (a mounted stick)",
		Long: `apply verifies a bundle (signature, every member's sha256, git history,
replay) while streaming it into a temp area of the state dir, and only then
imports the fleet repo, loads the images into the Docker Engine, writes the
device config and trust roots (first provisioning, or signed by the device's
current bundle key) and queues enrolment. An OS release in the bundle is
installed through the updater when the device has A/B updates configured,
which checks its signature itself.

It reads the agent config (--config) as the daemon does: state_dir,
device_id, trust.tpm and trust.allow_software, provision.bundle_keys and
provision.no_receipt, update.*; a flag overrides one setting. A bundle is
trusted only if signed by a key of provision.bundle_keys (or --bundle-key),
or, once provisioned, by the bundle keys the device holds; a device with none
refuses every bundle and writes nothing, unless provision.trust_first_bundle
(or --trust-first-bundle) trusts the first bundle's own key.

A signed receipt (device key; TPM quote over the bundle hash when the key is
in the TPM) is written next to each bundle, for ` + "`shoal receipts import`" + `.
The receipt key is the daemon's: where trust.allow_software is false and
the TPM cannot be opened, nothing is applied.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{errors.New("apply takes one PATH")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			cfg, err := agent.LoadConfig(configFlag(cmd))
			if err != nil {
				return err
			}
			fl := cmd.Flags()
			if fl.Changed("state-dir") {
				cfg.StateDir = uf.stateDir
			}
			if fl.Changed("tpm") {
				cfg.Trust.TPM = tpmPath
			}
			if !fl.Changed("device") {
				deviceID = cfg.DeviceID
			}
			o := provision.ApplyOptions{
				StateDir: cfg.StateDir, DeviceID: deviceID, Logger: log,
				NoReceipt:        noReceipt || cfg.Provision.NoReceipt,
				TrustFirstBundle: trustFirst || cfg.Provision.TrustFirstBundle,
			}
			if cfg.Provision.BundleKeys != "" {
				keyFiles = append([]string{cfg.Provision.BundleKeys}, keyFiles...)
			}
			for _, f := range keyFiles {
				ks, err := provision.ReadPublicKeys(f)
				if err != nil {
					return err
				}
				o.BundleKeys = append(o.BundleKeys, ks...)
			}
			if !noDocker && cfg.Containers.Enabled {
				cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
				if err != nil {
					return fmt.Errorf("docker: %w", err)
				}
				defer cli.Close()
				o.Images = cli
			}
			if !o.NoReceipt {
				// The device key as the daemon opens it: the TPM the config
				// names (a path, tcp:HOST:PORT, none), software only where
				// trust.allow_software says so. The receipt is never weaker
				// than the device's policy.
				a, tpm, err := openAttester(ctx, cfg, log)
				if err != nil {
					return fmt.Errorf("device key for receipts (trust.tpm %q): %w", cfg.Trust.TPM, err)
				}
				defer func() {
					a.Close()
					if tpm != nil {
						tpm.Close()
					}
				}()
				o.Signer, o.KeyKind = a.Signer(), a.Identity().Kind
				if o.KeyKind == attest.KindTPM {
					o.Quote = func(ctx context.Context, nonce []byte) (json.RawMessage, error) {
						q, err := a.Quote(ctx, nonce, pcrs)
						if err != nil {
							return nil, err
						}
						return json.Marshal(q)
					}
				}
			}
			o.InstallRelease = func(ctx context.Context, rel *spec.Release) error {
				// Trust roots a first provisioning just wrote serve unless
				// the config or a flag names others.
				if cfg.Update.TrustRoots == "" && !fl.Changed("trust-roots") {
					if p := provision.Trust(cfg.StateDir).ReleaseKeys; fileExists(p) {
						_ = fl.Set("trust-roots", p)
					}
				}
				u, err := uf.updater(cmd, true)
				if err != nil {
					return err
				}
				_, err = u.Install(ctx, rel, spec.UpdatePolicy{BootLimit: 3})
				return err
			}
			rs, err := provision.ApplyPath(ctx, args[0], o)
			for _, r := range rs {
				if r == nil {
					continue
				}
				if r.Err != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "device %s: refused (%s), still at commit %s; receipt %s\n",
						r.DeviceID, provision.Reason(r.Err), orNone(r.Commit), orNone(r.Receipt))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "device %s: applied commit %s release %q images %d first %t; receipt %s\n",
					r.DeviceID, r.Commit, r.Release, len(r.Images), r.First, orNone(r.Receipt))
			}
			if len(rs) == 0 && err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "no new bundle for this device in %s\n", args[0])
			}
			return err
		},
	}
	uf.bind(apply)
	f := apply.Flags()
	f.StringVar(&deviceID, "device", "", "this device's ID (default: the config's device_id)")
	f.StringSliceVar(&keyFiles, "bundle-key", nil, "bundle public key (PEM) trusted for the first provisioning, besides the config's provision.bundle_keys")
	f.BoolVar(&trustFirst, "trust-first-bundle", false, "with no bundle key, trust the first bundle's own key (trust on first use)")
	f.StringVar(&tpmPath, "tpm", "", "TPM for the receipt key and quote: a device path, tcp:HOST:PORT or none (default: the config's trust.tpm)")
	f.IntSliceVar(&pcrs, "pcrs", []int{0, 2, 4, 7}, "PCRs the receipt's quote covers")
	f.BoolVar(&noDocker, "no-docker", false, "leave image tars in the state dir instead of loading them")
	f.BoolVar(&noReceipt, "no-receipt", false, "write no receipt (a read-only stick)")
	cmd := &cobra.Command{Use: "provision", Short: "Offline bundles from a USB stick"}
	cmd.AddCommand(apply)
	return cmd
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
