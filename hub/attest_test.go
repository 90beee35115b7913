package hub

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
)

func quoteRequest(q *attest.Quote, nonce []byte, specHash, version string) *api.AttestRequest {
	return &api.AttestRequest{APIVersion: api.Version, Nonce: nonce, AKPublic: q.AK, Quote: q.Attest, Signature: q.Signature, PCRs: q.PCRs,
		SpecHash: specHash, ReleaseVersion: version}
}

// TestRealVerifier runs enrolment with attestation and later quotes through
// the real attest.Attester (software keys) and attest.Verifier.
func TestRealVerifier(t *testing.T) {
	ctx := t.Context()
	v, err := NewAttestVerifier(attest.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	th := startHub(t, openSQLite(t), func(o *Options) { o.Verifier = v })
	at, err := attest.New(ctx, attest.Options{StateDir: t.TempDir(), DevicePath: "/nonexistent/tpm", AllowSoftware: true})
	if err != nil {
		t.Fatal(err)
	}
	defer at.Close()
	const spec, version = "sha256:1111", "2026.11.0"
	if err := at.ExtendApp(ctx, spec, version); err != nil {
		t.Fatal(err)
	}
	cert, err := client.Enrol(ctx, th.URL, th.token(t, "dev-att", time.Hour), at.Signer(), api.KeySoftware, client.EnrolOptions{
		CAFingerprint: th.CAFingerprint(),
		Attest: func(ctx context.Context, nonce []byte) (*api.AttestRequest, error) {
			q, err := at.Quote(ctx, nonce, nil)
			if err != nil {
				return nil, err
			}
			return quoteRequest(q, nonce, spec, version), nil
		},
	})
	if err != nil {
		t.Fatalf("enrol with a real quote: %v", err)
	}
	cl, err := client.New(client.Options{Hub: th.URL, Key: at.Signer(), Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseIdleConnections()
	cases := []struct {
		name, spec, version string
		ok                  bool
		reason              string
	}{
		{"claims what it runs", spec, version, true, ""},
		{"claims another commit", "sha256:2222", version, false, "pcr-mismatch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, err := cl.Nonce(ctx)
			if err != nil {
				t.Fatal(err)
			}
			q, err := at.Quote(ctx, n.Nonce, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := cl.Attest(ctx, quoteRequest(q, n.Nonce, c.spec, c.version))
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != c.ok || (!c.ok && !strings.Contains(strings.Join(res.Reasons, " "), c.reason)) {
				t.Fatalf("result %+v", res)
			}
		})
	}
	// A quote over one nonce sent with another fresh nonce: the hub consumes
	// the sent nonce, and the verifier refuses the quote.
	n1, _ := cl.Nonce(ctx)
	n2, _ := cl.Nonce(ctx)
	q, err := at.Quote(ctx, n1.Nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cl.Attest(ctx, quoteRequest(q, n2.Nonce, spec, version))
	if err != nil || res.OK {
		t.Fatalf("quote for another nonce: %+v, %v", res, err)
	}
}
