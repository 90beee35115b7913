package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/sdnotify"
)

// runAgent runs a.Run in the background and stops it at cleanup.
func runAgent(t *testing.T, a *Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not stop within 10s of cancel")
		}
	})
}

type fakePoker struct {
	pokes chan *api.Poke
	calls atomic.Int32
}

func (p *fakePoker) WaitPoke(ctx context.Context, after int64) (*api.Poke, error) {
	p.calls.Add(1)
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case pk := <-p.pokes:
		return pk, nil
	}
}

func TestRunTriggers(t *testing.T) {
	r := newGitRepo(t)
	r.Commit(fleetFiles(), "fleet")
	cfg := testConfig(t, "file://"+r.Dir)
	cfg.PollInterval = Duration(time.Hour) // only triggers start passes here
	cfg.BundleDir = t.TempDir()
	stage := &fakeStage{name: "containers"}
	a, _ := newTestAgent(t, cfg, stage)
	poker := &fakePoker{pokes: make(chan *api.Poke)}
	a.o.Poker = poker
	h := newHub()
	a.o.Reporter = h
	runAgent(t, a)
	passes := func() uint64 { return a.State().Passes }
	waitFor(t, 10*time.Second, "the first pass", func() bool { return passes() == 1 })

	// A poke from the hub: a pass at once, for the new commit.
	c2 := r.Commit(map[string]string{"devices/d1.yaml": "labels:\n  role: web\n  poked: \"yes\"\n"}, "poke me")
	poker.pokes <- &api.Poke{APIVersion: api.Version, ID: 1, Reason: "webhook", Time: time.Now()}
	waitFor(t, 10*time.Second, "a pass after the poke", func() bool { return a.State().Applied.Commit == c2 })

	// SIGHUP (cmd maps it to Trigger).
	n := passes()
	a.Trigger("sighup")
	waitFor(t, 10*time.Second, "a pass after SIGHUP", func() bool { return passes() > n })

	// A new bundle in the bundle dir.
	c3 := r.Commit(map[string]string{"devices/d1.yaml": "labels:\n  role: web\n  usb: \"yes\"\n"}, "from usb")
	tmp := filepath.Join(t.TempDir(), "x.bundle")
	r.Git("bundle", "create", "-q", tmp, "main")
	if err := os.Rename(tmp, filepath.Join(cfg.BundleDir, "fleet.bundle")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the bundle applied", func() bool { return a.State().Applied.Commit == c3 })
	if a.State().LastPass.Trigger != "bundle" {
		t.Fatalf("last trigger %q, want bundle", a.State().LastPass.Trigger)
	}
	// Every report reaches the hub, in order.
	waitFor(t, 10*time.Second, "delivery", func() bool { return a.Outbox().Depth() == 0 })
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, seq := range h.got {
		if seq != uint64(i+1) {
			t.Fatalf("delivered %v: not 1..n in order", h.got)
		}
	}
}

// flakyProxy forwards TCP to target; while cut is set, it closes each
// connection after the server has sent limit bytes (a server dying mid-fetch).
type flakyProxy struct {
	l      net.Listener
	target string
	cut    atomic.Bool
	limit  int64
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string, limit int64) *flakyProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{l: l, target: target, limit: limit}
	p.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.serve(c) })
		}
	})
	t.Cleanup(func() { l.Close(); p.wg.Wait() })
	return p
}

func (p *flakyProxy) serve(c net.Conn) {
	defer c.Close()
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer s.Close()
	go func() { io.Copy(s, c); s.(*net.TCPConn).CloseWrite() }()
	if p.cut.Load() {
		io.CopyN(c, s, p.limit)
		return
	}
	io.Copy(c, s)
}

func TestGitServerDiesMidFetch(t *testing.T) {
	r := newGitRepo(t)
	c1 := r.Commit(fleetFiles(), "fleet")
	d := startGitDaemon(t, filepath.Dir(r.Dir))
	proxy := startProxy(t, d, 2048)
	cfg := testConfig(t, "git://"+proxy.l.Addr().String()+"/fleet")
	cfg.PollInterval = Duration(time.Hour)
	a, logs := newTestAgent(t, cfg, &fakeStage{name: "containers"})
	if rep, err := a.Pass(t.Context(), "poll"); err != nil || !rep.Converged() {
		t.Fatalf("first pass: %v", err)
	}
	// A big new commit; the server dies 2 KiB into sending it.
	big := make([]byte, 4<<20)
	for i := range big {
		big[i] = byte(i*7919 + i/13)
	}
	f := fleetFiles()
	c2 := r.Commit(map[string]string{"images/blob.bin": string(big), "devices/d1.yaml": f["devices/d1.yaml"] + "  big: \"1\"\n"}, "big")
	proxy.cut.Store(true)
	runAgent(t, a)
	waitFor(t, 20*time.Second, "two failed passes", func() bool {
		st := a.State()
		return st.Passes >= 3 && st.LastPass.Status.Problem != nil
	})
	st := a.State()
	if st.Applied.Commit != c1 || st.LastPass.Status.State != api.StateWaiting || st.LastPass.Status.Problem.Reason != "git-unreachable" {
		t.Fatalf("mid-fetch death: applied %s state %s problem %+v", st.Applied.Commit, st.LastPass.Status.State, st.LastPass.Status.Problem)
	}
	if !strings.Contains(logs.String(), "retrying") {
		t.Fatalf("no retry logged:\n%s", logs)
	}
	proxy.cut.Store(false)
	waitFor(t, 20*time.Second, "recovery after the server is back", func() bool { return a.State().Applied.Commit == c2 })
}

func TestMetricsAndHealthz(t *testing.T) {
	r := newGitRepo(t)
	r.Commit(fleetFiles(), "fleet")
	for _, pprofOn := range []bool{false, true} {
		cfg := testConfig(t, "file://"+r.Dir)
		cfg.MetricsAddr = "127.0.0.1:0"
		cfg.Pprof = pprofOn
		a, _ := newTestAgent(t, cfg, &fakeStage{name: "containers"})
		if _, err := a.Pass(t.Context(), "poll"); err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(a.Handler())
		get := func(path string) (int, string) {
			resp, err := http.Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		code, body := get("/metrics")
		for _, m := range []string{"shoal_agent_pass_duration_seconds_bucket", "shoal_agent_last_success_timestamp_seconds",
			"shoal_agent_commit_info{commit=", "shoal_agent_outbox_depth 1", "shoal_agent_outbox_dropped_total 0",
			`shoal_agent_passes_total{state="converged"} 1`} {
			if code != 200 || !strings.Contains(body, m) {
				t.Fatalf("/metrics lacks %q (code %d)", m, code)
			}
		}
		if code, body := get("/healthz"); code != 200 || !strings.Contains(body, `"converged":true`) {
			t.Fatalf("/healthz: %d %s", code, body)
		}
		if code, _ := get("/debug/pprof/"); (code == 200) != pprofOn {
			t.Fatalf("pprof=%v but /debug/pprof/ answered %d", pprofOn, code)
		}
		srv.Close()
	}
}

func TestSdNotifyReadyAndWatchdog(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "")
	r := newGitRepo(t)
	r.Commit(fleetFiles(), "fleet")
	cfg := testConfig(t, "file://"+r.Dir)
	a, _ := newTestAgent(t, cfg)
	a.o.Notify = sdnotify.Notify
	runAgent(t, a)
	seen := map[string]bool{}
	buf := make([]byte, 256)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !seen["READY=1"] || !seen["WATCHDOG=1"] {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("notify socket: %v (seen %v)", err, seen)
		}
		seen[string(buf[:n])] = true
	}
}
