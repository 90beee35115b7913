package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/rollout"
)

// fakeGranter answers grant requests as a hub would, or as told.
type fakeGranter struct {
	key   *ecdsa.PrivateKey // signs grants
	caPEM []byte            // what the device trusts

	mu    sync.Mutex
	reqs  []api.GrantRequest
	wait  *api.GrantWait // non-nil: answer with this wait
	err   error          // non-nil: fail the call
	forge *ecdsa.PrivateKey
	// replay answers with a grant signed over the first request's nonce.
	replay bool
}

func newFakeGranter(t *testing.T) *fakeGranter {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hub CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeGranter{key: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (g *fakeGranter) HubCA() []byte { return g.caPEM }

func (g *fakeGranter) Grant(_ context.Context, req *api.GrantRequest) (*api.GrantResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.reqs = append(g.reqs, *req)
	if g.err != nil {
		return nil, g.err
	}
	if g.wait != nil {
		return &api.GrantResponse{APIVersion: api.Version, Wait: g.wait}, nil
	}
	key, nonce := g.key, req.Nonce
	if g.forge != nil {
		key = g.forge
	}
	if g.replay {
		nonce = g.reqs[0].Nonce
	}
	gr, err := rollout.Sign(key, api.GrantBody{ID: "g-1", Device: "d1", Commit: req.Commit, SpecHash: req.SpecHash, Rollout: 1, Wave: "canary", Why: "wave", Nonce: nonce, Issued: time.Now()})
	if err != nil {
		return nil, err
	}
	return &api.GrantResponse{APIVersion: api.Version, Grant: gr}, nil
}

func (g *fakeGranter) set(f func(g *fakeGranter)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

func (g *fakeGranter) asked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.reqs)
}

// rolloutFiles is fleetFiles with a rollout section (offline policy as given).
func rolloutFiles(offline string) map[string]string {
	f := fleetFiles()
	f["fleet.cue"] += "rollout: {offline: \"" + offline + "\", waves: [{name: \"canary\", limit: 1}]}\n"
	return f
}

func newGrantAgent(t *testing.T, repo *gitRepo, g Granter, stages ...Stage) (*Agent, *syncWriter) {
	t.Helper()
	cfg := testConfig(t, repo.URL())
	a, logs := newTestAgent(t, cfg, stages...)
	a.o.Granter = g
	return a, logs
}

func TestAgentWaitsForGrant(t *testing.T) {
	ctx := t.Context()
	repo := newGitRepo(t)
	c1 := repo.Commit(rolloutFiles("wait"), "base")
	g := newFakeGranter(t)
	stage := &fakeStage{name: "containers"}
	a, logs := newGrantAgent(t, repo, g, stage)
	// The first commit changes the spec from nothing: it needs a grant too.
	rep, err := a.Pass(ctx, "start")
	if err != nil || !rep.Converged() || a.State().Applied.Commit != c1 {
		t.Fatalf("first pass: %v %+v", err, rep.Status)
	}
	if rs := rep.Status.Rollout; rs == nil || rs.State != api.RolloutGranted || rs.Grant != "g-1" || rs.Wave != "canary" {
		t.Fatalf("rollout status = %+v", rs)
	}
	applied := a.State().Applied

	// A new commit while the hub says wait: held, the device stays converged on c1.
	files := rolloutFiles("wait")
	files["apps/web.yaml"] = strings.Replace(files["apps/web.yaml"], "LOG: info", "LOG: debug", 1)
	c2 := repo.Commit(files, "web: debug logs")
	g.set(func(g *fakeGranter) {
		g.wait = &api.GrantWait{Reason: api.WaitWave, Track: "fleet", Wave: "rest", WaveIndex: 2, Waves: 2, Message: "wave 2 (rest) opens after wave 1 (canary) bakes: 4m left", RetryAfter: 4 * time.Minute}
	})
	calls := stage.calls()
	rep, err = a.Pass(ctx, "poll")
	if err != nil {
		t.Fatal(err)
	}
	st := a.State()
	if st.Applied != applied || rep.Status.State != api.StateConverged || rep.Status.Problem != nil || stage.calls() != calls {
		t.Fatalf("held pass: applied %+v, state %s, problem %+v, stage calls %d -> %d", st.Applied, rep.Status.State, rep.Status.Problem, calls, stage.calls())
	}
	if rs := rep.Status.Rollout; rs == nil || rs.Commit != c2 || rs.State != api.RolloutWaiting || rs.Reason != api.WaitWave || rs.Wave != "rest" || !strings.Contains(rs.Message, "bakes") {
		t.Fatalf("held status = %+v", rs)
	}
	if rep.Status.Commit.Attempted != c2 || !a.held || a.holdRetry != 4*time.Minute {
		t.Errorf("attempted %s, held %v retry %v", rep.Status.Commit.Attempted, a.held, a.holdRetry)
	}
	if !strings.Contains(logs.String(), "holding commit for the rollout") {
		t.Error("no log of the hold")
	}
	req := g.reqs[len(g.reqs)-1]
	if req.Commit != c2 || req.Applied != c1 || req.AppliedSpec != applied.SpecHash || len(req.Nonce) != 16 {
		t.Errorf("request = %+v", req)
	}

	// A forged grant, then a replayed one: refused, still held.
	for _, tc := range []struct {
		name   string
		set    func(g *fakeGranter)
		reason string
	}{
		{"forged", func(g *fakeGranter) {
			g.wait = nil
			g.forge, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}, "grant-forged"},
		{"replayed", func(g *fakeGranter) { g.forge, g.replay = nil, true }, "grant-replayed"},
	} {
		g.set(tc.set)
		rep, err = a.Pass(ctx, "poll")
		if err != nil {
			t.Fatal(err)
		}
		if rs := rep.Status.Rollout; rs == nil || rs.State != api.RolloutWaiting || rs.Reason != tc.reason || a.State().Applied.Commit != c1 {
			t.Fatalf("%s grant: status %+v, applied %s", tc.name, rs, a.State().Applied.Commit)
		}
	}
	// A good grant: converged on c2.
	g.set(func(g *fakeGranter) { g.replay = false })
	rep, err = a.Pass(ctx, "poke")
	if err != nil || !rep.Converged() || a.State().Applied.Commit != c2 {
		t.Fatalf("granted pass: %v %+v", err, rep.Status)
	}
	if rs := rep.Status.Rollout; rs == nil || rs.State != api.RolloutGranted || rs.Commit != c2 {
		t.Fatalf("status = %+v", rs)
	}
	// A commit that does not change the spec asks nothing.
	n := g.asked()
	files["README.md"] = "docs only\n"
	repo.Commit(files, "docs")
	if _, err := a.Pass(ctx, "poll"); err != nil || g.asked() != n {
		t.Fatalf("a commit that changes nothing asked for a grant: %v, %d -> %d", err, n, g.asked())
	}
}

func TestAgentOfflinePolicy(t *testing.T) {
	for _, tc := range []struct {
		policy string
		apply  bool
		state  string
	}{
		{"wait", false, api.RolloutWaiting},
		{"apply", true, api.RolloutOfflineApplied},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			repo := newGitRepo(t)
			c1 := repo.Commit(rolloutFiles(tc.policy), "base")
			g := newFakeGranter(t)
			g.err = errors.New("dial tcp: connection refused")
			a, _ := newGrantAgent(t, repo, g, &fakeStage{name: "containers"})
			rep, err := a.Pass(t.Context(), "start")
			if err != nil {
				t.Fatal(err)
			}
			rs := rep.Status.Rollout
			if rs == nil || rs.State != tc.state || rs.Reason != api.WaitUnreachable {
				t.Fatalf("status = %+v", rs)
			}
			if got := a.State().Applied.Commit == c1; got != tc.apply {
				t.Fatalf("applied c1 = %v, want %v", got, tc.apply)
			}
			if !tc.apply && (!a.held || a.holdRetry != 0) {
				t.Errorf("held %v retry %v: want a backoff", a.held, a.holdRetry)
			}
		})
	}
}

