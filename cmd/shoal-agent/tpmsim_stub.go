//go:build !(tpmsim && cgo)

package main

import (
	"fmt"
	"log/slog"

	"github.com/google/go-tpm/tpm2/transport"
)

// openSimulator refuses: device binaries are built without cgo and never
// carry the simulator.
func openSimulator(_, value string, _ *slog.Logger) (transport.TPMCloser, error) {
	if _, err := parseSimulator(value); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("tpm %q: this shoal-agent has no TPM simulator; build one with "+
		"CGO_ENABLED=1 go build -tags tpmsim ./cmd/shoal-agent (needs gcc and libssl-dev)", value)
}
