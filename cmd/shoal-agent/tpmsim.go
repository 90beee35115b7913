//go:build tpmsim && cgo

package main

import (
	"log/slog"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/shoalfleet/shoal/attest/tpmsim"
)

// openSimulator starts the in-process TPM simulator for trust.tpm
// "simulator[:SEED]". Each start of the agent is a boot of the simulated
// device: the boot count in the state dir advances first, then the
// simulator, manufactured afresh from the seed, is power-cycled that many
// times, so its keys load again and its reset counter moves forward across
// restarts as a real TPM's does across reboots. Each start replays every
// earlier boot (about a millisecond each).
func openSimulator(stateDir, value string, log *slog.Logger) (transport.TPMCloser, error) {
	st, err := nextSimulatorBoot(stateDir, value)
	if err != nil {
		return nil, err
	}
	sim, err := tpmsim.OpenSeeded(st.Seed)
	if err != nil {
		return nil, err
	}
	if err := sim.Boot(st.Boots); err != nil {
		sim.Close()
		return nil, err
	}
	log.Info("TPM simulator started (demo and test use only: its keys follow from the seed)", "boot", st.Boots)
	return sim, nil
}
