package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
)

func newEnrolCmd() *cobra.Command {
	var hub, token, fingerprint, caFile string
	cmd := &cobra.Command{
		Use:   "enrol --hub URL --token TOKEN (--ca-fingerprint HEX | --ca FILE)",
		Short: "Enrol this device with the hub using a one-time token",
		Long: `enrol sends the hub a certificate request signed by this device's key (in the
TPM, or a software key flagged as weaker where there is none) with the
one-time token from "shoal token create", attesting when there is a TPM, and
stores the client certificate the hub issues in the state dir. From then on
the agent talks to the hub over mutual TLS and renews the certificate
before it expires. The hub is trusted on first contact through the CA
fingerprint "shoal token create" prints, or a CA certificate file.

The config's hub_url must name the same hub for the agent to use it.

Exit codes: 0 enrolled, 1 refused or unreachable, 2 usage error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if hub == "" || token == "" || (fingerprint == "" && caFile == "") {
				return usageError{errors.New("--hub, --token and one of --ca-fingerprint or --ca are required")}
			}
			cfg, err := agent.LoadConfig(configFlag(cmd))
			if err != nil {
				return err
			}
			log := newAgentLogger(cfg, cmd.ErrOrStderr())
			a, tpm, err := openAttester(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			defer func() {
				a.Close()
				if tpm != nil {
					tpm.Close()
				}
			}()
			o := client.EnrolOptions{CAFingerprint: fingerprint}
			if caFile != "" {
				pem, err := os.ReadFile(caFile)
				if err != nil {
					return err
				}
				o.RootCAs = x509.NewCertPool()
				if !o.RootCAs.AppendCertsFromPEM(pem) {
					return fmt.Errorf("%s: no PEM certificate", caFile)
				}
			}
			kind := api.KeySoftware
			if id := a.Identity(); id.Kind == attest.KindTPM {
				kind = api.KeyTPM
			}
			cert, err := enrolDevice(cmd.Context(), cfg.StateDir, hub, token, a.Signer(), kind, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrolled as %s (%s key); certificate valid until %s\n", cert.DeviceID, kind, cert.NotAfter.Format("2006-01-02 15:04 MST"))
			if cfg.HubURL != hub {
				fmt.Fprintf(cmd.OutOrStdout(), "set hub_url: %s in %s so the agent reports there\n", hub, configFlag(cmd))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&hub, "hub", "", "the hub's base URL, e.g. https://hub.example:8443")
	cmd.Flags().StringVar(&token, "token", "", "the one-time enrolment token")
	cmd.Flags().StringVar(&fingerprint, "ca-fingerprint", "", "hex sha256 of the hub CA certificate (printed by shoal token create)")
	cmd.Flags().StringVar(&caFile, "ca", "", "the hub CA certificate (PEM), instead of --ca-fingerprint")
	return cmd
}

// enrolDevice enrols with a one-time token and keeps the certificate in the
// state dir: `shoal-agent enrol` and the daemon's queued enrolment share it.
func enrolDevice(ctx context.Context, stateDir, hub, token string, key crypto.Signer, kind string, o client.EnrolOptions) (*api.Certificate, error) {
	cert, err := client.Enrol(ctx, hub, token, key, kind, o)
	if err != nil {
		return nil, err
	}
	if err := writeCertificate(stateDir, cert); err != nil {
		return nil, err
	}
	return cert, nil
}
