//go:build tpmsim && cgo

package main

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/attest"
)

// With the tag, trust.tpm simulator:SEED gives a TPM identity (not the
// weaker software one) whose keys survive an agent restart, and each start
// counts a boot.
func TestSimulatorIdentity(t *testing.T) {
	for _, value := range []string{"simulator:77", "simulator"} {
		t.Run(value, func(t *testing.T) {
			cfg := &agent.Config{StateDir: t.TempDir(), Trust: agent.TrustConfig{TPM: value}}
			var ak []byte
			for start := 1; start <= 2; start++ {
				a, tpm, err := openAttester(t.Context(), cfg, slog.New(slog.DiscardHandler))
				if err != nil {
					t.Fatalf("start %d: %v", start, err)
				}
				id := a.Identity()
				a.Close()
				tpm.Close()
				if id.Kind != attest.KindTPM || id.Weak {
					t.Fatalf("start %d: identity %s (weak %v), want a TPM", start, id.Kind, id.Weak)
				}
				if ak != nil && !bytes.Equal(ak, id.AK) {
					t.Fatalf("start %d: the attestation key changed across a restart", start)
				}
				ak = id.AK
			}
			st, err := nextSimulatorBoot(cfg.StateDir, value)
			if err != nil || st.Boots != 3 {
				t.Fatalf("boot count after two starts: %+v, %v", st, err)
			}
		})
	}
}
