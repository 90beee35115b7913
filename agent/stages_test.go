package agent

import (
	"slices"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/reconcile"
)

// TestAppStatusRollback: the reconciler's rollback record reaches the
// report whole (when, check, exit code, log lines) on every pass it is
// set, not only on the pass that rolled back.
func TestAppStatusRollback(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	rec := &reconcile.Rollback{Hash: "h", Time: at, Reason: "health-failed", ExitCode: 3, Logs: []string{"a", "b"}, Message: "exited with code 3"}
	for _, a := range []reconcile.AppResult{
		{App: "web", Outcome: reconcile.OutcomeRolledBack, ExitCode: 3, Logs: []string{"a", "b"}, Rollback: rec, State: "running"},
		{App: "web", Outcome: reconcile.OutcomeRolledBack, ExitCode: 0, Rollback: rec, State: "running"}, // a later pass: the running container's own exit code
	} {
		st := appStatus(a)
		rb := st.Rollback
		if rb == nil || !rb.Time.Equal(at) || rb.Check != "health-failed" || rb.ExitCode != 3 || !slices.Equal(rb.LogTail, []string{"a", "b"}) || rb.Message != "exited with code 3" {
			t.Errorf("rollback %+v from %+v", rb, a)
		}
	}
}
