package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	shoalhub "github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
)

// realHub runs the Shoal hub on SQLite over mutual TLS on loopback; it can
// be stopped and started again on the same address and database.
type realHub struct {
	t      *testing.T
	st     store.Store
	h      *shoalhub.Hub
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func startRealHub(t *testing.T, st store.Store, addr string) *realHub {
	t.Helper()
	h, err := shoalhub.New(t.Context(), shoalhub.Options{Store: st, PollWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	rh := &realHub{t: t, st: st, h: h, addr: l.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { rh.done <- h.Run(ctx, l) }()
	t.Cleanup(rh.stop)
	return rh
}

func (rh *realHub) stop() {
	if rh.cancel != nil {
		rh.cancel()
		if err := <-rh.done; err != nil {
			rh.t.Errorf("hub: %v", err)
		}
		rh.cancel = nil
	}
}

// TestAgentWithRealHub: the outbox delivers to the real hub through the real
// client, a poke from the hub starts a pass, and reports queued while the
// hub is down arrive in order once it is back.
func TestAgentWithRealHub(t *testing.T) {
	st, err := store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "hub.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rh := startRealHub(t, st, "127.0.0.1:0")
	url := "https://" + rh.addr

	tok, err := shoalhub.CreateEnrolToken(t.Context(), st, "d1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, err := client.Enrol(t.Context(), url, tok.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: rh.h.CAFingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(client.Options{Hub: url, Key: key, Cert: cert, PollWait: 2 * time.Second, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseIdleConnections)

	r := newGitRepo(t)
	c1 := r.Commit(fleetFiles(), "fleet")
	cfg := testConfig(t, "file://"+r.Dir)
	cfg.PollInterval = Duration(time.Hour)
	cfg.RetryMax = Duration(200 * time.Millisecond)
	a, logs := newTestAgent(t, cfg, &fakeStage{name: "containers"})
	a.o.Reporter, a.o.Poker = cl, cl
	runAgent(t, a)

	latest := func() (api.Status, int) {
		reps, err := st.Reports(t.Context(), "d1", 1000)
		if err != nil || len(reps) == 0 {
			return api.Status{}, 0
		}
		var s api.Status
		newest := reps[0]
		for _, rp := range reps {
			if rp.Seq > newest.Seq {
				newest = rp
			}
		}
		json.Unmarshal(newest.Body, &s)
		return s, len(reps)
	}
	waitFor(t, 20*time.Second, "the first report at the hub", func() bool {
		s, _ := latest()
		return s.Seq == 1 && s.Commit.Applied == c1 && s.State == api.StateConverged
	})

	// A poke through the hub: the agent fetches at once (its poll interval is an hour).
	c2 := r.Commit(map[string]string{"devices/d1.yaml": "labels:\n  role: web\n  poked: \"1\"\n"}, "poke")
	if _, err := rh.h.Poke(t.Context(), store.Poke{Devices: []string{"d1"}, Reason: "operator", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the poked commit reported", func() bool {
		s, _ := latest()
		return s.Commit.Applied == c2
	})

	// The hub goes away; passes go on and queue their reports.
	rh.stop()
	// A report reaches the hub before its pass has finished writing state:
	// wait for that pass, so each trigger below starts a pass of its own.
	waitFor(t, 20*time.Second, "the poked pass to finish", func() bool { return a.State().Passes >= 2 })
	for range 3 {
		n := a.State().Passes
		a.Trigger("sighup")
		waitFor(t, 20*time.Second, "a pass with the hub down", func() bool { return a.State().Passes > n })
	}
	if d := a.Outbox().Depth(); d < 3 || a.Outbox().Dropped() != 0 {
		t.Fatalf("outbox depth %d, dropped %d with the hub down: want 3 or more queued, none dropped\n%s", d, a.Outbox().Dropped(), logs)
	}
	queuedTo := a.Outbox().Seq()
	startRealHub(t, st, rh.addr)
	waitFor(t, 30*time.Second, "the outbox to drain into the restarted hub", func() bool {
		return a.Outbox().Depth() == 0
	})
	reps, err := st.Reports(t.Context(), "d1", 1000)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for _, rp := range reps {
		seen[rp.Seq] = true
	}
	for s := uint64(1); s <= queuedTo; s++ {
		if !seen[s] {
			t.Errorf("report %d never reached the hub", s)
		}
	}
}
