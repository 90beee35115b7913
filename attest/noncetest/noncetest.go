// Package noncetest is the behavioural suite every attest.NonceStore must
// pass: the hub runs it against its SQLite and PostgreSQL stores, as
// attest's own test runs it against MemNonceStore. Only tests import it.
package noncetest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/attest"
)

// Run checks the NonceStore contract on stores from newStore (a fresh,
// empty store per call).
func Run(t *testing.T, newStore func(t *testing.T) attest.NonceStore) {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	n1 := []byte("nonce-0001-abcdefghijklmnopqrstu")
	n2 := []byte("nonce-0002-abcdefghijklmnopqrstu")

	tests := []struct {
		name string
		run  func(t *testing.T, s attest.NonceStore) error
		want error
	}{
		{"issued nonce is consumed once", func(t *testing.T, s attest.NonceStore) error {
			mustIssue(t, s, "dev-a", n1, t0.Add(time.Minute))
			return s.Consume(ctx, "dev-a", n1, t0)
		}, nil},
		{"second use is a replay", func(t *testing.T, s attest.NonceStore) error {
			mustIssue(t, s, "dev-a", n1, t0.Add(time.Minute))
			if err := s.Consume(ctx, "dev-a", n1, t0); err != nil {
				t.Fatal(err)
			}
			return s.Consume(ctx, "dev-a", n1, t0.Add(time.Second))
		}, attest.ErrReplay},
		{"never issued", func(t *testing.T, s attest.NonceStore) error {
			mustIssue(t, s, "dev-a", n1, t0.Add(time.Minute))
			return s.Consume(ctx, "dev-a", n2, t0)
		}, attest.ErrWrongNonce},
		{"issued to another device", func(t *testing.T, s attest.NonceStore) error {
			mustIssue(t, s, "dev-b", n1, t0.Add(time.Minute))
			return s.Consume(ctx, "dev-a", n1, t0)
		}, attest.ErrWrongNonce},
		{"expired", func(t *testing.T, s attest.NonceStore) error {
			mustIssue(t, s, "dev-a", n1, t0.Add(time.Minute))
			return s.Consume(ctx, "dev-a", n1, t0.Add(2*time.Minute))
		}, attest.ErrStaleNonce},
		{"expired nonce stays unusable", func(t *testing.T, s attest.NonceStore) error {
			mustIssue(t, s, "dev-a", n1, t0.Add(time.Minute))
			_ = s.Consume(ctx, "dev-a", n1, t0.Add(2*time.Minute))
			err := s.Consume(ctx, "dev-a", n1, t0)
			if err == nil {
				t.Fatal("expired nonce worked when presented with an earlier time")
			}
			return nil
		}, nil},
		{"two devices, same bytes, independent", func(t *testing.T, s attest.NonceStore) error {
			mustIssue(t, s, "dev-a", n1, t0.Add(time.Minute))
			mustIssue(t, s, "dev-b", n1, t0.Add(time.Minute))
			if err := s.Consume(ctx, "dev-a", n1, t0); err != nil {
				t.Fatal(err)
			}
			return s.Consume(ctx, "dev-b", n1, t0)
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run(t, newStore(t))
			if tc.want == nil && err != nil {
				t.Fatalf("got %v, want success", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}

	t.Run("concurrent consumers: exactly one wins", func(t *testing.T) {
		s := newStore(t)
		mustIssue(t, s, "dev-a", n1, t0.Add(time.Minute))
		var ok, replay atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch err := s.Consume(ctx, "dev-a", n1, t0); {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, attest.ErrReplay):
					replay.Add(1)
				default:
					t.Errorf("concurrent consume: %v", err)
				}
			}()
		}
		wg.Wait()
		if ok.Load() != 1 || replay.Load() != 15 {
			t.Fatalf("%d consumers succeeded and %d saw a replay; want 1 and 15", ok.Load(), replay.Load())
		}
	})
}

func mustIssue(t *testing.T, s attest.NonceStore, device string, nonce []byte, expires time.Time) {
	t.Helper()
	if err := s.Issue(context.Background(), device, nonce, expires); err != nil {
		t.Fatalf("issue: %v", err)
	}
}
