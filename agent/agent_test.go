package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/spec"
)

// countingRender counts renders so a test can see what a pass skipped.
type countingRender struct{ n int }

func (c *countingRender) render(fsys fs.FS, id string) (*spec.Device, error) {
	c.n++
	return RenderSpec(fsys, id)
}

func TestPassLifecycle(t *testing.T) {
	r := newGitRepo(t)
	c1 := r.Commit(fleetFiles(), "fleet")
	cfg := testConfig(t, "file://"+r.Dir)
	stage := &fakeStage{name: "containers"}
	a, logs := newTestAgent(t, cfg, stage)
	cr := &countingRender{}
	a.o.Render = cr.render
	ctx := t.Context()

	pass := func(name string) *Report {
		t.Helper()
		rep, err := a.Pass(ctx, "poll")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := rep.Status.Validate(); err != nil {
			t.Fatalf("%s: status does not validate: %v", name, err)
		}
		return rep
	}

	rep := pass("first")
	if !rep.Converged() || a.State().Applied.Commit != c1 || stage.calls() != 1 {
		t.Fatalf("first pass: state %s applied %s calls %d", rep.Status.State, a.State().Applied.Commit, stage.calls())
	}
	if len(rep.Status.Apps) != 1 || rep.Status.Apps[0].Name != "web" || rep.Status.Groups[0] != "web" {
		t.Fatalf("stage results not in status: %+v", rep.Status)
	}

	if err := a.ConvergedCheck(ctx); err != nil {
		t.Fatalf("ConvergedCheck after a converged pass: %v", err)
	}
	rep = pass("nothing new")
	if !rep.Converged() || stage.calls() != 1 || rep.Stages["containers"].Ran {
		t.Fatalf("a pass with nothing new called the stage (calls %d)", stage.calls())
	}
	if rep.Status.Seq != 2 {
		t.Fatalf("seq = %d, want 2", rep.Status.Seq)
	}

	bad := r.Commit(map[string]string{"apps/web.yaml": "image:\n  ref: example/web:1.0@sha256:" + strings.Repeat("a", 64) + "\nports:\n  - host: eighty\n    container: 80\n"}, "typo")
	rendersBefore := cr.n
	rep = pass("invalid commit")
	st := a.State()
	if rep.Status.State != api.StateStalled || st.Applied.Commit != c1 || st.Attempted.Commit != bad {
		t.Fatalf("invalid commit: state %s applied %s attempted %s", rep.Status.State, st.Applied.Commit, st.Attempted.Commit)
	}
	if rep.Status.Problem == nil || rep.Status.Problem.Reason != "spec-invalid" ||
		!strings.Contains(rep.Status.Problem.Message, "apps/web.yaml:4") {
		t.Fatalf("problem lacks file:line: %+v", rep.Status.Problem)
	}
	if len(st.Attempted.Errors) == 0 || stage.calls() != 1 {
		t.Fatalf("errors %v, stage calls %d", st.Attempted.Errors, stage.calls())
	}
	if rep.Status.Commit.Applied != c1 || rep.Status.Commit.Attempted != bad {
		t.Fatalf("status commits %+v", rep.Status.Commit)
	}
	if !strings.Contains(logs.String(), "keeping the applied commit") {
		t.Fatalf("no log line for the invalid commit:\n%s", logs)
	}
	if err := a.ConvergedCheck(ctx); err == nil || !strings.Contains(err.Error(), "spec-invalid") {
		t.Fatalf("ConvergedCheck on a stalled device: %v", err)
	}
	rep = pass("invalid again")
	if rep.Status.State != api.StateStalled || cr.n != rendersBefore+1 {
		t.Fatalf("an invalid commit was rendered again (%d renders) or forgotten (%s)", cr.n-rendersBefore, rep.Status.State)
	}

	fixed := fleetFiles()
	fixed["apps/web.yaml"] = strings.Replace(fixed["apps/web.yaml"], "LOG: info", "LOG: debug", 1)
	c3 := r.Commit(map[string]string{"apps/web.yaml": fixed["apps/web.yaml"]}, "fix")
	rep = pass("fixed")
	if !rep.Converged() || a.State().Applied.Commit != c3 || stage.calls() != 2 || a.State().Attempted.Problem != nil {
		t.Fatalf("fixed commit: %s applied %s calls %d", rep.Status.State, a.State().Applied.Commit, stage.calls())
	}

	c4 := r.Commit(map[string]string{"devices/d2.yaml": "labels:\n  role: web\n  hall: \"2\"\n"}, "other device")
	rep = pass("other device's change")
	if !rep.Converged() || a.State().Applied.Commit != c4 || stage.calls() != 2 {
		t.Fatalf("a commit that leaves d1's spec alone called the stage (calls %d) or was not applied", stage.calls())
	}

	// Drift (a container changed outside Shoal): the stages run with nothing new.
	calls := stage.calls()
	if rep, err := a.Pass(ctx, "drift"); err != nil || !rep.Converged() || stage.calls() != calls+1 {
		t.Fatalf("drift pass: %v, stage calls %d -> %d", err, calls, stage.calls())
	}

	// A new process on the same state dir converges again once (containers may have gone).
	b, _ := newTestAgent(t, cfg, stage)
	rep, err := b.Pass(ctx, "start")
	if err != nil || !rep.Converged() || stage.calls() != 4 || rep.Status.Seq != 8 {
		t.Fatalf("restart: %v %s calls %d seq %d", err, rep.Status.State, stage.calls(), rep.Status.Seq)
	}
}

