//go:build !(tpmsim && cgo)

package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/agent"
)

// Without the tpmsim tag, trust.tpm simulator is refused with how to build an
// agent that has it, and neither a software key nor state is made instead.
func TestSimulatorNotBuiltIn(t *testing.T) {
	cfg := &agent.Config{StateDir: t.TempDir(), Trust: agent.TrustConfig{TPM: "simulator:5", AllowSoftware: true}}
	a, _, err := openAttester(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		a.Close()
		t.Fatal("simulator accepted by a binary without it")
	}
	if !strings.Contains(err.Error(), "-tags tpmsim") {
		t.Fatalf("error does not say how to build one: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "attest")); !os.IsNotExist(err) {
		t.Fatalf("state written for a refused TPM: %v", err)
	}
}
