package attest

import (
	"context"
	"errors"
	"testing"
)

// TestVerifyCallerConsumesNonce is the hub's flow: it issues and consumes
// nonces in its own store and keeps counters through a CounterStore; the
// verifier checks the quote answers the consumed nonce.
func TestVerifyCallerConsumesNonce(t *testing.T) {
	ctx := context.Background()
	dev := tpmDevice(t, startSwtpm(t, ""))
	pol := testPolicy(t, dev)
	ak := dev.Identity().AK
	counters := &MemCounterStore{}
	v := NewVerifier(VerifierOptions{Counters: counters})
	if _, err := v.Issue(ctx, "dev-a"); err == nil {
		t.Fatal("Issue without a nonce store succeeded")
	}
	n := randomNonce(t, 32)
	q, err := dev.Quote(ctx, n, bootPCRs)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		nonce []byte
		want  error
	}{
		{"no nonce given", nil, ErrWrongNonce},
		{"another nonce", randomNonce(t, 32), ErrWrongNonce},
		{"the consumed nonce", n, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(ctx, Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol, Nonce: tc.nonce})
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}

	saved, err := counters.LastCounters(ctx, "dev-a")
	if err != nil || saved == nil {
		t.Fatalf("counters not saved: %v", err)
	}
	// Counters from the store hold the next quote: pretend the device was seen further on.
	ahead := *saved
	ahead.ResetCount++
	if err := counters.SaveCounters(ctx, "dev-a", ahead); err != nil {
		t.Fatal(err)
	}
	n2 := randomNonce(t, 32)
	q2, err := dev.Quote(ctx, n2, bootPCRs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, Request{DeviceID: "dev-a", Quote: q2, AK: ak, Policy: pol, Nonce: n2}); !errors.Is(err, ErrCountersBackwards) {
		t.Fatalf("Verify after stored counters moved ahead = %v, want ErrCountersBackwards", err)
	}
}
