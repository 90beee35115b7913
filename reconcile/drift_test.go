package reconcile

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

// TestDrift: a container stopped, removed or changed by hand triggers a pass
// through Watch; policy revert puts it back, policy alert leaves it and reports it.
func TestDrift(t *testing.T) {
	ctx := context.Background()
	zero := 0
	cases := []struct {
		name    string
		policy  string
		byHand  func(e *env, id string) error
		what    string // in the drift report
		outcome string
		state   string // of the app's container after the pass; "" = gone
	}{
		{"stopped, revert", "revert", func(e *env, id string) error {
			return e.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &zero})
		}, "stopped outside shoal", OutcomeStarted, "running"},
		{"removed, revert", "", func(e *env, id string) error {
			return e.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
		}, "container removed outside shoal", OutcomeCreated, "running"},
		{"cpus changed, revert", "revert", func(e *env, id string) error {
			_, err := e.cli.ContainerUpdate(ctx, id, container.UpdateConfig{Resources: container.Resources{NanoCPUs: 5e8}})
			return err
		}, "cpus changed outside shoal", OutcomeUpdated, "running"},
		{"stopped, alert", "alert", func(e *env, id string) error {
			return e.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &zero})
		}, "stopped outside shoal", OutcomeDrift, "exited"},
		{"paused, revert", "revert", func(e *env, id string) error {
			return e.cli.ContainerPause(ctx, id)
		}, "paused outside shoal", OutcomeStarted, "running"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			app := e.plainApp("web")
			app.Drift = tc.policy
			dev := e.device(app)
			e.mustReconcile(dev)
			id, _ := e.inspect("web")

			var triggers atomic.Int32
			wctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- e.r.Watch(wctx, func() { triggers.Add(1) }) }()
			t.Cleanup(func() { cancel(); <-done })
			waitSubscribed(t, e, id, &triggers)

			if err := tc.byHand(e, id); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "a drift trigger", func() bool { return triggers.Load() > 0 })

			res := e.reconcile(dev)
			if len(res.Drift) != 1 || !strings.Contains(res.Drift[0].What, tc.what) {
				t.Fatalf("drift %+v, want one naming %q", res.Drift, tc.what)
			}
			a := appResult(t, res, "web")
			if a.Outcome != tc.outcome || a.Error != nil {
				t.Errorf("outcome %q (err %v), want %q", a.Outcome, a.Error, tc.outcome)
			}
			if _, st := e.inspect("web"); st != tc.state {
				t.Errorf("state %q after the pass, want %q", st, tc.state)
			}
		})
	}
}

// waitSubscribed sends harmless signals (SIGWINCH, ignored by testapp; Docker
// reports each as a kill event) until Watch triggers once: its events stream is live.
func waitSubscribed(t *testing.T, e *env, id string, triggers *atomic.Int32) {
	t.Helper()
	var last time.Time
	waitFor(t, 10*time.Second, "docker events subscription", func() bool {
		if triggers.Load() > 0 {
			return true
		}
		// Slower than the debounce, or each signal would postpone the trigger.
		if time.Since(last) > 4*e.opts.Debounce {
			last = time.Now()
			if err := e.cli.ContainerKill(context.Background(), id, "SIGWINCH"); err != nil {
				t.Fatal(err)
			}
		}
		return false
	})
	triggers.Store(0)
}
