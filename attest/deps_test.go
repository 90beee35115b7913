package attest

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps: the device side stays pure Go and never links hub code; the
// simulator (cgo) lives only behind attest/tpmsim's build tag.
func TestDeps(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	cmd := exec.Command(gobin, "list", "-deps", "github.com/shoalfleet/shoal/attest", "github.com/shoalfleet/shoal/attest/tpmsim")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/google/go-tpm-tools", "github.com/shoalfleet/shoal/hub", "github.com/shoalfleet/shoal/agent", "runtime/cgo"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("attest depends on %s", dep)
			}
		}
	}
}
