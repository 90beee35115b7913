//go:build tpmsim && cgo

package tpmsim

import (
	"fmt"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpmutil"
)

// TPM is a running simulator: a transport.TPM for attest.Options.TPM.
type TPM struct {
	sim *simulator.Simulator
}

// Open starts the simulator, powered on and started. Only one runs per
// process: a second Open waits until the first is closed.
func Open() (*TPM, error) {
	s, err := simulator.Get()
	if err != nil {
		return nil, fmt.Errorf("start TPM simulator: %w", err)
	}
	return &TPM{sim: s}, nil
}

// Send runs one TPM command.
func (t *TPM) Send(cmd []byte) ([]byte, error) { return tpmutil.RunCommandRaw(t.sim, cmd) }

// Reset reboots the simulated TPM: PCRs clear, the reset counter advances,
// keys and seeds stay.
func (t *TPM) Reset() error { return t.sim.Reset() }

// Close stops the simulator.
func (t *TPM) Close() error { return t.sim.Close() }

var _ transport.TPMCloser = (*TPM)(nil)

// OpenSeeded is Open with the hierarchy seeds derived from seed, so that key
// blobs saved by an earlier process load again (a demo agent that restarts).
// Anyone who knows the seed knows the keys: for demos only. The simulator's
// NV and counters still start afresh, so a hub that saw the device before
// finds its reset counter gone backwards until the device enrols again.
func OpenSeeded(seed int64) (*TPM, error) {
	s, err := simulator.GetWithFixedSeedInsecure(seed)
	if err != nil {
		return nil, fmt.Errorf("start TPM simulator: %w", err)
	}
	return &TPM{sim: s}, nil
}
