package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// hubProcess is `shoal hub` running as its own process (so it can be
// killed with SIGKILL), on a SQLite database the test also opens.
type hubProcess struct {
	bin, db, addr string
	args          []string
	cmd           *exec.Cmd
	log           *bytes.Buffer
	done          chan struct{}
}

func buildShoal(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shoal")
	out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "github.com/shoalfleet/shoal/cmd/shoal").CombinedOutput()
	if err != nil {
		t.Fatalf("build shoal: %v\n%s", err, out)
	}
	return bin
}

func (h *hubProcess) start(t *testing.T) {
	t.Helper()
	h.log = &bytes.Buffer{}
	h.cmd = exec.Command(h.bin, append([]string{"hub", "--listen", h.addr, "--db", h.db, "--host", "127.0.0.1"}, h.args...)...)
	h.cmd.Stderr = h.log
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(h.cmd, h.done)
}

// kill stops the hub with SIGKILL: no shutdown, no lease released.
func (h *hubProcess) kill() {
	h.cmd.Process.Signal(syscall.SIGKILL)
	<-h.done
}

func (h *hubProcess) stop() {
	select {
	case <-h.done:
		return
	default:
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
	}
}

// agentProcess is a wired shoal-agent daemon.
type agentProcess struct {
	id, cfg, state string
	cmd            *exec.Cmd
	log            *bytes.Buffer
	done           chan struct{}
}