func TestStageFailureKeepsAppliedAndRetries(t *testing.T) {
	r := newGitRepo(t)
	c1 := r.Commit(fleetFiles(), "fleet")
	cfg := testConfig(t, "file://"+r.Dir)
	stage := &fakeStage{name: "containers"}
	a, _ := newTestAgent(t, cfg, stage)
	if rep, err := a.Pass(t.Context(), "poll"); err != nil || !rep.Converged() {
		t.Fatal(err)
	}
	f := fleetFiles()
	c2 := r.Commit(map[string]string{"apps/web.yaml": strings.Replace(f["apps/web.yaml"], "1.0", "2.0", 1)}, "v2")
	stage.fail = stalledErr{errors.New("docker: image example/web:2.0 not found")}
	rep, _ := a.Pass(t.Context(), "poll")
	st := a.State()
	if rep.Status.State != api.StateStalled || st.Applied.Commit != c1 || st.Attempted.Commit != c2 ||
		rep.Status.Problem.Reason != "image-missing" {
		t.Fatalf("stage failure: %s applied %s attempted %s problem %+v", rep.Status.State, st.Applied.Commit, st.Attempted.Commit, rep.Status.Problem)
	}
	stage.fail = nil
	rep, _ = a.Pass(t.Context(), "poll")
	if !rep.Converged() || a.State().Applied.Commit != c2 {
		t.Fatalf("after the stage recovers: %s", rep.Status.State)
	}
}

