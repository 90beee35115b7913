package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestSignaturePolicyFromConfig: trusted SSH signer keys come from a file the
// agent config names; an unsigned commit is refused and the last good kept.
func TestSignaturePolicyFromConfig(t *testing.T) {
	keygen := testenv.LookPath(t, "ssh-keygen", "openssh-client")
	keys := t.TempDir()
	key := filepath.Join(keys, "signer")
	if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	r := newGitRepo(t)
	for _, f := range []string{"fleet.cue", "groups/web.yaml", "devices/d1.yaml", "devices/d2.yaml", "apps/web.yaml"} {
		p := filepath.Join(r.Dir, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(fleetFiles()[f]), 0o644)
		r.Git("add", f)
	}
	signed := func(msg string) string {
		r.Git("-c", "gpg.format=ssh", "-c", "user.signingkey="+key, "commit", "-q", "-S", "--allow-empty", "-m", msg)
		return r.Git("rev-parse", "HEAD")
	}
	good := signed("signed fleet")
	cfg := testConfig(t, "file://"+r.Dir)
	cfg.Repo.Signers.SSHKeys = key + ".pub"
	a, logs := newTestAgent(t, cfg, &fakeStage{name: "containers"})
	if rep, err := a.Pass(t.Context(), "poll"); err != nil || !rep.Converged() || a.State().Applied.Commit != good {
		t.Fatalf("signed commit not applied: %v %+v", err, rep.Status.Problem)
	}
	appliedAt := a.State().Applied.Time
	unsigned := r.Commit(map[string]string{"devices/d1.yaml": "labels:\n  role: web\n  evil: \"1\"\n"}, "unsigned")
	rep, err := a.Pass(t.Context(), "poll")
	st := a.State()
	if err != nil || rep.Status.State != api.StateStalled || st.Applied.Commit != good || st.Attempted.Commit != unsigned ||
		rep.Status.Problem.Reason != "commit-unsigned" {
		t.Fatalf("unsigned commit: %v state %s applied %s attempted %s %+v", err, rep.Status.State, st.Applied.Commit, st.Attempted.Commit, rep.Status.Problem)
	}
	// The refusal is in the daemon's log, once; passes that converge the
	// applied commit again (drift, a restart) do not move applied.time.
	for _, trigger := range []string{"poll", "drift", "poll"} {
		if _, err := a.Pass(t.Context(), trigger); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(logs.String(), "commit refused by policy"); n != 1 || !strings.Contains(logs.String(), "reason=commit-unsigned") ||
		!strings.Contains(logs.String(), "commit="+unsigned) {
		t.Fatalf("refusal logged %d times:\n%s", n, logs.String())
	}
	if got := a.State().Applied.Time; !got.Equal(appliedAt) {
		t.Fatalf("applied.time moved on refused passes: %v, was %v", got, appliedAt)
	}
	next := signed("signed again")
	if rep, _ := a.Pass(t.Context(), "poll"); !rep.Converged() || a.State().Applied.Commit != next {
		t.Fatalf("the next signed commit was not applied: %+v", rep.Status.Problem)
	}
	// Empty key files would refuse every commit forever: a config error instead.
	empty := filepath.Join(keys, "empty")
	os.WriteFile(empty, nil, 0o600)
	cfg.Repo.Signers.SSHKeys = empty
	if _, err := SourceFromConfig(cfg, nil); err == nil {
		t.Fatal("empty signer keys accepted")
	}
}
