package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

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
one-time token from "shoal token create", and stores the client certificate
the hub issues in the state dir. From then on the agent talks to the hub over
mutual TLS and renews the certificate before it expires. The hub is trusted
on first contact through the CA fingerprint "shoal token create" prints, or a
CA certificate file.

A device with a TPM attests while enrolling: it extends PCR 23 with the spec
it last applied and the release it runs, quotes every PCR of the SHA-256 bank
(0-23, so any PCRs the fleet asks of it are covered) over the hub's nonce,
and proves with the hub's credential challenge that its attestation key (AK)
is in the TPM whose endorsement key (EK) it sent. The hub registers the AK;
every later quote must be made with it. A hub with no attestation verifier
enrols the device unattested, and enrol says so. A software key does not
attest at enrolment: the hub registers its AK at its first quote.

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
			log := newAgentLogger(cfg, cmd.ErrOrStderr())
			_, version, err := newUpdater(cfg, log, nil)
			if err != nil {
				return err
			}
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
			d := &device{attester: a, stateDir: cfg.StateDir, version: version, now: deviceClock(cfg, log).Now}
			e, err := enrolDevice(cmd.Context(), d, hub, token, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrolled as %s (%s); certificate valid until %s\n", e.cert.DeviceID, e.how(), e.cert.NotAfter.Format("2006-01-02 15:04 MST"))
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

// device is the opened device identity as enrolment and receipts use it.
type device struct {
	attester *attest.Attester
	stateDir string // the agent's state dir
	// version returns the release version the device runs, as the trust
	// stage claims it; nil means "".
	version func() string
	// now is the daemon's bounded clock, for checking the hub's
	// certificate; nil means the system clock.
	now func() time.Time
}

// key returns the device key and its kind as the hub names it.
func (d *device) key() (crypto.Signer, string) {
	if d.attester.Identity().Kind == attest.KindTPM {
		return d.attester.Signer(), api.KeyTPM
	}
	return d.attester.Signer(), api.KeySoftware
}

// enrolPCRs is the selection an enrolment quote covers: the whole SHA-256
// bank. The hub may hold the quote to the PCRs the fleet lists for the
// device (attestation.pcrs), which it does not know before its first pass;
// a quote covering more is accepted, one covering fewer is not.
var enrolPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}

// withAttestation sets o up for a TPM enrolment: the quote answering the
// hub's nonce, the EK, and the answer to the hub's credential challenge.
func (d *device) withAttestation(o client.EnrolOptions) client.EnrolOptions {
	id := d.attester.Identity()
	o.EK = &api.EndorsementKey{Area: id.EKArea, Public: id.EKPublic, Cert: id.EKCert}
	o.Attest = d.quote
	o.Activate = func(ctx context.Context, c *api.EnrolChallenge) ([]byte, error) {
		return d.attester.ActivateCredential(ctx, attest.Credential{IDObject: c.IDObject, EncSecret: c.EncSecret})
	}
	return o
}

// quote answers the hub's enrolment nonce, claiming the spec the device
// last applied ("" before its first pass) and the release it runs, with
// PCR 23 extended for that claim as the trust stage extends it each pass.
func (d *device) quote(ctx context.Context, nonce []byte) (*api.AttestRequest, error) {
	st, err := agent.ReadState(d.stateDir)
	if err != nil {
		return nil, err
	}
	spec, version := st.Applied.SpecHash, ""
	if d.version != nil {
		version = d.version()
	}
	want := attest.AppPCRValue(spec, version)
	// A pass of the running daemon may extend PCR 23 for its own spec
	// between the extend and the quote here: then extend and quote again.
	for attempt := 0; ; attempt++ {
		if err := d.attester.ExtendApp(ctx, spec, version); err != nil {
			return nil, fmt.Errorf("extend PCR %d: %w", attest.AppPCR, err)
		}
		q, err := d.attester.Quote(ctx, nonce, enrolPCRs)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(q.PCRs[attest.AppPCR], want) || attempt == 2 {
			return &api.AttestRequest{APIVersion: api.Version, Nonce: nonce, AKPublic: q.AK, Quote: q.Attest,
				Signature: q.Signature, PCRs: q.PCRs, SpecHash: spec, ReleaseVersion: version}, nil
		}
	}
}

// enrolment is how an enrolment went.
type enrolment struct {
	cert     *api.Certificate
	kind     string // api.KeyTPM or api.KeySoftware
	attested bool   // the hub verified a quote and that the AK is in the EK's TPM
	noVerify bool   // a TPM device enrolled unattested: the hub has no verifier
}

// how says in a few words how the device enrolled.
func (e *enrolment) how() string {
	switch {
	case e.attested:
		return e.kind + " key, attested, AK bound to EK"
	case e.noVerify:
		return e.kind + " key, not attested: the hub has no attestation verifier"
	case e.kind == api.KeySoftware:
		return e.kind + " key, not attested: no TPM"
	}
	return e.kind + " key, not attested"
}

// enrolDevice enrols with a one-time token, attesting when the device has a
// TPM, and keeps the certificate in the state dir: `shoal-agent enrol` and
// the daemon's queued enrolment share it.
func enrolDevice(ctx context.Context, d *device, hub, token string, o client.EnrolOptions) (*enrolment, error) {
	key, kind := d.key()
	if o.Now == nil {
		o.Now = d.now
	}
	if kind == api.KeyTPM {
		o = d.withAttestation(o)
	}
	return enrol(ctx, d.stateDir, hub, token, key, kind, o)
}

// enrol sends the enrolment o describes and keeps the certificate in
// stateDir. When the hub answers an attestation with 501 (it has no
// verifier), it enrols again without one: the token is used only by an
// enrolment that succeeds. Any other refusal is returned as it is.
func enrol(ctx context.Context, stateDir, hub, token string, key crypto.Signer, kind string, o client.EnrolOptions) (*enrolment, error) {
	e := &enrolment{kind: kind, attested: o.Attest != nil}
	cert, err := client.Enrol(ctx, hub, token, key, kind, o)
	var ae *api.Error
	if o.Attest != nil && errors.As(err, &ae) && ae.Status == http.StatusNotImplemented && ae.Reason == api.ReasonUnavailable {
		o.Attest, o.EK, o.Activate = nil, nil, nil
		e.attested, e.noVerify = false, true
		cert, err = client.Enrol(ctx, hub, token, key, kind, o)
	}
	if err != nil {
		return nil, err
	}
	if err := writeCertificate(stateDir, cert); err != nil {
		return nil, err
	}
	e.cert = cert
	return e, nil
}
