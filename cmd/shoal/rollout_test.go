package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/spec"
)

// rolloutRepo is a fleet repo of devices r1..rN (sites s0..s2) whose web app
// changes with each version, rolled out canary first, then a wave that
// waits for approval.
func rolloutRepo(t *testing.T, n int) *testenv.Repo {
	t.Helper()
	repo := testenv.NewRepo(t)
	files := map[string]string{
		"fleet.yaml": `spec:
  network: plant
rollout:
  waves:
    - {name: canary, limit: 1, bake: 0s}
    - {name: rest, approval: true, bake: 0s}
`,
		"groups/all.yaml": "selector: {}\nspec:\n  apps:\n    web: {}\n",
		"apps/web.yaml":   webApp("1"),
	}
	for i := 1; i <= n; i++ {
		files[fmt.Sprintf("devices/r%d.yaml", i)] = fmt.Sprintf("labels:\n  site: s%d\n", i%3)
	}
	repo.Commit(files, "fleet")
	return repo
}

func webApp(v string) string {
	return "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\nenv:\n  VERSION: \"" + v + "\"\n"
}

// TestRolloutCommands drives `shoal rollout` against `shoal hub --fleet`
// while devices (real clients over mutual TLS) report: status in text and
// JSON, approve, pause, resume and abort, and their errors.
func TestRolloutCommands(t *testing.T) {
	ctx := t.Context()
	repo := rolloutRepo(t, 3)
	h := serveHub(t, "--fleet", "file://"+repo.Dir, "--fleet-refresh", "1s")
	hubURL := "https://" + h.addr
	render := func(id string) string {
		fsys, _, err := gitfs.Open(repo.Dir, "HEAD")
		if err != nil {
			t.Fatal(err)
		}
		f, err := spec.Load(fsys)
		if err != nil {
			t.Fatal(err)
		}
		d, err := f.Render(id)
		if err != nil {
			t.Fatal(err)
		}
		return d.Hash()
	}
	c1 := strings.TrimSpace(repo.Git("rev-parse", "HEAD"))
	type dev struct {
		id  string
		cl  *client.Client
		seq uint64
	}
	var devs []*dev
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("r%d", i)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		cert, err := client.Enrol(ctx, hubURL, h.token(id), key, api.KeySoftware, client.EnrolOptions{RootCAs: h.pool})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(client.Options{Hub: hubURL, Key: key, Cert: cert})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.CloseIdleConnections)
		d := &dev{id: id, cl: cl}
		devs = append(devs, d)
	}
	report := func(d *dev, commit string) {
		d.seq++
		s := &api.Status{APIVersion: api.Version, Seq: d.seq, Time: time.Now().UTC(), State: api.StateConverged,
			Commit: api.CommitStatus{Applied: commit, Attempted: commit, SpecHash: render(d.id)}}
		if _, err := d.cl.Send(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range devs {
		report(d, c1)
	}
	op, err := hub.CreateOperatorToken(ctx, h.st, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	ca, _ := h.st.CA(ctx)
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"SHOAL_OPERATOR_TOKEN=" + op, "SHOAL_HUB=" + hubURL, "SHOAL_HUB_CA=" + caFile}
	status := func() api.RolloutView {
		code, out, errs := (inProcess{}).run(t, env, "rollout", "status", "--output", "json", "--devices")
		if code != 0 {
			t.Fatalf("rollout status: exit %d: %s", code, errs)
		}
		var v api.RolloutView
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("rollout status --output json: %v\n%s", err, out)
		}
		return v
	}
	repo.Commit(map[string]string{"apps/web.yaml": webApp("2")}, "web 2")
	c2 := strings.TrimSpace(repo.Git("rev-parse", "HEAD"))
	var v api.RolloutView
	eventually(t, "the rollout of the new commit with its canary admitted", func() bool {
		v = status()
		return v.Commit == c2 && len(v.Tracks) == 1 && v.Tracks[0].Waves[0].Counts.Admitted == 1
	})
	// The canary takes it; the rest waits for approval.
	for _, d := range devs {
		nonce := make([]byte, 16)
		_, _ = rand.Read(nonce)
		res, err := d.cl.Grant(ctx, &api.GrantRequest{APIVersion: api.Version, Commit: c2, SpecHash: render(d.id), Nonce: nonce})
		if err != nil {
			t.Fatal(err)
		}
		if res.Grant != nil {
			report(d, c2)
		}
	}
	eventually(t, "the rest wave waiting for approval", func() bool {
		v = status()
		return v.Tracks[0].Waves[0].State == "passed" && v.Tracks[0].Waves[1].State == "waiting"
	})
	code, out, errs := (inProcess{}).run(t, env, "rollout", "status")
	if code != 0 {
		t.Fatalf("status: %d %s", code, errs)
	}
	for _, want := range []string{"rollout ", "of " + c2[:12] + ": running", "track fleet", "1 canary", "passed", "2 rest", "waiting (needs approval)", "events (newest first):", "wave-passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
	steps := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"rollout", "pause", "--reason", "night shift"}, 0, "pause: rollout"},
		{[]string{"rollout", "approve", "--commit", c2[:10]}, 0, "approve: rollout"},
		{[]string{"rollout", "approve", "--wave", "nope"}, exitInvalid, `no wave "nope"`},
		{[]string{"rollout", "resume"}, 0, "resume: rollout"},
		{[]string{"rollout", "status", "--commit", "ffff"}, exitInvalid, "no rollout of commit ffff"},
		{[]string{"rollout", "status", "--output", "yaml"}, exitUsage, "--output"},
		{[]string{"rollout", "pause", "--commit", "not-hex"}, exitUsage, "commit"},
	}
	for _, s := range steps {
		code, out, errs := (inProcess{}).run(t, env, s.args...)
		if code != s.code || !strings.Contains(out+errs, s.want) {
			t.Fatalf("%v: exit %d, want %d with %q:\n%s%s", s.args, code, s.code, s.want, out, errs)
		}
	}
	eventually(t, "the approved wave open", func() bool {
		v = status()
		return v.Tracks[0].Waves[1].Counts.Admitted == 2
	})
	kinds := map[string]bool{}
	for _, e := range v.Events {
		kinds[e.Kind] = true
		if e.Kind == "paused" && !strings.Contains(e.Message, "night shift") {
			t.Errorf("pause event without its reason: %+v", e)
		}
	}
	for _, k := range []string{"paused", "approved", "resumed"} {
		if !kinds[k] {
			t.Errorf("no %s event: %+v", k, v.Events)
		}
	}
	if code, out, errs := (inProcess{}).run(t, env, "rollout", "abort", "--output", "json"); code != 0 || !strings.Contains(out, `"aborted": true`) {
		t.Fatalf("abort: %d %s %s", code, out, errs)
	}
	eventually(t, "the rollout aborted", func() bool { return status().Status == "aborted" })
}

