package hub

import (
	"context"
	"fmt"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/attest"
)

// AttestVerifier adapts attest.Verifier to the hub's Verifier. The hub has
// already consumed the nonce in its database (shared by every hub), so the
// attest.Verifier runs without a NonceStore and only checks that the quote
// answers exactly that nonce.
type AttestVerifier struct {
	V *attest.Verifier
	// Policy gives the PCR policy a device's quote must meet. Nil: the PCRs
	// the device quoted, with AppPCR held to the spec hash and release
	// version the device claims (so the hub learns which commit it runs).
	Policy func(ctx context.Context, deviceID string, req *api.AttestRequest) (attest.Policy, error)
}

// NewAttestVerifier builds the adapter around attest.NewVerifier. o.Nonces
// must be nil (the hub keeps nonces); o.Counters may hold a CounterStore.
func NewAttestVerifier(o attest.VerifierOptions) (*AttestVerifier, error) {
	if o.Nonces != nil {
		return nil, fmt.Errorf("attest verifier: the hub consumes nonces itself; leave Nonces nil")
	}
	return &AttestVerifier{V: attest.NewVerifier(o)}, nil
}

// Collectors returns the verifier's metrics; the hub registers them.
func (a *AttestVerifier) Collectors() []prometheus.Collector { return a.V.Collectors() }

// ClaimPolicy is the default policy: the quoted PCRs, and AppPCR must equal
// the value for the claimed spec hash and release version.
func ClaimPolicy(_ context.Context, _ string, req *api.AttestRequest) (attest.Policy, error) {
	p := attest.Policy{Expected: map[int][]byte{attest.AppPCR: attest.AppPCRValue(req.SpecHash, req.ReleaseVersion)}}
	for i := range req.PCRs {
		p.PCRs = append(p.PCRs, i)
	}
	if !slices.Contains(p.PCRs, attest.AppPCR) {
		p.PCRs = append(p.PCRs, attest.AppPCR)
	}
	slices.Sort(p.PCRs)
	return p, nil
}

// Verify runs attest.Verifier; every refusal becomes a failed result naming
// the reason. ak is nil on a device's first attestation: the key in the
// quote is then taken on trust for this device (it came over the device's
// own mutual-TLS connection or with its enrolment token).
func (a *AttestVerifier) Verify(ctx context.Context, deviceID string, ak []byte, software bool, req *api.AttestRequest) (api.AttestResult, error) {
	policy := a.Policy
	if policy == nil {
		policy = ClaimPolicy
	}
	pol, err := policy(ctx, deviceID, req)
	if err != nil {
		return api.AttestResult{}, fmt.Errorf("attestation policy for device %q: %w", deviceID, err)
	}
	if ak == nil {
		ak = req.AKPublic
	}
	_, err = a.V.Verify(ctx, attest.Request{
		DeviceID: deviceID,
		Quote:    &attest.Quote{Attest: req.Quote, Signature: req.Signature, AK: req.AKPublic, PCRs: req.PCRs},
		AK:       ak,
		Software: software,
		Policy:   pol,
		Nonce:    req.Nonce,
	})
	if err != nil {
		return api.AttestResult{OK: false, Reasons: []string{attest.Reason(err) + ": " + err.Error()}}, nil
	}
	return api.AttestResult{OK: true}, nil
}
