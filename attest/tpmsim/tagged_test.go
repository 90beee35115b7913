//go:build cgo && tpmsim

package tpmsim_test

import (
	"testing"

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
