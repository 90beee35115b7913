package attest

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/shoalfleet/shoal/internal/swtpmtest"
)

// swtpm is a software TPM the test started in socket mode on loopback.
type swtpm struct{ *swtpmtest.TPM }

// startSwtpm starts `swtpm socket` with its state in stateDir (a fresh temp
// dir if empty) and stops it when the test ends.
func startSwtpm(t testing.TB, stateDir string) *swtpm {
	t.Helper()
	return &swtpm{swtpmtest.Start(t, stateDir)}
}

// Open connects to the swtpm; the connection closes when the test ends.
func (s *swtpm) Open(t testing.TB) transport.TPMCloser {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tpm, err := DialTCP(ctx, s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}
