package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/internal/swtpmtest"
)

// TestHubEKRootsFlag runs `shoal hub --ek-roots DIR` (a TPM maker's root
// and intermediate, from swtpm_localca): a TPM that maker certified enrols,
// a TPM with no EK certificate is refused with 403 ek-untrusted. A path
// that holds no CA certificates stops the hub at start, naming it.
func TestHubEKRootsFlag(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "maker.key")
	if err := os.WriteFile(keyFile, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "nope"), "no such file"},
		{keyFile, `"PRIVATE KEY": only certificates belong here`},
	} {
		code, _, errs := (inProcess{}).run(t, nil, "hub", "--listen", freeAddr(t), "--db", "sqlite://"+filepath.Join(t.TempDir(), "hub.db"), "--ek-roots", c.path)
		if code != exitInvalid || !strings.Contains(errs, "--ek-roots") || !strings.Contains(errs, c.path) || !strings.Contains(errs, c.want) {
			t.Fatalf("--ek-roots %s: exit %d, %s; want 1 naming it with %q", c.path, code, errs, c.want)
		}
	}

	maker := swtpmtest.NewEKCA(t)
	certified := swtpmtest.StartCertified(t, maker)
	plain := swtpmtest.Start(t, "")
	roots := t.TempDir()
	maker.CopyCerts(t, roots)
	h := serveHub(t, "--ek-roots", roots)
	enrol := func(id string, sw *swtpmtest.TPM) error {
		ctx := t.Context()
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		tpm, err := attest.DialTCP(dctx, sw.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		a, err := attest.New(ctx, attest.Options{StateDir: t.TempDir(), TPM: tpm})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		const spec = "sha256:f00d"
		if err := a.ExtendApp(ctx, spec, ""); err != nil {
			t.Fatal(err)
		}
		ek := a.Identity()
		_, err = client.Enrol(ctx, "https://"+h.addr, h.token(id), a.Signer(), api.KeyTPM, client.EnrolOptions{
			RootCAs: h.pool,
			EK:      &api.EndorsementKey{Area: ek.EKArea, Public: ek.EKPublic, Cert: ek.EKCert},
			Attest: func(ctx context.Context, nonce []byte) (*api.AttestRequest, error) {
				q, err := a.Quote(ctx, nonce, nil)
				if err != nil {
					return nil, err
				}
				return &api.AttestRequest{APIVersion: api.Version, Nonce: nonce, AKPublic: q.AK, Quote: q.Attest, Signature: q.Signature, PCRs: q.PCRs, SpecHash: spec}, nil
			},
			Activate: func(ctx context.Context, c *api.EnrolChallenge) ([]byte, error) {
				return a.ActivateCredential(ctx, attest.Credential{IDObject: c.IDObject, EncSecret: c.EncSecret})
			},
		})
		return err
	}
	if err := enrol("dev-certified", certified); err != nil {
		t.Fatalf("TPM with a trusted EK certificate: %v", err)
	}
	var ae *api.Error
	if err := enrol("dev-plain", plain); !errors.As(err, &ae) || ae.Status != 403 || ae.Reason != api.ReasonEKUntrusted {
		t.Fatalf("TPM without an EK certificate: %v, want 403 %s", err, api.ReasonEKUntrusted)
	}
	if code := h.stop(); code != 0 {
		t.Fatalf("hub exit %d", code)
	}
}
