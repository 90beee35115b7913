package reconcile

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps guards the layering: reconcile imports spec and small internal
// helpers, never the agent, the hub or another device part.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", "github.com/shoalfleet/shoal/reconcile").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	allowed := map[string]bool{
		"github.com/shoalfleet/shoal/reconcile":           true,
		"github.com/shoalfleet/shoal/spec":                true,
		"github.com/shoalfleet/shoal/internal/atomicfile": true,
		"github.com/shoalfleet/shoal/internal/backoff":    true,
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/shoalfleet/shoal/") && !allowed[p] {
			t.Errorf("reconcile depends on %s", p)
		}
	}
}
