package hub

import (
	"bytes"
	"context"
	"crypto"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/internal/pgtest"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/rollout"
	"github.com/shoalfleet/shoal/rollout/grant"
)

// rolloutFleet is a fleet repo in Git for rollout tests: devices d1..dN,
// each running nothing but an env value that commits change.
type rolloutFleet struct {
	t    *testing.T
	repo *testenv.Repo
	n    int
	fp   *FleetPolicy
}

func newRolloutFleet(t *testing.T, n int, rolloutYAML string) *rolloutFleet {
	t.Helper()
	rf := &rolloutFleet{t: t, repo: testenv.NewRepo(t), n: n}
	files := map[string]string{
		"fleet.yaml":      "spec:\n  network: plant\nrollout:\n" + rolloutYAML,
		"groups/all.yaml": "selector: {}\nspec:\n  apps:\n    web: {}\n",
		"apps/web.yaml":   "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\nenv:\n  VERSION: \"1\"\n",
	}
	for i := 1; i <= n; i++ {
		files[fmt.Sprintf("devices/d%d.yaml", i)] = fmt.Sprintf("labels:\n  site: s%d\n", (i-1)%3)
	}
	rf.repo.Commit(files, "fleet")
	rf.fp = &FleetPolicy{Load: func(context.Context) (FleetRevision, error) {
		f, rev, err := gitfs.Open(rf.repo.Dir, "HEAD")
		if err != nil {
			return FleetRevision{}, err
		}
		return FleetRevision{FS: f, Revision: rev, Message: rf.repo.Git("log", "-1", "--format=%B")}, nil
	}}
	if err := rf.fp.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	return rf
}

// version commits the app at VERSION v (and msg), and makes the hub read it.
func (rf *rolloutFleet) version(v, msg string) string {
	rf.t.Helper()
	c := rf.repo.Commit(map[string]string{"apps/web.yaml": "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\nenv:\n  VERSION: \"" + v + "\"\n"}, msg)
	if err := rf.fp.Refresh(rf.t.Context()); err != nil {
		rf.t.Fatal(err)
	}
	return c
}

// specHash is device id's spec hash at the fleet's HEAD.
func (rf *rolloutFleet) specHash(id string) string {
	rf.t.Helper()
	f, _, _ := rf.fp.Current()
	d, err := f.Render(id)
	if err != nil {
		rf.t.Fatal(err)
	}
	return d.Hash()
}

// simDevice is an enrolled device that asks for grants and reports over
// mutual TLS as an agent would.
type simDevice struct {
	id   string
	cl   *client.Client
	seq  uint64
	spec string // applied spec hash
	at   string // applied commit
	ck   *grant.Checker
	key  crypto.Signer
}

func (th *testHub) simDevice(t *testing.T, id string) *simDevice {
	t.Helper()
	cl, key := th.enrol(t, id)
	ck, err := grant.NewChecker([]byte(cl.Certificate().CA))
	if err != nil {
		t.Fatal(err)
	}
	return &simDevice{id: id, cl: cl, ck: ck, key: key}
}

