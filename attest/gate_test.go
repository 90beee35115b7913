package attest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestGate composes the health gate from a real NTP exchange, a real quote
// from swtpm verified by the hub's verifier, and a containers check, and
// shows each failed condition named.
func TestGate(t *testing.T) {
	ctx := context.Background()
	sw := startSwtpm(t, "")
	dev := tpmDevice(t, sw) // AppPCR holds spec "spec-hash-1" on release "1.2.3"
	v := NewVerifier(VerifierOptions{Nonces: &MemNonceStore{}})
	attestAs := func(specHash string) func(context.Context) error {
		return func(ctx context.Context) error {
			n, err := v.Issue(ctx, "dev-a")
			if err != nil {
				return err
			}
			q, err := dev.Quote(ctx, n, bootPCRs)
			if err != nil {
				return err
			}
			pol := Policy{PCRs: append([]int{AppPCR}, bootPCRs...), Expected: map[int][]byte{AppPCR: AppPCRValue(specHash, "1.2.3")}}
			_, err = v.Verify(ctx, Request{DeviceID: "dev-a", Quote: q, AK: dev.Identity().AK, Policy: pol})
			return err
		}
	}
	goodNTP := startNTP(t, ntpResponder{Stratum: 1, Offset: 20 * time.Millisecond})
	skewedNTP := startNTP(t, ntpResponder{Stratum: 1, Offset: 10 * time.Second})
	deadNTP := closedUDPAddr(t)
	clock := func(srv string) *Clock {
		return NewClock(ClockOptions{Servers: []string{srv}, MaxSkew: time.Second, Timeout: time.Second})
	}
	healthy := ContainersCheck(func(context.Context) error { return nil })
	unhealthy := ContainersCheck(func(context.Context) error { return errors.New(`app "web": unhealthy`) })

	tests := []struct {
		name       string
		checks     []Check
		wantFailed []string
		wantIs     []error
	}{
		{"all pass", []Check{healthy, ClockCheck(clock(goodNTP), false), AttestationCheck(true, attestAs("spec-hash-1"))}, nil, nil},
		{"containers and clock fail", []Check{unhealthy, ClockCheck(clock(skewedNTP), false), AttestationCheck(true, attestAs("spec-hash-1"))},
			[]string{"containers", "clock"}, nil},
		{"attestation of another spec", []Check{healthy, ClockCheck(clock(goodNTP), false), AttestationCheck(true, attestAs("spec-hash-2"))},
			[]string{"attestation"}, []error{ErrPCRMismatch}},
		{"attestation not required", []Check{healthy, AttestationCheck(false, attestAs("spec-hash-2"))}, nil, nil},
		{"no NTP, online policy", []Check{ClockCheck(clock(deadNTP), false)}, []string{"clock"}, nil},
		{"no NTP, offline-ok policy", []Check{ClockCheck(clock(deadNTP), true)}, nil, nil},
		{"a check panics", []Check{healthy, {Name: "bootloader", Run: func(context.Context) error { panic("nil env") }}}, []string{"bootloader"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := NewGate(tc.checks...).Check(ctx)
			if tc.wantFailed == nil {
				if err != nil {
					t.Fatalf("gate failed: %v", err)
				}
				return
			}
			var ge *GateError
			if !errors.As(err, &ge) || !errors.Is(err, ErrGate) {
				t.Fatalf("err = %v, want a *GateError", err)
			}
			if !slices.Equal(ge.Checks(), tc.wantFailed) {
				t.Fatalf("failed checks %v, want %v (%v)", ge.Checks(), tc.wantFailed, err)
			}
			for _, name := range tc.wantFailed {
				if !strings.Contains(err.Error(), name+": ") {
					t.Errorf("error %q does not name %q", err, name)
				}
			}
			for _, target := range tc.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("error %v is not %v", err, target)
				}
			}
			t.Log(err)
		})
	}

	t.Run("zero gate passes", func(t *testing.T) {
		var g Gate
		if err := g.Check(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("cancelled context fails every check", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		err := NewGate(healthy).Check(cctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	})
}