// TestAgentInvalidRolloutKeepsLastGood: a commit whose rollout section is
// invalid is refused like any invalid spec, with file:line, and the device
// keeps the policy (and commit) it had.
func TestAgentInvalidRolloutKeepsLastGood(t *testing.T) {
	repo := newGitRepo(t)
	c1 := repo.Commit(rolloutFiles("wait"), "base")
	g := newFakeGranter(t)
	a, _ := newGrantAgent(t, repo, g, &fakeStage{name: "containers"})
	if rep, err := a.Pass(t.Context(), "start"); err != nil || !rep.Converged() {
		t.Fatalf("%v %+v", err, rep.Status)
	}
	files := fleetFiles()
	files["fleet.cue"] += "rollout: waves: [{limit: \"150%\"}, {name: \"rest\"}]\n"
	repo.Commit(files, "bad rollout")
	rep, err := a.Pass(t.Context(), "poll")
	if err != nil {
		t.Fatal(err)
	}
	p := rep.Status.Problem
	if rep.Status.State != api.StateStalled || p == nil || p.Reason != "spec-invalid" || !strings.Contains(p.Message, "fleet.cue:") || !strings.Contains(p.Message, "150% is more than 100%") {
		t.Fatalf("state %s, problem %+v", rep.Status.State, p)
	}
	if a.State().Applied.Commit != c1 {
		t.Fatal("the applied commit moved")
	}
}
