package reconcile

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/shoalfleet/shoal/spec"
)

// TestRollbackOnFailedHealth: a new version that never becomes healthy is
// rolled back; the previous container runs again, the result carries the exit
// code and last log lines, and the failed version is not retried.
func TestRollbackOnFailedHealth(t *testing.T) {
	cases := []struct {
		name     string
		breakIt  func(*spec.App)
		exitCode int
		logHas   string
	}{
		{"unhealthy probe", func(a *spec.App) {
			a.Command = []string{"-listen", ":8080", "-unhealthy"}
			a.HealthWait = spec.Duration(3 * time.Second)
		}, 0, "testapp starting version=2"},
		{"crashes at start", func(a *spec.App) {
			a.Command = []string{"-exit", "3"}
			a.Restart = "no"
		}, 3, "exiting with code 3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			port := freePort(t)
			dev := e.device(e.webApp("web", port, "1"))
			e.mustReconcile(dev)
			oldID, _ := e.inspect("web")

			dev.Apps[0].Env["VERSION"] = "2"
			tc.breakIt(&dev.Apps[0])
			start := time.Now()
			res := e.reconcile(dev)
			a := appResult(t, res, "web")
			if a.Outcome != OutcomeRolledBack || !errors.Is(a.Error, ErrUnhealthy) || a.Error.Code != "health-failed" {
				t.Fatalf("want rolled-back with ErrUnhealthy, got %+v (err %v)", a, a.Error)
			}
			if a.ExitCode != tc.exitCode {
				t.Errorf("exit code %d, want %d", a.ExitCode, tc.exitCode)
			}
			if !strings.Contains(strings.Join(a.Logs, "\n"), tc.logHas) {
				t.Errorf("logs %q lack %q", a.Logs, tc.logHas)
			}
			if took := time.Since(start); took > 25*time.Second {
				t.Errorf("rollback took %s", took)
			}
			rb := a.Rollback
			if rb == nil || rb.Reason != "health-failed" || rb.ExitCode != tc.exitCode || !strings.Contains(strings.Join(rb.Logs, "\n"), tc.logHas) ||
				rb.Time.Before(start.Add(-time.Second)) || rb.Time.After(time.Now()) || rb.Message == "" {
				t.Fatalf("rollback record %+v, want when, why, exit %d and the logs", rb, tc.exitCode)
			}
			if id, st := e.inspect("web"); id != oldID || st != "running" {
				t.Fatalf("previous version not restored: id same %v, state %q", id == oldID, st)
			}
			if got := get(t, port); got != "version=1" {
				t.Errorf("web answers %q after rollback, want version=1", got)
			}
			// Not retried blindly: the next plan keeps the previous version.
			p := e.plan(dev)
			if !hasAction(p, KindKeep, "web", "failed its health gate") {
				t.Errorf("failed version would be retried:\n%s", p)
			}
			// and the pass keeps saying that the spec's version is not the one running.
			// It still says when and why, with the failed version's exit
			// code and log lines, not "earlier".
			again := e.reconcile(dev)
			keeps := func(what string, res *Result) {
				t.Helper()
				a := appResult(t, res, "web")
				if a.Outcome != OutcomeRolledBack || !errors.Is(a.Error, ErrUnhealthy) || res.Converged() {
					t.Errorf("%s reports %+v, converged %v", what, a, res.Converged())
				}
				if a.Rollback == nil || !a.Rollback.Time.Equal(rb.Time) || a.Rollback.ExitCode != rb.ExitCode || !slices.Equal(a.Rollback.Logs, rb.Logs) {
					t.Errorf("%s lost the rollback: %+v, want %+v", what, a.Rollback, rb)
				}
				if msg := a.Error.Error(); !strings.Contains(msg, "rolled back at "+rb.Time.UTC().Format(time.RFC3339)) || strings.Contains(msg, "earlier") {
					t.Errorf("%s says %q", what, msg)
				}
			}
			keeps("the next pass", again)
			// Nor after a restart of the agent: the failure is remembered on disk.
			r2, err := New(e.cli, e.opts)
			if err != nil {
				t.Fatal(err)
			}
			if p, err := r2.DryRun(context.Background(), dev); err != nil || !hasAction(p, KindKeep, "web", "failed its health gate") {
				t.Errorf("after restart the failed version would be retried (%v):\n%s", err, p)
			}
			after, _ := r2.Reconcile(t.Context(), dev)
			keeps("a pass after a restart", after)
		})
	}
}

