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
