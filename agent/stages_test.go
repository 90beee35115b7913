package agent

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/reconcile"
	"github.com/shoalfleet/shoal/spec"
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

// TestUpdateStageNoSlots: a device with no A/B slots cannot take the
// release its spec names; the stage says so on every pass, logs it once per
// release, and does not hold the device back.
func TestUpdateStageNoSlots(t *testing.T) {
	var logs bytes.Buffer
	s := &UpdateStage{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	rel := func(name, version string) *spec.Device {
		return &spec.Device{Release: &spec.Release{Name: name, Version: version}}
	}
	steps := []struct {
		dev     *spec.Device
		summary string
		logged  int // lines logged by this pass
	}{
		{&spec.Device{}, "no A/B updates configured", 0},
		{rel("os-1", "1.0.0"), `release "os-1" (1.0.0) not installed: this device has no A/B slots`, 1},
		{rel("os-1", "1.0.0"), `release "os-1" (1.0.0) not installed`, 0},
		{rel("os-1", "1.0.0"), `release "os-1" (1.0.0) not installed`, 0},
		{rel("os-2", "2.0.0"), `release "os-2" (2.0.0) not installed`, 1},
	}
	for i, st := range steps {
		logs.Reset()
		res, err := s.Converge(t.Context(), Target{Device: st.dev})
		if err != nil || !res.Converged || res.Update != nil {
			t.Fatalf("pass %d: %+v, %v; want converged with no update status", i, res, err)
		}
		if !strings.Contains(res.Summary, st.summary) {
			t.Errorf("pass %d: summary %q, want %q", i, res.Summary, st.summary)
		}
		if n := strings.Count(logs.String(), "\n"); n != st.logged {
			t.Errorf("pass %d: %d lines logged, want %d:\n%s", i, n, st.logged, logs.String())
		}
	}
}