// TestFaultsNameAppAndField: each bad input fails only its app, with an error
// naming the app and the spec field; the app's last good container keeps
// running, and the other app of the device is still updated.
func TestFaultsNameAppAndField(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port

	cases := []struct {
		name    string
		breakIt func(*spec.App)
		field   string
		reason  string
	}{
		{"host port taken", func(a *spec.App) {
			a.Ports = append(a.Ports, spec.Port{Host: takenPort, Container: 9090, Protocol: "tcp", HostIP: "127.0.0.1"})
		}, "ports[1].host", "port-conflict"},
		{"image tar with wrong sha256", func(a *spec.App) {
			a.Image = spec.Image{Ref: "shoal-test/tar:never", Source: &spec.ImageSource{Path: "images/app.tar", SHA256: strings.Repeat("ab", 32)}}
		}, "image.source.sha256", "image-verify-failed"},
		{"missing image", func(a *spec.App) {
			a.Image = spec.Image{Ref: "127.0.0.1:9/shoal-missing:v1"}
		}, "image.ref", "image-pull-failed"},
		{"bind source does not exist", func(a *spec.App) {
			a.Volumes = []spec.Volume{{Type: "bind", Source: "/nonexistent-shoal-" + randHex(4), Target: "/data"}}
		}, "volumes[0].source", "mount-failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := fstest.MapFS{"images/app.tar": {Data: []byte("not the tar the spec pins")}}
			e := newEnv(t, func(o *Options) { o.RepoRoot = repo })
			port := freePort(t)
			dev := e.device(e.webApp("bad", port, "1"), e.plainApp("good"))
			e.mustReconcile(dev)
			badID, _ := e.inspect("bad")

			dev.Apps[0].Env["VERSION"] = "2"
			tc.breakIt(&dev.Apps[0])
			dev.Apps[1].Env["VERSION"] = "2"
			res := e.reconcile(dev)
			a := appResult(t, res, "bad")
			if a.Error == nil {
				t.Fatalf("bad app did not fail: %+v", a)
			}
			if a.Error.Field != tc.field || a.Error.Code != tc.reason || !strings.Contains(a.Error.Error(), `app "bad": `+tc.field) {
				t.Errorf("error %q (field %q reason %q), want field %q reason %q", a.Error, a.Error.Field, a.Error.Code, tc.field, tc.reason)
			}
			var reason interface{ Reason() string }
			if !errors.As(res.Err(), &reason) || reason.Reason() != tc.reason {
				t.Errorf("the pass error does not carry reason %q: %v", tc.reason, res.Err())
			}
			if id, st := e.inspect("bad"); id != badID || st != "running" {
				t.Errorf("last good container of bad: same %v, state %q", id == badID, st)
			}
			if got := get(t, port); got != "version=1" {
				t.Errorf("bad answers %q, want the last good version=1", got)
			}
			if g := appResult(t, res, "good"); g.Outcome != OutcomeUpdated || g.Error != nil {
				t.Errorf("good app not updated beside the failure: %+v", g)
			}
		})
	}
}

// TestEngineUnavailable: with no daemon behind the socket the pass fails with
// ErrEngine after the configured retries, and returns rather than hanging.
func TestEngineUnavailable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	cases := []struct {
		name  string
		serve func(t *testing.T) // sets up what answers on sock
	}{
		{"no socket", func(*testing.T) {}},
		{"daemon answers 500", func(t *testing.T) { serve500(t, sock) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(sock)
			tc.serve(t)
			t.Setenv("DOCKER_HOST", "unix://"+sock)
			cli, err := NewClient()
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			var attempts int
			r, err := New(countingEngine{Engine: cli, list: &attempts}, Options{Prefix: "x-", RetryInitial: time.Millisecond, RetryAttempts: 3})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := r.Reconcile(ctx, &spec.Device{ID: "d", Apps: []spec.App{{Name: "a", Image: spec.Image{Ref: "x"}}}})
			if !errors.Is(err, ErrEngine) || res != nil {
				t.Fatalf("want ErrEngine and no result, got %v, %v", res, err)
			}
			if attempts != 3 {
				t.Errorf("%d attempts, want 3", attempts)
			}
			var reason interface{ Reason() string }
			if !errors.As(err, &reason) || reason.Reason() != "engine-unavailable" {
				t.Errorf("error carries no engine-unavailable reason: %v", err)
			}
			if !strings.Contains(err.Error(), "after 3 attempt") {
				t.Errorf("error does not say it retried: %v", err)
			}
			t.Log(err)
		})
	}
}