// TestDiffAndPlanShowWaves: shoal diff and shoal plan say which wave of the
// rollout each changed device falls in.
func TestDiffAndPlanShowWaves(t *testing.T) {
	repo := rolloutRepo(t, 6)
	repo.Commit(map[string]string{"apps/web.yaml": webApp("2")}, "web 2")
	code, out, errs := (inProcess{}).run(t, nil, "diff", "HEAD~1", "HEAD", repo.Dir)
	if code != 0 {
		t.Fatalf("diff: %d %s", code, errs)
	}
	if n := strings.Count(out, "(rollout: track fleet, wave 1 of 2 (canary))"); n != 1 {
		t.Errorf("%d devices in the canary wave, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, "(rollout: track fleet, wave 2 of 2 (rest))"); n != 5 {
		t.Errorf("%d devices in the rest wave, want 5:\n%s", n, out)
	}
	if !strings.Contains(out, "fleet wave 1 (canary): 1, fleet wave 2 (rest): 5") {
		t.Errorf("no wave summary:\n%s", out)
	}
	code, out, _ = (inProcess{}).run(t, nil, "diff", "--json", "HEAD~1", "HEAD", repo.Dir)
	var diffs []struct {
		ID      string     `json:"id"`
		Rollout *wavePlace `json:"rollout"`
	}
	if err := json.Unmarshal([]byte(out), &diffs); code != 0 || err != nil || len(diffs) != 6 || diffs[0].Rollout == nil || diffs[0].Rollout.Waves != 2 {
		t.Fatalf("diff --json: %d %v %+v", code, err, diffs)
	}
	place := func(id string) string {
		for _, d := range diffs {
			if d.ID == id {
				return d.Rollout.String()
			}
		}
		return ""
	}
	// plan, against the real Engine (it writes nothing), says the same.
	dockertest.Client(t)
	prefix := "planwave-" + strings.ToLower(t.Name()) + "-"
	code, out, errs = (inProcess{}).run(t, nil, "plan", "--prefix", prefix, "--device", "r1", repo.Dir)
	if code != 0 || !strings.Contains(out, "rollout: "+place("r1")+"\n") || !strings.Contains(out, "device r1:") {
		t.Fatalf("plan: exit %d, want the wave %q:\n%s%s", code, place("r1"), out, errs)
	}
	if p, note := planWave(repo.Dir, "r1", "HEAD"); p != nil || !strings.Contains(note, "does not change this device since HEAD: no grant needed") {
		t.Errorf("plan since HEAD: %v %q", p, note)
	}
}
