package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/docker/docker/client"
	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/provision"
	"github.com/shoalfleet/shoal/spec"
)

// newProvisionApplyCmd is `shoal-agent provision apply PATH`: apply an
// offline bundle (or every bundle on a mounted stick) to this device.
func newProvisionApplyCmd() *cobra.Command {
	var (
		uf        updateFlags
		deviceID  string
		keyFiles  []string
		tpmPath   string
		noDocker  bool
		noReceipt bool
		pcrs      []int
	)
	apply := &cobra.Command{
		Use:   "apply PATH",
		Short: "Apply a bundle file, or every bundle for this device in a directory (a mounted stick)",
		Long: `apply verifies a bundle (signature, every member's sha256, git history,
replay) while streaming it into a temp area of the state dir, and only then
imports the fleet repo, loads the images into the Docker Engine, writes the
device config and trust roots (first provisioning, or signed by the device's
current bundle key) and queues enrolment. With --slot-a/--slot-b set, an OS
release in the bundle is installed through the updater, which checks its
signature itself.

A signed receipt (device key; TPM quote over the bundle hash when there is a
TPM) is written next to each bundle, for ` + "`shoal receipts import`" + `.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{errors.New("apply takes one PATH")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			o := provision.ApplyOptions{StateDir: uf.stateDir, DeviceID: deviceID, NoReceipt: noReceipt, Logger: log}
			for _, f := range keyFiles {
				ks, err := provision.ReadPublicKeys(f)
				if err != nil {
					return err
				}
				o.BundleKeys = append(o.BundleKeys, ks...)
			}
			if !noDocker {
				cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
				if err != nil {
					return fmt.Errorf("docker: %w", err)
				}
				defer cli.Close()
				o.Images = cli
			}
			if !noReceipt {
				a, err := attest.New(ctx, attest.Options{StateDir: filepath.Join(uf.stateDir, "attest"), DevicePath: tpmPath, AllowSoftware: true, Logger: log})
				if err != nil {
					return fmt.Errorf("device key for receipts: %w", err)
				}
				defer a.Close()
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
			if uf.cfg.SlotA != "" {
				o.InstallRelease = func(ctx context.Context, rel *spec.Release) error {
					// Trust roots a first provisioning just wrote serve
					// unless the flag names others.
					if !cmd.Flags().Changed("trust-roots") {
						if p := provision.Trust(uf.stateDir).ReleaseKeys; fileExists(p) {
							uf.cfg.TrustRoots = p
						}
					}
					u, err := uf.updater(cmd, true)
					if err != nil {
						return err
					}
					_, err = u.Install(ctx, rel, spec.UpdatePolicy{BootLimit: 3})
					return err
				}
			}
			rs, err := provision.ApplyPath(ctx, args[0], o)
			for _, r := range rs {
				if r == nil {
					continue
				}
				if r.Err != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "device %s: refused (%s), still at commit %s; receipt %s\n",
						r.DeviceID, provision.Reason(r.Err), r.Commit, r.Receipt)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "device %s: applied commit %s release %q images %d first %t; receipt %s\n",
					r.DeviceID, r.Commit, r.Release, len(r.Images), r.First, r.Receipt)
			}
			if len(rs) == 0 && err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "no new bundle for this device in %s\n", args[0])
			}
			return err
		},
	}
	uf.bind(apply)
	f := apply.Flags()
	f.StringVar(&deviceID, "device", "", "this device's ID (default: the provisioned one, else the hardware serial)")
	f.StringSliceVar(&keyFiles, "bundle-key", nil, "bundle public key (PEM) trusted for the first provisioning (default: the bundle's own)")
	f.StringVar(&tpmPath, "tpm", attest.DefaultDevice, "TPM device for the receipt key and quote (software key when absent)")
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
