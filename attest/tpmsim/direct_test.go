//go:build cgo && !tpmsim

package tpmsim_test

import (
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpmutil"
)

// openSim starts go-tpm-tools' simulator directly, so a plain `go test`
// (no tag) still runs these tests; only this test binary links the C code.
func openSim(t testing.TB) simTPM {
	t.Helper()
	s, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return direct{s}
}

type direct struct{ s *simulator.Simulator }

func (d direct) Send(cmd []byte) ([]byte, error) { return tpmutil.RunCommandRaw(d.s, cmd) }
func (d direct) Reset() error                    { return d.s.Reset() }