// TestDeviceStates checks the state a pass reports, in the vocabulary of
// api.States, for what its stages say.
func TestDeviceStates(t *testing.T) {
	cases := []struct {
		name        string
		apps        []api.AppStatus
		unconverged bool
		fail        error
		want        api.State
		reason      string
	}{
		{"healthy", []api.AppStatus{{Name: "web", State: "running", Health: "healthy"}}, false, nil, api.StateConverged, ""},
		{"app unhealthy", []api.AppStatus{{Name: "web", State: "running", Health: "unhealthy"}}, false, nil, api.StateDegraded, ""},
		{"drift left alone", []api.AppStatus{{Name: "web", State: "running", Drift: "env changed outside shoal"}}, true, nil, api.StateDegraded, "containers-not-converged"},
		{"held", []api.AppStatus{{Name: "web", State: "running"}}, true, nil, api.StateWaiting, "containers-not-converged"},
		{"engine down", nil, false, errors.New("docker: connection refused"), api.StateWaiting, "containers-failed"},
		{"rolled back", []api.AppStatus{{Name: "web", State: "running", Health: "unhealthy"}}, false, stalledErr{errors.New("web: health-failed")}, api.StateStalled, "image-missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newGitRepo(t)
			r.Commit(fleetFiles(), "fleet")
			stage := &fakeStage{name: "containers", apps: c.apps, unconverged: c.unconverged, fail: c.fail}
			a, _ := newTestAgent(t, testConfig(t, "file://"+r.Dir), stage)
			rep, err := a.Pass(t.Context(), "poll")
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Status.State.Valid() || rep.Status.State != c.want {
				t.Errorf("state %q, want %q", rep.Status.State, c.want)
			}
			reason := ""
			if p := rep.Status.Problem; p != nil {
				reason = p.Reason
			}
			if reason != c.reason {
				t.Errorf("problem reason %q, want %q", reason, c.reason)
			}
			err = a.ConvergedCheck(t.Context())
			if (err == nil) != (c.want == api.StateConverged) {
				t.Errorf("ConvergedCheck: %v", err)
			}
			if c.want == api.StateDegraded && (err == nil || !strings.Contains(err.Error(), `app "web"`)) {
				t.Errorf("ConvergedCheck of a degraded device = %v, want it to name the app", err)
			}
		})
	}
}

type stalledErr struct{ error }

func (stalledErr) Stalled() bool  { return true }
func (stalledErr) Reason() string { return "image-missing" }

func TestRewrittenHistoryRefused(t *testing.T) {
	r := newGitRepo(t)
	c1 := r.Commit(fleetFiles(), "fleet")
	c2 := r.Commit(map[string]string{"devices/d1.yaml": "labels:\n  role: web\n  x: \"1\"\n"}, "two")
	cfg := testConfig(t, "file://"+r.Dir)
	a, logs := newTestAgent(t, cfg, &fakeStage{name: "containers"})
	if rep, err := a.Pass(t.Context(), "poll"); err != nil || a.State().Applied.Commit != c2 {
		t.Fatalf("%v %v", rep, err)
	}
	r.Git("reset", "-q", "--hard", c1)
	c3 := r.Commit(map[string]string{"devices/d1.yaml": "labels:\n  role: web\n  x: \"3\"\n"}, "rewritten")
	rep, _ := a.Pass(t.Context(), "poll")
	st := a.State()
	if rep.Status.State != api.StateStalled || st.Applied.Commit != c2 || st.Attempted.Commit != c3 ||
		rep.Status.Problem.Reason != "history-rewritten" {
		t.Fatalf("force-push: %s applied %s attempted %s %+v", rep.Status.State, st.Applied.Commit, st.Attempted.Commit, rep.Status.Problem)
	}
	if !strings.Contains(logs.String(), "history rewritten") {
		t.Fatalf("no clear log line:\n%s", logs)
	}
}

func TestDamagedStateSetAside(t *testing.T) {
	r := newGitRepo(t)
	c1 := r.Commit(fleetFiles(), "fleet")
	cfg := testConfig(t, "file://"+r.Dir)
	a, _ := newTestAgent(t, cfg)
	if _, err := a.Pass(t.Context(), "poll"); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(cfg.StateDir, "state.json")
	if err := os.WriteFile(p, []byte(`{"version":1,"applied":{"co`), 0o600); err != nil {
		t.Fatal(err)
	}
	b, logs := newTestAgent(t, cfg)
	rep, err := b.Pass(t.Context(), "start")
	if err != nil || !rep.Converged() || b.State().Applied.Commit != c1 {
		t.Fatalf("after damage: %v %+v", err, b.State())
	}
	if m, _ := filepath.Glob(p + ".corrupt-*"); len(m) != 1 || !strings.Contains(logs.String(), "set aside") {
		t.Fatalf("damaged state not kept aside (%v) or not logged", m)
	}
	// A state from a newer agent is not overwritten.
	os.WriteFile(p, []byte(`{"version":99}`), 0o600)
	if _, err := New(Options{Config: cfg, Source: b.o.Source}); err == nil {
		t.Fatal("a state.json of another version was accepted")
	}
}
