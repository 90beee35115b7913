package agent

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkPassNothingNew is a whole pass (fetch, no render, no stage call,
// status queued, state.json) when the fleet repo has nothing new, against
// `git fetch` by the git CLI on the same repo as the baseline.
func BenchmarkPassNothingNew(b *testing.B) {
	r := newGitRepo(b)
	r.Commit(fleetFiles(), "fleet")
	daemon := startGitDaemon(b, filepath.Dir(r.Dir))
	for _, tr := range []struct{ name, url string }{
		{"file", "file://" + r.Dir},
		{"git-daemon", "git://" + daemon + "/fleet"},
	} {
		b.Run("agent/"+tr.name, func(b *testing.B) {
			cfg := testConfig(b, tr.url)
			cfg.OutboxMax = 10
			stage := &fakeStage{name: "containers"}
			a, _ := newTestAgent(b, cfg, stage)
			if _, err := a.Pass(b.Context(), "start"); err != nil {
				b.Fatal(err)
			}
			calls := stage.calls()
			b.ResetTimer()
			for b.Loop() {
				rep, err := a.Pass(b.Context(), "poll")
				if err != nil || !rep.Converged() {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if stage.calls() != calls {
				b.Fatalf("%d stage calls in passes with nothing new", stage.calls()-calls)
			}
		})
		b.Run("git-cli-fetch/"+tr.name, func(b *testing.B) {
			clone := filepath.Join(b.TempDir(), "clone")
			if out, err := exec.Command("git", "clone", "-q", "--bare", "--depth=1", tr.url, clone).CombinedOutput(); err != nil {
				b.Fatalf("%v\n%s", err, out)
			}
			for b.Loop() {
				cmd := exec.Command("git", "-C", clone, "fetch", "-q", "origin", "+refs/heads/main:refs/heads/main")
				cmd.Env = r.Env
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v\n%s", err, out)
				}
			}
		})
	}
}