func (a *agentProcess) start(t *testing.T) {
	t.Helper()
	a.cmd = agentCmd("--config", a.cfg)
	a.cmd.Env = append(a.cmd.Env, "SHOAL_AGENT_WIRED=1")
	a.log = &bytes.Buffer{}
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.done = make(chan struct{})
	go func() { a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(30 * time.Second):
			a.cmd.Process.Kill()
			<-a.done
		}
		if t.Failed() {
			t.Logf("agent %s log:\n%s", a.id, tail(a.log.String(), 60))
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (a *agentProcess) stateNow(t *testing.T) *agent.State {
	t.Helper()
	st, err := agent.ReadState(a.state)
	if err != nil {
		return &agent.State{}
	}
	return st
}

// TestRolloutWithRealAgents: three real agents (their own processes, real
// Docker containers), a real `shoal hub --fleet` process on SQLite and a
// real Git fleet repo.
//   - A commit that breaks the app's health check halts the rollout on its
//     first wave: the canary rolls its app back, and no device of the next
//     wave applies the commit; the commit that reverts it reaches every
//     device at once.
//   - The hub is killed (SIGKILL) while a wave bakes and started again: the
//     rollout resumes where it was, no device gets a second grant, and no
//     status report is lost.
func TestRolloutWithRealAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three agents, a hub and Docker containers")
	}
	t0 := time.Now()
	logf := func(format string, args ...any) {
		t.Logf("%5.1fs "+format, append([]any{time.Since(t0).Seconds()}, args...)...)
	}
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	tag := "shoal-rollout-test:" + label
	dockertest.Image(t, cli, tag, label, nil)
	tarBytes, tarSum := dockertest.SaveImage(t, cli, tag)
	network := "net-" + label
	app := func(version string, broken bool) string {
		cmd := `["-listen", ":8080"]`
		if broken {
			cmd = `["-listen", ":8080", "-unhealthy"]`
		}
		return fmt.Sprintf(`image:
  ref: %s
  source:
    path: images/web.tar
    sha256: %s
command: %s
env:
  VERSION: "%s"
healthcheck:
  test: ["CMD", "/app", "-probe", "http://127.0.0.1:8080/healthz"]
  interval: 500ms
  timeout: 2s
  retries: 2
health_timeout: 8s
labels:
  %s: %s
`, tag, tarSum, cmd, version, dockertest.LabelKey, label)
	}
	fleetYAML := func(bake string) string {
		return fmt.Sprintf(`spec:
  network: %s
rollout:
  waves:
    - {name: canary, limit: 1, bake: %s}
    - {name: rest, bake: 0s}
`, network, bake)
	}
	repo := testenv.NewRepo(t)
	files := map[string]string{
		"fleet.yaml":      fleetYAML("1s"),
		"groups/all.yaml": "selector: {}\nspec:\n  apps:\n    web: {}\n",
		"apps/web.yaml":   app("1", false),
		"images/web.tar":  string(tarBytes),
	}
	ids := []string{"d1", "d2", "d3"}
	for _, id := range ids {
		files["devices/"+id+".yaml"] = "labels:\n  role: web\n"
	}
	c1 := strings.TrimSpace(repo.Commit(files, "web 1"))

	// The hub, as its own process, following the fleet repo.
	bin := buildShoal(t)
	logf("shoal built")
	h := &hubProcess{bin: bin, db: "sqlite://" + filepath.Join(t.TempDir(), "hub.db"), addr: testenv.FreeAddr(t),
		args: []string{"--fleet", "file://" + repo.Dir, "--fleet-refresh", "1s", "--poll-wait", "20s"}}
	h.start(t)
	t.Cleanup(func() {
		h.stop()
		if t.Failed() {
			t.Logf("hub log:\n%s", tail(h.log.String(), 80))
		}
	})
	st, err := store.Open(t.Context(), h.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	hubURL := "https://" + h.addr
	var caPEM []byte
	waitUntil(t, "the hub CA", func() bool {
		ca, err := st.CA(t.Context())
		caPEM = ca.CertPEM
		return err == nil
	})
	b, _ := pem.Decode(caPEM)
	fp := sha256.Sum256(b.Bytes)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	t.Cleanup(hc.CloseIdleConnections)
	waitUntil(t, "the hub healthy", func() bool {
		resp, err := hc.Get(hubURL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	op, err := hub.CreateOperatorToken(t.Context(), st, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	view := func() api.RolloutView {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", hubURL+"/v1/admin/rollouts/current?devices=1", nil)
		req.Header.Set("Authorization", "Bearer "+op)
		resp, err := hc.Do(req)
		if err != nil {
			return api.RolloutView{}
		}
		defer resp.Body.Close()
		var v api.RolloutView
		_ = json.NewDecoder(resp.Body).Decode(&v)
		return v
	}
	poke := func() {
		body, _ := json.Marshal(&api.PokeRequest{APIVersion: api.Version, Reason: "operator"})
		req, _ := http.NewRequestWithContext(t.Context(), "POST", hubURL+"/v1/admin/pokes", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+op)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
		}
	}

	// Three agents, enrolled, each with its own containers.
	var agents []*agentProcess
	for _, id := range ids {
		dir := t.TempDir()
		prefix := "ro-" + label + "-" + id + "-"
		t.Cleanup(func() { removeByPrefix(t, prefix, network) })
		a := &agentProcess{id: id, cfg: filepath.Join(dir, "agent.yaml"), state: filepath.Join(dir, "state")}
		cfg := fmt.Sprintf(`device_id: %s
state_dir: %s
repo:
  url: file://%s
metrics_addr: ""
docker_root: ""
poll_interval: 1m
retry_min: 200ms
retry_max: 2s
containers:
  enabled: true
  prefix: %s
trust:
  tpm: none
hub_url: %s
`, id, a.state, repo.Dir, prefix, hubURL)
		if err := os.WriteFile(a.cfg, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		tok, err := hub.CreateEnrolToken(t.Context(), st, id, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if code := run(t.Context(), []string{"enrol", "--config", a.cfg, "--hub", hubURL, "--token", tok.Token, "--ca-fingerprint", hex.EncodeToString(fp[:])}); code != exitOK {
			t.Fatalf("enrol %s: exit %d", id, code)
		}
		a.start(t)
		agents = append(agents, a)
	}
	logf("agents enrolled and started")
	allApplied := func(commit string) bool {
		for _, a := range agents {
			if a.stateNow(t).Applied.Commit != commit {
				return false
			}
		}
		return true
	}
	waitUntil(t, "every agent on the first commit", func() bool { return allApplied(c1) })
	logf("every agent on the first commit")

	// A commit that breaks the app's health check: the canary takes it,
	// rolls its app back, and the rollout halts on the first wave.
	files["apps/web.yaml"] = app("2", true)
	c2 := strings.TrimSpace(repo.Commit(files, "web 2: broken health check"))
	poke()
	var v api.RolloutView
	waitUntil(t, "the rollout of the broken commit halted", func() bool {
		v = view()
		return v.Commit == c2 && v.Status == "halted"
	})
	if v.Counts.FailedGates["apps_healthy"] != 1 || v.Tracks[0].Waves[0].State != "halted" {
		t.Fatalf("halted rollout: counts %+v, waves %+v", v.Counts, v.Tracks[0].Waves)
	}
	canary := v.Tracks[0].Waves[0].Devices[0].ID
	logf("the broken commit halted at its canary %s", canary)
	held := 0
	waitUntil(t, "the others holding the commit", func() bool {
		held = 0
		for _, a := range agents {
			if r := a.stateNow(t).Rollout; a.id != canary && r != nil && r.Commit == c2 && r.State == api.RolloutWaiting {
				held++
			}
		}
		return held == 2
	})
	for _, a := range agents {
		s := a.stateNow(t)
		if s.Applied.Commit != c1 {
			t.Errorf("%s applied %s, want the first commit still", a.id, s.Applied.Commit)
		}
		if a.id != canary {
			assertVersion(t, cli, "ro-"+label+"-"+a.id+"-web", "1")
		}
	}

	// The revert reaches every device at once: no grant needed, no bake.
	files["apps/web.yaml"] = app("1", false)
	c3 := strings.TrimSpace(repo.Commit(files, "Revert web 2"))
	start := time.Now()
	poke()
	waitUntil(t, "every agent on the revert", func() bool { return allApplied(c3) })
	logf("the revert reached all devices in %v", time.Since(start).Round(time.Millisecond))

	// A good commit with a long canary bake; the hub is killed while it bakes.
	files["apps/web.yaml"] = app("3", false)
	files["fleet.yaml"] = fleetYAML("10s")
	c4 := strings.TrimSpace(repo.Commit(files, "web 3"))
	poke()
	waitUntil(t, "the canary wave baking", func() bool {
		v = view()
		return v.Commit == c4 && len(v.Tracks) == 1 && v.Tracks[0].Waves[0].State == "baking"
	})
	id4 := v.ID
	h.kill()
	logf("hub killed while wave 1 baked")
	h.start(t)
	waitUntil(t, "the rollout done after the restart", func() bool {
		v = view()
		return v.Commit == c4 && v.Status == "done"
	})
	if v.ID != id4 {
		t.Errorf("the restarted hub runs rollout %d, want %d resumed", v.ID, id4)
	}
	waitUntil(t, "every agent on the good commit", func() bool { return allApplied(c4) })
	logf("every agent on the good commit after the restart")
	members, err := st.RolloutMembers(t.Context(), id4)
	if err != nil {
		t.Fatal(err)
	}
	grants := map[string]string{}
	for _, m := range members {
		grants[m.DeviceID] = m.GrantID
	}
	for _, a := range agents {
		r := a.stateNow(t).Rollout
		if r == nil || r.Commit != c4 || r.Grant == "" || r.Grant != grants[a.id] {
			t.Errorf("%s: rollout standing %+v, hub's grant %q: a device must hold the one grant the hub recorded", a.id, r, grants[a.id])
		}
		assertVersion(t, cli, "ro-"+label+"-"+a.id+"-web", "3")
	}
	if len(members) != 3 {
		t.Errorf("%d members, want 3", len(members))
	}
	// No report lost: the hub holds every report each agent numbered.
	for _, a := range agents {
		var meta struct {
			Seq uint64 `json:"seq"`
		}
		waitUntil(t, a.id+"'s outbox delivered", func() bool {
			b, err := os.ReadFile(filepath.Join(a.state, "outbox", "meta.json"))
			if err != nil || json.Unmarshal(b, &meta) != nil {
				return false
			}
			d, err := st.Device(t.Context(), a.id)
			return err == nil && d.LatestSeq == meta.Seq
		})
		reps, err := st.Reports(t.Context(), a.id, 100000)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[uint64]bool{}
		for _, r := range reps {
			seen[r.Seq] = true
		}
		for s := uint64(1); s <= meta.Seq; s++ {
			if !seen[s] {
				t.Errorf("%s: report %d of %d lost", a.id, s, meta.Seq)
			}
		}
	}
}

// assertVersion checks the app container's VERSION.
func assertVersion(t *testing.T, cli interface {
	ContainerList(context.Context, container.ListOptions) ([]container.Summary, error)
	ContainerInspect(context.Context, string) (container.InspectResponse, error)
}, name, want string) {
	t.Helper()
	list, err := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		ci, err := cli.ContainerInspect(context.Background(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ci.Config.Env {
			if v, ok := strings.CutPrefix(e, "VERSION="); ok && v != want {
				t.Errorf("%s runs VERSION %s, want %s", name, v, want)
			}
		}
	}
}
