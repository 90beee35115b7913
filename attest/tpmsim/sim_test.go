//go:build cgo

package tpmsim_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/attest/tpmsim"
)

type simTPM interface {
	Send([]byte) ([]byte, error)
	Reset() error
}

var bootPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}

// TestSimulator runs the device side on the in-process simulator: keys,
// application PCR, quote, the hub's verification, and a reboot that clears
// the PCR and advances the reset counter while the keys stay.
func TestSimulator(t *testing.T) {
	ctx := context.Background()
	sim := openSim(t)
	state := t.TempDir()
	a, err := attest.New(ctx, attest.Options{StateDir: state, TPM: sim})
	if err != nil {
		t.Fatal(err)
	}
	id := a.Identity()
	if id.Kind != attest.KindTPM || id.Weak || len(id.EKPublic) == 0 {
		t.Fatalf("identity %+v", id)
	}
	v := attest.NewVerifier(attest.VerifierOptions{Nonces: &attest.MemNonceStore{}})
	pol := attest.Policy{PCRs: append([]int{attest.AppPCR}, bootPCRs...),
		Expected: map[int][]byte{attest.AppPCR: attest.AppPCRValue("spec", "2.0.0")}}
	verify := func(a *attest.Attester, last *attest.Counters) (*attest.Result, error) {
		n, err := v.Issue(ctx, "sim")
		if err != nil {
			t.Fatal(err)
		}
		q, err := a.Quote(ctx, n, bootPCRs)
		if err != nil {
			t.Fatal(err)
		}
		return v.Verify(ctx, attest.Request{DeviceID: "sim", Quote: q, AK: id.AK, Policy: pol, Last: last})
	}
	if err := a.ExtendApp(ctx, "spec", "2.0.0"); err != nil {
		t.Fatal(err)
	}
	first, err := verify(a, nil)
	if err != nil {
		t.Fatalf("simulator quote: %v", err)
	}
	a.Close()

	if err := sim.Reset(); err != nil {
		t.Fatal(err)
	}
	a, err = attest.New(ctx, attest.Options{StateDir: state, TPM: sim})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if !bytes.Equal(a.Identity().AK, id.AK) {
		t.Fatal("AK changed across a reset")
	}
	if _, err := verify(a, &first.Counters); !errors.Is(err, attest.ErrPCRMismatch) {
		t.Fatalf("after reset, before ExtendApp: %v, want a PCR mismatch", err)
	}
	if err := a.ExtendApp(ctx, "spec", "2.0.0"); err != nil {
		t.Fatal(err)
	}
	second, err := verify(a, &first.Counters)
	if err != nil {
		t.Fatalf("after reset: %v", err)
	}
	if second.Counters.ResetCount == first.Counters.ResetCount {
		t.Errorf("reset counter unchanged: %+v", second.Counters)
	}
	if _, err := verify(a, &attest.Counters{ResetCount: second.Counters.ResetCount + 1}); !errors.Is(err, attest.ErrCountersBackwards) {
		t.Fatalf("counters backwards: %v", err)
	}
}

// TestOpen: with the tag, Open gives a working TPM; without it, ErrUnsupported.
func TestOpen(t *testing.T) {
	s, err := tpmsim.Open()
	if err == nil {
		defer s.Close()
		r, err := tpm2.GetRandom{BytesRequested: 8}.Execute(s)
		if err != nil || len(r.RandomBytes.Buffer) != 8 {
			t.Fatalf("GetRandom on the simulator: %v", err)
		}
		return
	}
	if !errors.Is(err, tpmsim.ErrUnsupported) {
		t.Fatalf("Open = %v", err)
	}
}