// reconnect points the device's client at another hub on the same store.
func (d *simDevice) reconnect(t *testing.T, th *testHub) *client.Client {
	t.Helper()
	cl, err := client.New(client.Options{Hub: th.URL, Key: d.key, Cert: d.cl.Certificate()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseIdleConnections)
	return cl
}

func (d *simDevice) report(t *testing.T, st api.State, commit, specHash string, mod func(*api.Status)) {
	t.Helper()
	d.seq++
	s := &api.Status{APIVersion: api.Version, DeviceID: d.id, Seq: d.seq, Time: time.Now().UTC(), State: st,
		Commit: api.CommitStatus{Applied: commit, Attempted: commit, SpecHash: specHash}}
	if mod != nil {
		mod(s)
	}
	if _, err := d.cl.Send(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	d.at, d.spec = s.Commit.Applied, s.Commit.SpecHash
}

// ask asks for a grant for commit/specHash; it returns the checked grant or the wait.
func (d *simDevice) ask(t *testing.T, commit, specHash string) (*api.GrantBody, *api.GrantWait, error) {
	t.Helper()
	nonce := make([]byte, 16)
	_, _ = crand.Read(nonce)
	res, err := d.cl.Grant(t.Context(), &api.GrantRequest{APIVersion: api.Version, Commit: commit, SpecHash: specHash, Applied: d.at, AppliedSpec: d.spec, Nonce: nonce})
	if err != nil {
		return nil, nil, err
	}
	if res.Wait != nil {
		return nil, res.Wait, nil
	}
	b, err := d.ck.Check(res.Grant, grant.Expect{Device: d.id, Commit: commit, SpecHash: specHash, Nonce: nonce})
	if err != nil {
		t.Fatalf("%s: grant does not check: %v", d.id, err)
	}
	return b, nil, nil
}

// rolloutHub starts a hub following rf with a fast controller, and n devices
// that report rf's HEAD applied.
func rolloutHub(t *testing.T, st store.Store, rf *rolloutFleet) (*testHub, []*simDevice, string) {
	t.Helper()
	// The devices enrol and report on a hub with no fleet first, so the
	// rollout of HEAD finds them all on it.
	pre := startHub(t, st)
	_, head, _ := rf.fp.Current()
	var ds []*simDevice
	for i := 1; i <= rf.n; i++ {
		d := pre.simDevice(t, fmt.Sprintf("d%d", i))
		d.report(t, api.StateConverged, head, rf.specHash(d.id), nil)
		ds = append(ds, d)
	}
	if err := pre.stop(); err != nil {
		t.Fatal(err)
	}
	th := startHub(t, st, func(o *Options) { o.Fleet, o.RolloutTick, o.RolloutLease = rf.fp, 50*time.Millisecond, 3*time.Second })
	for _, d := range ds {
		d.cl = d.reconnect(t, th)
	}
	return th, ds, head
}

// waitRollout waits until the hub's view of commit's rollout satisfies ok.
func waitRollout(t *testing.T, th *testHub, commit string, what string, ok func(v api.RolloutView) bool) api.RolloutView {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last api.RolloutView
	var lastErr error
	for time.Now().Before(deadline) {
		th.ro.invalidate()
		v, err := th.RolloutView(t.Context(), commit, true)
		if err == nil && v.Commit == commit && ok(v) {
			return v
		}
		last, lastErr = v, err
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(last, "", " ")
	t.Fatalf("rollout of %.8s never %s (err %v):\n%s", commit, what, lastErr, b)
	return last
}

func waveOf(v api.RolloutView, i int) api.RolloutWaveView { return v.Tracks[0].Waves[i] }

func TestRolloutWavesAndGrants(t *testing.T) {
	backends(t, func(t *testing.T, open func(t *testing.T) store.Store) {
		rf := newRolloutFleet(t, 6, "  waves:\n    - {name: canary, limit: 1, bake: 1s}\n    - {name: rest, bake: 0s}\n")
		th, ds, c1 := rolloutHub(t, open(t), rf)
		waitRollout(t, th, c1, "done", func(v api.RolloutView) bool { return v.Status == rollout.Done })

		c2 := rf.version("2", "web 2")
		v := waitRollout(t, th, c2, "started with its canary admitted", func(v api.RolloutView) bool {
			return v.Counts.Members == 6 && waveOf(v, 0).Counts.Admitted == 1
		})
		if old, _ := th.RolloutView(t.Context(), c1, false); old.Status != rollout.Superseded {
			t.Errorf("rollout of c1: %s, want superseded", old.Status)
		}
		var canary *simDevice
		for _, d := range ds {
			g, w, err := d.ask(t, c2, rf.specHash(d.id))
			if err != nil {
				t.Fatal(err)
			}
			if g != nil {
				if canary != nil {
					t.Fatalf("two devices granted in a wave of one: %s and %s", canary.id, d.id)
				}
				canary = d
				if g.Wave != "canary" || g.Rollout != v.ID || g.Why != rollout.WhyWave {
					t.Errorf("grant = %+v", g)
				}
				// Asking again gives the same grant, signed over the new nonce.
				g2, _, err := d.ask(t, c2, rf.specHash(d.id))
				if err != nil || g2 == nil || g2.ID != g.ID {
					t.Fatalf("second ask: %+v %v, want grant %s", g2, err, g.ID)
				}
				continue
			}
			if w.Reason != api.WaitWave || w.Wave != "rest" || w.WaveIndex != 2 || !strings.Contains(w.Message, "canary") {
				t.Errorf("%s waits: %+v", d.id, w)
			}
		}
		if canary == nil {
			t.Fatal("no device granted")
		}
		// A device asking for another commit is refused and recorded.
		_, _, err := ds[0].ask(t, c1, rf.specHash("d1"))
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 409 || ae.Reason != api.ReasonNotTarget {
			t.Fatalf("grant for an old commit: %v, want 409 not-target", err)
		}
		// A waiting device is poked once its wave opens.
		var waiter *simDevice
		for _, d := range ds {
			if d != canary {
				waiter = d
				break
			}
		}
		_, cursor, err := waiter.cl.Poll(t.Context(), -1, 0)
		if err != nil {
			t.Fatal(err)
		}
		canary.report(t, api.StateConverged, c2, rf.specHash(canary.id), nil)
		v = waitRollout(t, th, c2, "open its last wave", func(v api.RolloutView) bool { return waveOf(v, 1).Counts.Admitted == 5 })
		lintMetrics(t, th, "shoal_hub_rollout_status", "shoal_hub_rollout_wave_devices", "shoal_hub_rollout_grant_requests_total", "shoal_hub_rollout_refusals_total")
		if w := waveOf(v, 0); w.State != rollout.WavePassed || w.Counts.Healthy != 1 {
			t.Errorf("canary wave = %+v", w)
		}
		p, _, err := waiter.cl.Poll(t.Context(), cursor, 10*time.Second)
		if err != nil || p == nil || p.Reason != "rollout" || p.Commit != c2 {
			t.Fatalf("poke of a waiting device: %+v %v", p, err)
		}
		for _, d := range ds {
			if d == canary {
				continue
			}
			if g, w, err := d.ask(t, c2, rf.specHash(d.id)); err != nil || g == nil {
				t.Fatalf("%s: %+v %v, want a grant", d.id, w, err)
			}
			d.report(t, api.StateConverged, c2, rf.specHash(d.id), nil)
		}
		v = waitRollout(t, th, c2, "done", func(v api.RolloutView) bool { return v.Status == rollout.Done })
		if v.Counts.Healthy != 6 || v.Counts.Granted != 6 {
			t.Errorf("counts = %+v", v.Counts)
		}
		kinds := map[string]int{}
		for _, e := range v.Events {
			kinds[e.Kind]++
		}
		if kinds[rollout.EventNotTarget] != 1 || kinds[rollout.EventWavePassed] != 2 || kinds[rollout.EventStarted] != 1 || kinds[rollout.EventDone] != 1 {
			t.Errorf("events = %v", kinds)
		}
	})
}

func TestRolloutHaltAndRevert(t *testing.T) {
	rf := newRolloutFleet(t, 4, "  waves:\n    - {name: canary, limit: 1, bake: 1h}\n    - {name: rest}\n")
	th, ds, c1 := rolloutHub(t, openSQLite(t), rf)
	waitRollout(t, th, c1, "done", func(v api.RolloutView) bool { return v.Status == rollout.Done })
	before := map[string]string{}
	for _, d := range ds {
		before[d.id] = d.spec
	}
	c2 := rf.version("2", "web 2: breaks the health check")
	waitRollout(t, th, c2, "admitted its canary", func(v api.RolloutView) bool { return waveOf(v, 0).Counts.Admitted == 1 })
	var canary *simDevice
	for _, d := range ds {
		if g, _, _ := d.ask(t, c2, rf.specHash(d.id)); g != nil {
			canary = d
		}
	}
	// The canary applies the commit, then its app fails its health check and is rolled back.
	canary.report(t, api.StateConverged, c2, rf.specHash(canary.id), nil)
	canary.report(t, api.StateDegraded, c2, rf.specHash(canary.id), func(s *api.Status) {
		s.Apps = []api.AppStatus{{Name: "web", State: "running", Health: "unhealthy", Rollback: &api.Rollback{Check: "health", ExitCode: 1}}}
	})
	v := waitRollout(t, th, c2, "halted", func(v api.RolloutView) bool { return v.Status == rollout.Halted })
	w := waveOf(v, 0)
	if w.State != rollout.WaveHalted || len(w.Devices) != 1 || w.Devices[0].ID != canary.id || v.Counts.FailedGates["converged"] != 1 {
		t.Fatalf("halted wave = %+v, counts %+v", w, v.Counts)
	}
	for _, d := range ds {
		if d == canary {
			continue
		}
		g, wt, err := d.ask(t, c2, rf.specHash(d.id))
		if err != nil || g != nil || wt.Reason != api.WaitHalted {
			t.Fatalf("%s after the halt: %+v %+v %v", d.id, g, wt, err)
		}
	}
	// The revert: the canary's spec at c3 is the one it ran before c2, so it goes at once.
	c3 := rf.version("1", "Revert web 2")
	s1 := before[canary.id]
	if rf.specHash(canary.id) != s1 {
		t.Fatal("the revert renders another spec")
	}
	v = waitRollout(t, th, c3, "admitted the reverted canary", func(v api.RolloutView) bool { return v.Counts.Admitted == 1 })
	if v.Counts.Members != 1 {
		t.Fatalf("revert rollout has %d members, want the canary alone", v.Counts.Members)
	}
	g, wt, err := canary.ask(t, c3, s1)
	if err != nil || g == nil || g.Why != rollout.WhyRevert {
		t.Fatalf("revert grant: %+v %+v %v", g, wt, err)
	}
}

func TestRolloutRefusesLiesAndHonoursControl(t *testing.T) {
	rf := newRolloutFleet(t, 4, "  waves:\n    - {name: canary, limit: 1, bake: 0s}\n    - {name: rest, approval: true, bake: 0s}\n")
	th, ds, c1 := rolloutHub(t, openSQLite(t), rf)
	waitRollout(t, th, c1, "done", func(v api.RolloutView) bool { return v.Status == rollout.Done })
	c2 := rf.version("2", "web 2")
	waitRollout(t, th, c2, "admitted its canary", func(v api.RolloutView) bool { return waveOf(v, 0).Counts.Admitted == 1 })
	var canary, liar *simDevice
	for _, d := range ds {
		if g, _, _ := d.ask(t, c2, rf.specHash(d.id)); g != nil {
			canary = d
		} else if liar == nil {
			liar = d
		}
	}
	// A device that says it runs c2 though it was never granted it.
	liar.report(t, api.StateConverged, c2, rf.specHash(liar.id), func(s *api.Status) {
		s.Rollout = &api.RolloutStatus{Commit: c2, State: api.RolloutGranted, Grant: "made-up"}
	})
	v := waitRollout(t, th, c2, "flagged the liar", func(v api.RolloutView) bool { return v.Counts.FailedGates[rollout.GateGranted] == 1 })
	found := false
	for _, e := range v.Events {
		if e.Kind == rollout.EventUngranted && e.Device == liar.id {
			found = true
		}
	}
	if !found {
		t.Errorf("no ungranted-apply event: %+v", v.Events)
	}
	// The rest waits for approval; pause and abort are honoured.
	canary.report(t, api.StateConverged, c2, rf.specHash(canary.id), nil)
	waitRollout(t, th, c2, "passed its canary", func(v api.RolloutView) bool { return waveOf(v, 0).State == rollout.WavePassed })
	other := ds[0]
	if other == canary || other == liar {
		other = ds[1]
		if other == canary || other == liar {
			other = ds[2]
		}
	}
	if _, wt, _ := other.ask(t, c2, rf.specHash(other.id)); wt == nil || wt.Reason != api.WaitApproval {
		t.Fatalf("before approval: %+v", wt)
	}
	if _, err := th.RolloutAct(t.Context(), api.RolloutAction{APIVersion: api.Version, Action: "pause", Commit: c2[:8]}); err != nil {
		t.Fatal(err)
	}
	if _, err := th.RolloutAct(t.Context(), api.RolloutAction{APIVersion: api.Version, Action: "approve"}); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, th, c2, "paused", func(v api.RolloutView) bool { return v.Status == rollout.Paused })
	if _, wt, _ := other.ask(t, c2, rf.specHash(other.id)); wt == nil || wt.Reason != api.WaitPaused {
		t.Fatalf("paused: %+v", wt)
	}
	// The liar's failure spends the rest wave's threshold: it halts once open.
	if _, err := th.RolloutAct(t.Context(), api.RolloutAction{APIVersion: api.Version, Action: "resume"}); err != nil {
		t.Fatal(err)
	}
	v = waitRollout(t, th, c2, "halted by the liar", func(v api.RolloutView) bool { return v.Status == rollout.Halted })
	if _, err := th.RolloutAct(t.Context(), api.RolloutAction{APIVersion: api.Version, Action: "abort", Reason: "testing"}); err != nil {
		t.Fatal(err)
	}
	v = waitRollout(t, th, c2, "aborted", func(v api.RolloutView) bool { return v.Status == rollout.Aborted })
	if _, wt, _ := other.ask(t, c2, rf.specHash(other.id)); wt == nil || wt.Reason != api.WaitAborted {
		t.Fatalf("aborted: %+v", wt)
	}
	if _, err := th.RolloutAct(t.Context(), api.RolloutAction{APIVersion: api.Version, Action: "approve", Wave: "nope"}); !errors.Is(err, ErrNoWave) {
		t.Fatalf("approve of a missing wave: %v", err)
	}
}

func TestRolloutUrgentAndOneLeader(t *testing.T) {
	// Two hubs on one PostgreSQL database: one decides, the other serves,
	// and takes over when the first stops.
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	rf := newRolloutFleet(t, 3, "  waves:\n    - {name: canary, limit: 1, bake: 1h}\n    - {name: rest, bake: 1h}\n")
	a := startHub(t, openPostgres(t, dsn), func(o *Options) { o.Fleet, o.RolloutTick, o.RolloutLease = rf.fp, 50*time.Millisecond, 2*time.Second })
	b := startHub(t, openPostgres(t, dsn), func(o *Options) { o.Fleet, o.RolloutTick, o.RolloutLease = rf.fp, 50*time.Millisecond, 2*time.Second })
	deadline := time.Now().Add(20 * time.Second)
	lead := func(th *testHub) float64 { return gaugeValue(t, th, "shoal_hub_rollout_leader") }
	leaders := func() int { return int(lead(a) + lead(b)) }
	for leaders() != 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := leaders(); n != 1 {
		t.Fatalf("%d leaders", n)
	}
	first, second := a, b
	if lead(b) == 1 {
		first, second = b, a
	}
	for range 20 {
		if leaders() != 1 {
			t.Fatal("two hubs decide at once")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var ds []*simDevice
	_, c1, _ := rf.fp.Current()
	for i := 1; i <= 3; i++ {
		d := second.simDevice(t, fmt.Sprintf("d%d", i))
		d.report(t, api.StateConverged, c1, rf.specHash(d.id), nil)
		ds = append(ds, d)
	}
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}
	for lead(second) != 1 {
		if time.Now().After(deadline.Add(20 * time.Second)) {
			t.Fatal("the second hub does not lead")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitRollout(t, second, c1, "done", func(v api.RolloutView) bool { return v.Status == rollout.Done })
	// An urgent commit opens every wave at once.
	c2 := rf.version("2", "web 2\n\n"+urgentTrailer+"\n")
	v := waitRollout(t, second, c2, "admitted everyone", func(v api.RolloutView) bool { return v.Counts.Admitted == 3 })
	if !v.Urgent {
		t.Error("rollout not marked urgent")
	}
	for _, d := range ds {
		if g, w, err := d.ask(t, c2, rf.specHash(d.id)); err != nil || g == nil || g.Why != rollout.WhyUrgent {
			t.Fatalf("%s: %+v %+v %v", d.id, g, w, err)
		}
	}
}

// lintMetrics scrapes the hub's /metrics, checks it holds the names given
// and passes promtool check metrics.
func lintMetrics(t *testing.T, th *testHub, names ...string) {
	t.Helper()
	code, _, body := call(t, th.raw(t, nil), "GET", th.URL+"/metrics", "", nil)
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, n := range names {
		if !bytes.Contains(body, []byte("\n"+n)) {
			t.Errorf("/metrics lacks %s", n)
		}
	}
	cmd := exec.Command(testenv.LookPath(t, "promtool", "prometheus"), "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestRolloutNoFleetGrants: a hub that follows no fleet repo grants
// whatever it is asked, so a fleet that declares a rollout still converges.
func TestRolloutNoFleetGrants(t *testing.T) {
	th := startHub(t, openSQLite(t))
	d := th.simDevice(t, "d1")
	g, w, err := d.ask(t, strings.Repeat("1", 40), strings.Repeat("2", 64))
	if err != nil || g == nil || g.Why != "no-rollout" {
		t.Fatalf("%+v %+v %v", g, w, err)
	}
	if _, err := th.RolloutView(t.Context(), "", false); !errors.Is(err, ErrNoRollout) {
		t.Fatalf("view: %v", err)
	}
}

// TestRolloutDisruptionBudget: 3 sites of 4 devices, max_unavailable 1 per
// site. Simulated devices (real reports and grant requests over mutual
// TLS) take a random while to update once granted; a sampler counts, every
// few milliseconds, the devices of each site that hold a grant and are not
// healthy yet. It never sees two at one site.
func TestRolloutDisruptionBudget(t *testing.T) {
	rf := newRolloutFleet(t, 12, `  spread_by: [site]
  disruption_budget: {group_by: [site], max_unavailable: 1}
  waves:
    - {name: first, limit: 3, bake: 0s}
    - {name: rest, bake: 0s}
`)
	th, ds, c1 := rolloutHub(t, openSQLite(t), rf)
	waitRollout(t, th, c1, "done", func(v api.RolloutView) bool { return v.Status == rollout.Done })
	c2 := rf.version("2", "web 2")
	var mu sync.Mutex
	updating := map[string]string{} // device → site, while granted and not healthy
	maxSeen := 0
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			mu.Lock()
			per := map[string]int{}
			for _, site := range updating {
				per[site]++
				maxSeen = max(maxSeen, per[site])
			}
			mu.Unlock()
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, len(ds))
	for i, d := range ds {
		site := fmt.Sprintf("s%d", i%3)
		spec2 := rf.specHash(d.id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				g, _, err := d.ask(t, c2, spec2)
				if err != nil {
					errs <- err
					return
				}
				if g == nil {
					select {
					case <-ctx.Done():
						return
					case <-time.After(20 * time.Millisecond):
					}
					continue
				}
				mu.Lock()
				updating[d.id] = site
				mu.Unlock()
				d.report(t, api.StateUpdating, c1, d.spec, func(s *api.Status) { s.Commit.Attempted = c2 })
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Duration(50+rand.N(200)) * time.Millisecond):
				}
				mu.Lock()
				delete(updating, d.id) // healthy from here: the report says so
				mu.Unlock()
				d.report(t, api.StateConverged, c2, spec2, nil)
				return
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitRollout(t, th, c2, "done", func(v api.RolloutView) bool { return v.Status == rollout.Done && v.Counts.Healthy == 12 })
	cancel()
	<-sampled
	if maxSeen != 1 {
		t.Fatalf("at most %d device(s) of one site were updating at once, want exactly 1", maxSeen)
	}
}
