package agent

import (
	"testing"

	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// The update stage's converged: a device back on its committed release after
// a failed trial has converged once the spec names that release again.
func TestUpdateConverged(t *testing.T) {
	good := &spec.Release{Version: "1", SHA256: "aa"}
	bad := &spec.Release{Version: "2", SHA256: "bb"}
	on := &updater.ReleaseRef{Version: "1", SHA256: "aa", Slot: "b"}
	cases := []struct {
		name  string
		phase updater.Phase
		on    *updater.ReleaseRef
		want  *spec.Release
		ok    bool
	}{
		{"committed, spec names it", updater.PhaseCommitted, on, good, true},
		{"idle, no release", updater.PhaseIdle, nil, nil, true},
		{"rolled back, spec still names the failed release", updater.PhaseRolledBack, on, bad, false},
		{"rolled back, spec names the committed release again", updater.PhaseRolledBack, on, good, true},
		{"rolled back, spec names no release", updater.PhaseRolledBack, on, nil, true},
		{"trial of the wanted release", updater.PhaseTrial, on, bad, false},
		{"downloading while the spec names the committed one", updater.PhaseDownloading, on, good, false},
		{"nothing committed yet", updater.PhaseIdle, nil, good, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := converged(updater.Status{Phase: tc.phase, Committed: tc.on}, tc.want); got != tc.ok {
				t.Fatalf("converged = %v, want %v", got, tc.ok)
			}
		})
	}
}
