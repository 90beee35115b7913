//go:build cgo && tpmsim

package tpmsim_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/shoalfleet/shoal/attest"

	"github.com/shoalfleet/shoal/attest/tpmsim"
)

// openSim starts the simulator through the package under test.
func openSim(t testing.TB) simTPM {
	t.Helper()
	s, err := tpmsim.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestOpenSeeded: with the same seed a restarted simulator loads the keys a
// previous one wrapped; with another seed it is another TPM.
func TestOpenSeeded(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	run := func(seed int64) ([]byte, error) {
		s, err := tpmsim.OpenSeeded(seed)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		a, err := attest.New(ctx, attest.Options{StateDir: state, TPM: s})
		if err != nil {
			return nil, err
		}
		defer a.Close()
		return a.Identity().AK, nil
	}
	ak1, err := run(42)
	if err != nil {
		t.Fatal(err)
	}
	ak2, err := run(42)
	if err != nil || !bytes.Equal(ak1, ak2) {
		t.Fatalf("same seed: %v, same AK %v", err, bytes.Equal(ak1, ak2))
	}
	if _, err := run(43); !errors.Is(err, attest.ErrKeyMismatch) {
		t.Fatalf("other seed: %v, want ErrKeyMismatch", err)
	}
}

// TestSeededReboots is the demo device's life: the agent process starts, the
// simulator is opened with the device's seed and advanced by the boots so
// far, the hub verifies a quote against the counters it kept from the last
// boot. Every start must load the same keys and move the counters forward
// (the verifier keeps the last counters and refuses any that go backwards).
func TestSeededReboots(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	v := attest.NewVerifier(attest.VerifierOptions{Nonces: &attest.MemNonceStore{}, Counters: &attest.MemCounterStore{}})
	var ak []byte
	var last attest.Counters
	for boot := range 4 {
		s, err := tpmsim.OpenSeeded(7)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Boot(boot); err != nil {
			t.Fatal(err)
		}
		a, err := attest.New(ctx, attest.Options{StateDir: state, TPM: s})
		if err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
		if ak == nil {
			ak = a.Identity().AK
		} else if !bytes.Equal(ak, a.Identity().AK) {
			t.Fatalf("boot %d: the attestation key changed", boot)
		}
		n, err := v.Issue(ctx, "dev")
		if err != nil {
			t.Fatal(err)
		}
		q, err := a.Quote(ctx, n, bootPCRs)
		if err != nil {
			t.Fatal(err)
		}
		pcrs := append([]int{attest.AppPCR}, bootPCRs...)
		res, err := v.Verify(ctx, attest.Request{DeviceID: "dev", Quote: q, AK: ak, Policy: attest.Policy{PCRs: pcrs}})
		if err != nil {
			t.Fatalf("boot %d: the hub refuses the quote: %v", boot, err)
		}
		if d := int32(res.Counters.ResetCount - last.ResetCount); boot > 0 && d <= 0 {
			t.Errorf("boot %d: reset count %d after %d, want it to advance", boot, res.Counters.ResetCount, last.ResetCount)
		}
		last = res.Counters
		a.Close()
		s.Close()
	}
}
