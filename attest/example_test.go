package attest_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/spec"
)

// The device side of one agent pass: after applying a spec, record it in the
// application PCR, check the clock, and answer the hub's nonce with a quote.
func Example_device() {
	ctx := context.Background()
	a, err := attest.New(ctx, attest.Options{StateDir: "/var/lib/shoal/attest", AllowSoftware: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer a.Close()
	id := a.Identity() // enrol with id.AK, id.DeviceKey (CSR via a.Signer()), id.EKArea, id.EKCert; id.Weak on the status page

	var d *spec.Device // the applied, rendered device
	release := "1.4.0" // the running release's version
	if err := a.ExtendApp(ctx, d.Hash(), release); err != nil {
		fmt.Println(err)
		return
	}

	clock := attest.NewClock(attest.ClockOptions{})
	clock.SetTimePolicy(d.Time)
	clock.SetLowerBound("fleet-commit", time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC))
	st := clock.Check(ctx) // st.State, st.Offset into the status report; clock.Now for TLS

	var nonce []byte // from the hub (api.Nonce)
	q, err := a.Quote(ctx, nonce, d.Attestation.PCRs)
	if err != nil {
		fmt.Println(err)
		return
	}
	// api.AttestRequest{Nonce: nonce, AKPublic: q.AK, Quote: q.Attest, Signature: q.Signature, PCRs: q.PCRs,
	//   SpecHash: d.Hash(), ReleaseVersion: release}
	_, _, _ = id, st, q
}

// The updater's health gate: containers healthy, clock within bounds,
// attestation when the policy requires it.
func Example_gate() {
	var (
		clock       *attest.Clock
		d           *spec.Device
		allHealthy  func(context.Context) error // from reconcile
		attestOnHub func(context.Context) error // nonce, quote, the hub's verdict
	)
	gate := attest.NewGate(
		attest.ContainersCheck(allHealthy),
		attest.ClockCheck(clock, d.Update.OfflineOK),
		attest.AttestationCheck(d.Attestation.Required, attestOnHub),
	)
	err := gate.Check(context.Background()) // the updater's func(ctx) error
	var ge *attest.GateError
	if errors.As(err, &ge) {
		fmt.Println(ge.Checks()) // e.g. [clock attestation]
	}
}

// The hub side: the hub consumed the nonce in its store; the verifier checks
// the rest and the counters through the hub's CounterStore.
func Example_hub() {
	ctx := context.Background()
	v := attest.NewVerifier(attest.VerifierOptions{Counters: &attest.MemCounterStore{}})
	var (
		d          *spec.Device // rendered for the device
		registered []byte       // AK stored at enrolment
		q          attest.Quote // from api.AttestRequest
		nonce      []byte       // the nonce the hub just consumed
	)
	pol, err := attest.PolicyFor(d)
	if err != nil {
		fmt.Println(err)
		return
	}
	res, err := v.Verify(ctx, attest.Request{DeviceID: d.ID, Quote: &q, AK: registered, Policy: pol, Nonce: nonce})
	if err != nil {
		fmt.Println("not attested:", attest.Reason(err)) // api.AttestResult{OK: false, Reasons: ...}
		return
	}
	fmt.Println(res.Software)
}

// Enrolment: prove the AK lives in the TPM that holds the EK.
func Example_enrol() {
	ctx := context.Background()
	var a *attest.Attester // on the device
	id := a.Identity()
	if err := attest.CheckEK(id); err != nil { // on the hub
		fmt.Println(err)
		return
	}
	secret, challenge, err := attest.MakeCredential(id.EKArea, id.AK) // on the hub
	if err != nil {
		fmt.Println(err)
		return
	}
	answer, err := a.ActivateCredential(ctx, *challenge) // on the device
	fmt.Println(err == nil && attest.CheckSecret(secret, answer))
}
