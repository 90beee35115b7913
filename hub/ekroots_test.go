package hub

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/swtpmtest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// certifiedAttester is tpmAttester on a swtpm manufactured by ca.
func certifiedAttester(t *testing.T, ca *swtpmtest.EKCA) *attest.Attester {
	t.Helper()
	return tpmAttester(t, dialSwtpm(t, swtpmtest.StartCertified(t, ca)), ekSpec, ekVersion)
}

// The spec and release the TPMs of these tests attest to.
const ekSpec, ekVersion = "sha256:1111", "2026.11.0"

// enrolTPM enrols a through the challenge with tok, sending ek (nil: a's own).
func enrolTPM(t *testing.T, th *testHub, tok string, a *attest.Attester, ek *api.EndorsementKey) (*api.Certificate, error) {
	eo := tpmEnrolOptions(a, a)
	if ek != nil {
		eo.EK = ek
	}
	eo.CAFingerprint = th.CAFingerprint()
	eo.Attest = func(ctx context.Context, nonce []byte) (*api.AttestRequest, error) {
		q, err := a.Quote(ctx, nonce, []int{0, 7})
		if err != nil {
			return nil, err
		}
		return quoteRequest(q, nonce, ekSpec, ekVersion), nil
	}
	return client.Enrol(t.Context(), th.URL, tok, a.Signer(), api.KeyTPM, eo)
}

// TestEnrolEKRoots runs TPM enrolments (swtpm, real hub over TLS, the real
// verifier) against a hub that trusts one TPM maker's CA (swtpm_localca: a
// root and the intermediate that signs EK certificates). A TPM it certified
// enrols; a TPM with no EK certificate, one certified by another maker, and
// one sending another TPM's (valid) certificate are refused with 403
// ek-untrusted, counted, and nothing is written: the device is not enrolled
// and its token still enrols it once it has a trusted TPM.
func TestEnrolEKRoots(t *testing.T) {
	ctx := t.Context()
	maker, otherMaker := swtpmtest.NewEKCA(t), swtpmtest.NewEKCA(t)
	good := certifiedAttester(t, maker)
	good2 := certifiedAttester(t, maker)
	foreign := certifiedAttester(t, otherMaker)
	plain := tpmAttester(t, startSwtpm(t), ekSpec, ekVersion)
	rootsDir := t.TempDir()
	maker.CopyCerts(t, rootsDir)
	roots, err := attest.LoadEKRoots(rootsDir)
	if err != nil {
		t.Fatal(err)
	}

	st := openSQLite(t)
	v, err := NewAttestVerifier(attest.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v.Counters = st
	th := startHub(t, st, func(o *Options) { o.Verifier, o.EKRoots = v, roots })
	withCertOf := func(a, certOf *attest.Attester) *api.EndorsementKey {
		id := a.Identity()
		return &api.EndorsementKey{Area: id.EKArea, Public: id.EKPublic, Cert: certOf.Identity().EKCert}
	}

	cases := []struct {
		name string
		id   string
		tpm  *attest.Attester
		ek   *api.EndorsementKey // nil: the TPM's own; empty: no attestation at all
		want string              // "" enrols; else a part of the refusal
	}{
		{"certified by the trusted maker", "dev-trusted", good, nil, ""},
		{"no EK certificate", "dev-no-cert", plain, nil, "sent no EK certificate"},
		{"certified by another maker", "dev-foreign", foreign, nil, "does not chain to a trusted TPM maker CA"},
		{"another TPM's certificate", "dev-copied-cert", good2, withCertOf(good2, good), "certifies another key"},
		// A "tpm" key sent straight to /v1/enrol, skipping the challenge
		// where the EK is checked.
		{"no challenge", "dev-no-challenge", good, &api.EndorsementKey{}, "through the credential challenge"},
	}
	toks := map[string]string{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok := th.token(t, c.id, time.Hour)
			toks[c.id] = tok
			var cert *api.Certificate
			var err error
			if c.ek != nil && c.ek.Area == nil {
				cert, err = client.Enrol(t.Context(), th.URL, tok, c.tpm.Signer(), api.KeyTPM, client.EnrolOptions{CAFingerprint: th.CAFingerprint()})
			} else {
				cert, err = enrolTPM(t, th, tok, c.tpm, c.ek)
			}
			if c.want == "" {
				if err != nil {
					t.Fatalf("enrol: %v", err)
				}
				d, err := st.Device(ctx, c.id)
				if err != nil || d.KeyKind != api.KeyTPM || string(d.AK) != string(c.tpm.Identity().AK) || cert.DeviceID != c.id {
					t.Fatalf("enrolled device %+v, %v: want a TPM device with its AK", d, err)
				}
				return
			}
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Status != 403 || ae.Reason != api.ReasonEKUntrusted || !strings.Contains(ae.Message, c.want) {
				t.Fatalf("enrol = %v, want 403 %s with %q", err, api.ReasonEKUntrusted, c.want)
			}
			t.Logf("refused: %v", err)
			if _, err := st.Device(ctx, c.id); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("device after a refused enrolment: %v, want not found", err)
			}
			if got, err := st.PeekEnrolToken(ctx, hashToken(tok), time.Now()); err != nil || got != c.id {
				t.Fatalf("token after a refused enrolment: %q, %v; want still usable", got, err)
			}
		})
	}
	// The refused device gets a trusted TPM: the same token enrols it.
	if _, err := enrolTPM(t, th, toks["dev-copied-cert"], good2, nil); err != nil {
		t.Fatalf("enrol with the token of a refused enrolment and a trusted TPM: %v", err)
	}
	resp, err := th.raw(t, nil).Get(th.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`shoal_hub_enrolments_total{result="ek-untrusted"} 4`, `shoal_hub_enrolments_total{result="ok"} 2`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestEnrolWithoutEKRoots: without EK roots, TPMs with and without an EK
// certificate enrol, and the hub logs which it was, with the certificate's
// issuer, so an operator learns which makers' CAs the fleet needs.
func TestEnrolWithoutEKRoots(t *testing.T) {
	certified := certifiedAttester(t, swtpmtest.NewEKCA(t))
	plain := tpmAttester(t, startSwtpm(t), ekSpec, ekVersion)
	st := openSQLite(t)
	v, err := NewAttestVerifier(attest.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v.Counters = st
	logs := &testenv.Buffer{}
	th := startHub(t, st, func(o *Options) {
		o.Verifier, o.Logger = v, slog.New(slog.NewJSONHandler(logs, nil))
	})
	for id, a := range map[string]*attest.Attester{"dev-certified": certified, "dev-plain": plain} {
		if _, err := enrolTPM(t, th, th.token(t, id, time.Hour), a, nil); err != nil {
			t.Fatalf("enrol %s: %v", id, err)
		}
	}
	type line struct {
		Msg, Device, EKIssuer string
		EKCert, EKChecked     bool
	}
	got := map[string]line{}
	for _, l := range strings.Split(logs.String(), "\n") {
		var e line
		if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "TPM enrolment challenged" {
			got[e.Device] = e
		}
	}
	want := map[string]line{
		"dev-certified": {Msg: "TPM enrolment challenged", Device: "dev-certified", EKCert: true, EKIssuer: "CN=swtpm-localca"},
		"dev-plain":     {Msg: "TPM enrolment challenged", Device: "dev-plain"},
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("log for %s: %+v, want %+v\nlogs:\n%s", id, got[id], w, logs.String())
		}
	}
}
