package rollout

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/spec"
)

const commit = "1111111111111111111111111111111111111111"

// policy builds a rollout policy from its fleet-repo JSON form, as the spec package does.
func policy(t testing.TB, waves string, extra string) *spec.Rollout {
	t.Helper()
	p := &spec.Rollout{Track: "fleet", Offline: spec.OfflineWait, Gates: spec.Gates{Converged: true, AppsHealthy: true, OSCommitted: true, Attestation: true, Clock: true}}
	if err := json.Unmarshal([]byte(waves), &p.Waves); err != nil {
		t.Fatal(err)
	}
	if extra != "" {
		if err := json.Unmarshal([]byte(extra), p); err != nil {
			t.Fatal(err)
		}
	}
	for i := range p.Waves {
		if p.Waves[i].SuccessThreshold == (spec.Amount{}) {
			p.Waves[i].SuccessThreshold = spec.Amount{N: 100, Percent: true}
		}
	}
	return p
}

func devices(n int, labels func(i int) map[string]string) []Candidate {
	out := make([]Candidate, n)
	for i := range out {
		out[i] = Candidate{ID: fmt.Sprintf("d%03d", i)}
		if labels != nil {
			out[i].Labels = labels(i)
		}
	}
	return out
}

func waveSizes(p *spec.Rollout, a map[string]int) []int {
	sizes := make([]int, len(p.Waves))
	for _, w := range a {
		sizes[w]++
	}
	return sizes
}

func TestAssign(t *testing.T) {
	site := func(i int) map[string]string {
		return map[string]string{"site": fmt.Sprintf("s%d", i%3), "tier": map[bool]string{true: "canary"}[i == 7]}
	}
	tests := []struct {
		name   string
		waves  string
		extra  string
		n      int
		labels func(int) map[string]string
		want   []int
		check  func(t *testing.T, a map[string]int)
	}{
		{name: "count then share then rest", waves: `[{"name":"a","limit":1},{"name":"b","limit":"25%"},{"name":"rest"}]`, n: 20, want: []int{1, 5, 14}},
		{name: "share rounds up", waves: `[{"name":"a","limit":"10%"},{"name":"rest"}]`, n: 5, want: []int{1, 4}},
		{name: "one wave takes all", waves: `[{"name":"all"}]`, n: 7, want: []int{7}},
		{name: "selector", waves: `[{"name":"canary","match_labels":{"tier":"canary"}},{"name":"rest"}]`, n: 12, labels: site, want: []int{1, 11},
			check: func(t *testing.T, a map[string]int) {
				if a["d007"] != 0 {
					t.Errorf("d007 (tier=canary) in wave %d", a["d007"])
				}
			}},
		{name: "device list", waves: `[{"name":"pick","devices":["d003","d004"]},{"name":"rest"}]`, n: 6, want: []int{2, 4}},
		{name: "more limit than devices", waves: `[{"name":"a","limit":50},{"name":"rest"}]`, n: 3, want: []int{3, 0}},
		{name: "spread takes one per site first", waves: `[{"name":"a","limit":3},{"name":"rest"}]`, extra: `{"spread_by":["site"]}`, n: 12, labels: site, want: []int{3, 9},
			check: func(t *testing.T, a map[string]int) {
				seen := map[int]bool{}
				for i := 0; i < 12; i++ {
					if a[fmt.Sprintf("d%03d", i)] == 0 {
						if seen[i%3] {
							t.Errorf("two devices of site s%d in the first wave", i%3)
						}
						seen[i%3] = true
					}
				}
			}},
		{name: "spread keeps a site out of one wave", waves: `[{"name":"hall","match_labels":{"site":"s0"}},{"name":"rest"}]`, extra: `{"spread_by":["site"]}`, n: 9, labels: site, want: []int{2, 7}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := policy(t, tc.waves, tc.extra)
			devs := devices(tc.n, tc.labels)
			a := Assign(p, commit, devs)
			if len(a) != tc.n {
				t.Fatalf("%d devices placed, want %d", len(a), tc.n)
			}
			if got := waveSizes(p, a); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("wave sizes = %v, want %v", got, tc.want)
			}
			// Deterministic, whatever the input order.
			rev := append([]Candidate(nil), devs...)
			for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
				rev[i], rev[j] = rev[j], rev[i]
			}
			if b := Assign(p, commit, rev); fmt.Sprint(b) != fmt.Sprint(a) {
				t.Error("placement depends on the input order")
			}
			if tc.check != nil {
				tc.check(t, a)
			}
		})
	}
	// Another commit puts other devices first.
	p := policy(t, `[{"name":"a","limit":2},{"name":"rest"}]`, "")
	devs := devices(50, nil)
	a, b := Assign(p, commit, devs), Assign(p, strings.Repeat("2", 40), devs)
	same := 0
	for id, w := range a {
		if w == 0 && b[id] == 0 {
			same++
		}
	}
	if same == 2 {
		t.Error("the first wave is the same for two commits")
	}
}

func TestEvaluate(t *testing.T) {
	all := spec.Gates{Converged: true, AppsHealthy: true, OSCommitted: true, Attestation: true, Clock: true}
	ok, notOK := true, false
	old := "0000000000000000000000000000000000000000"
	tests := []struct {
		name   string
		gates  spec.Gates
		target Target
		obs    Observation
		want   Verdict
		failed string
	}{
		{name: "not on the commit", obs: Observation{Applied: old, State: api.StateConverged}, want: Pending},
		{name: "updating", obs: Observation{Applied: old, Attempted: commit, State: api.StateUpdating}, want: Pending},
		{name: "converged", obs: Observation{Applied: commit, Attempted: commit, State: api.StateConverged}, want: Healthy},
		{name: "applied, still waiting", obs: Observation{Applied: commit, State: api.StateWaiting}, want: Pending},
		{name: "stalled on it", obs: Observation{Applied: old, Attempted: commit, State: api.StateStalled}, want: Failed, failed: GateConverged},
		{name: "app rolled back", obs: Observation{Applied: old, Attempted: commit, State: api.StateWaiting, RolledBack: []string{"web"}}, want: Failed, failed: GateApps},
		{name: "app rolled back, gate off", gates: spec.Gates{Converged: true}, obs: Observation{Applied: old, Attempted: commit, State: api.StateWaiting, RolledBack: []string{"web"}}, want: Pending},
		{name: "os rolled back", target: Target{Release: "2.0.0"}, obs: Observation{Applied: old, Attempted: commit, State: api.StateWaiting, UpdateState: "rolled-back", UpdateTarget: "2.0.0", UpdateVersion: "1.0.0"}, want: Failed, failed: GateOS},
		{name: "os in trial", target: Target{Release: "2.0.0"}, obs: Observation{Applied: commit, State: api.StateConverged, UpdateState: "trial", UpdateVersion: "1.0.0"}, want: Pending},
		{name: "os committed", target: Target{Release: "2.0.0"}, obs: Observation{Applied: commit, State: api.StateConverged, UpdateState: "committed", UpdateVersion: "2.0.0"}, want: Healthy},
		{name: "old os rollback does not count", obs: Observation{Applied: commit, State: api.StateConverged, UpdateState: "rolled-back", UpdateVersion: "1.0.0"}, want: Healthy},
		{name: "attestation failed", obs: Observation{Applied: commit, State: api.StateConverged, AttestOK: &notOK}, want: Failed, failed: GateAttestation},
		{name: "attestation ok", obs: Observation{Applied: commit, State: api.StateConverged, AttestOK: &ok}, want: Healthy},
		{name: "clock skewed", obs: Observation{Applied: commit, State: api.StateConverged, ClockState: "skewed"}, want: Failed, failed: GateClock},
		{name: "clock skewed, gate off", gates: spec.Gates{Converged: true}, obs: Observation{Applied: commit, State: api.StateConverged, ClockState: "skewed"}, want: Healthy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.gates
			if g == (spec.Gates{}) {
				g = all
			}
			tc.target.Commit = commit
			v, failed := Evaluate(g, tc.target, tc.obs)
			if v != tc.want || strings.Join(failed, ",") != tc.failed {
				t.Errorf("Evaluate = %s %v, want %s %s", v, failed, tc.want, tc.failed)
			}
		})
	}
	// Observe reads a report.
	s := &api.Status{Seq: 3, State: api.StateConverged, Commit: api.CommitStatus{Applied: commit, Attempted: commit, SpecHash: "ab"},
		Apps: []api.AppStatus{{Name: "a"}, {Name: "b", Rollback: &api.Rollback{Check: "health"}}}, Update: &api.UpdateStatus{State: "trial", Version: "1", Target: "2"},
		Attest: &api.AttestStatus{OK: true}, Clock: &api.ClockStatus{State: "ok"}, Problem: &api.Problem{Kind: "waiting", Reason: "x"}}
	o := Observe(s)
	if o.Seq != 3 || o.Applied != commit || strings.Join(o.RolledBack, ",") != "b" || o.UpdateTarget != "2" || o.AttestOK == nil || !*o.AttestOK || o.ClockState != "ok" || o.Problem != "x" {
		t.Errorf("Observe = %+v", o)
	}
}

// sim is a rollout driven step by step with devices that report as told.
type sim struct {
	t   *testing.T
	s   *State
	now time.Time
}

func newSim(t *testing.T, p *spec.Rollout, devs []Candidate) *sim {
	var ms []*Member
	for _, d := range devs {
		ms = append(ms, &Member{Device: d.ID, Labels: d.Labels, Track: "fleet", Wave: -1})
	}
	return &sim{t: t, s: NewState(commit, map[string]*spec.Rollout{"fleet": p}, ms), now: time.Unix(1_700_000_000, 0)}
}

func (x *sim) step(d time.Duration) *Changes {
	x.now = x.now.Add(d)
	return x.s.Advance(x.now)
}

func (x *sim) set(id string, v Verdict, gates ...string) {
	m := x.s.Members[id]
	x.s.Observe(m, v, gates, &Changes{}, x.now)
}

func (x *sim) admitted(wave int) (n int) {
	for _, m := range x.s.Members {
		if m.Wave == wave && !m.Admitted.IsZero() {
			n++
		}
	}
	return n
}

// healthyAdmitted makes every admitted device of the wave healthy.
func (x *sim) healthyAdmitted(wave int) {
	for _, m := range x.s.Members {
		if m.Wave == wave && !m.Admitted.IsZero() && m.Verdict == Pending {
			x.set(m.Device, Healthy)
		}
	}
}

func (x *sim) waveState(i int) string { return x.s.Waves["fleet"][i].State }

func TestAdvanceWavesBakeAndPass(t *testing.T) {
	p := policy(t, `[{"name":"canary","limit":1,"bake":"10m"},{"name":"b","limit":"50%","bake":"5m"},{"name":"rest","bake":"0s"}]`, "")
	x := newSim(t, p, devices(10, nil))
	c := x.step(0)
	if len(c.Admitted) != 1 || x.waveState(0) != WaveOpen || x.waveState(1) != WaveWaiting {
		t.Fatalf("first step: %d admitted, waves %s %s", len(c.Admitted), x.waveState(0), x.waveState(1))
	}
	canary := c.Admitted[0]
	if w := x.s.Wait(x.s.Members[anyIn(x.s, 1)], x.now); w.Reason != api.WaitWave || !strings.Contains(w.Message, "is healthy: 0 of 1") {
		t.Errorf("wave 2 wait = %+v", w)
	}
	x.set(canary.Device, Healthy)
	x.step(time.Second)
	if x.waveState(0) != WaveBaking {
		t.Fatalf("canary healthy: wave 1 %s, want baking", x.waveState(0))
	}
	if w := x.s.Wait(x.s.Members[anyIn(x.s, 1)], x.now.Add(4*time.Minute)); w.Reason != api.WaitWave || !strings.Contains(w.Message, "6m0s left") {
		t.Errorf("wave 2 wait during bake = %+v", w)
	}
	if c := x.step(9 * time.Minute); len(c.Admitted) != 0 || x.waveState(0) != WaveBaking {
		t.Fatalf("before the bake ends: %d admitted, wave 1 %s", len(c.Admitted), x.waveState(0))
	}
	c = x.step(time.Minute)
	if x.waveState(0) != WavePassed || x.waveState(1) != WaveOpen || len(c.Admitted) != 5 {
		t.Fatalf("bake over: waves %s %s, %d admitted", x.waveState(0), x.waveState(1), len(c.Admitted))
	}
	x.healthyAdmitted(1)
	x.step(time.Second)
	x.step(5 * time.Minute)
	x.healthyAdmitted(2)
	x.step(time.Second)
	if x.s.Status != Done {
		t.Fatalf("status %s, want done; waves %s %s %s", x.s.Status, x.waveState(0), x.waveState(1), x.waveState(2))
	}
	if tot := x.s.Totals(); tot.Healthy != 10 || tot.Admitted != 10 {
		t.Errorf("totals %+v", tot)
	}
}

func anyIn(s *State, wave int) string {
	for id, m := range s.Members {
		if m.Wave == wave {
			return id
		}
	}
	return ""
}

func TestAdvanceHaltsOnFailure(t *testing.T) {
	p := policy(t, `[{"name":"canary","limit":2,"bake":"1m"},{"name":"rest"}]`, "")
	x := newSim(t, p, devices(8, nil))
	c := x.step(0)
	x.set(c.Admitted[0].Device, Healthy)
	x.set(c.Admitted[1].Device, Failed, GateApps)
	c = x.step(time.Second)
	if x.s.Status != Halted || x.waveState(0) != WaveHalted || !strings.Contains(x.s.Reason, "apps_healthy: 1") {
		t.Fatalf("status %s (%s), wave %s", x.s.Status, x.s.Reason, x.waveState(0))
	}
	if len(c.Admitted) != 0 {
		t.Error("devices admitted after the halt")
	}
	for range 3 {
		if c := x.step(time.Hour); len(c.Admitted) != 0 || x.admitted(1) != 0 {
			t.Fatal("a device of the next wave was admitted")
		}
	}
	if w := x.s.Wait(x.s.Members[anyIn(x.s, 1)], x.now); w.Reason != api.WaitHalted {
		t.Errorf("wait = %+v", w)
	}
	// A failure is kept even if the device later looks healthy.
	x.set(c0(x), Healthy)
	if x.s.Totals().Failed != 1 {
		t.Error("a failed device became healthy")
	}
}

func c0(x *sim) string {
	for id, m := range x.s.Members {
		if m.Verdict == Failed {
			return id
		}
	}
	return ""
}

func TestAdvanceThresholdAndErrorBudget(t *testing.T) {
	// 90% of 10 may be 1 failed: the wave passes with one failure, but the
	// error budget of 0 halts the rollout at the first.
	p := policy(t, `[{"name":"a","limit":10,"bake":"0s","success_threshold":"90%"},{"name":"rest"}]`, "")
	x := newSim(t, p, devices(20, nil))
	c := x.step(0)
	for i, m := range c.Admitted {
		if i == 0 {
			x.set(m.Device, Failed, GateClock)
		} else {
			x.set(m.Device, Healthy)
		}
	}
	x.step(time.Second)
	x.step(time.Second)
	if x.waveState(0) != WavePassed || x.s.Status != Running {
		t.Fatalf("threshold 90%% with 1 of 10 failed: wave %s, status %s %s", x.waveState(0), x.s.Status, x.s.Reason)
	}
	zero := spec.Amount{N: 0}
	p.ErrorBudget = &zero
	x.step(time.Second)
	if x.s.Status != Halted || !strings.Contains(x.s.Reason, "error budget") {
		t.Fatalf("status %s %q, want halted by the error budget", x.s.Status, x.s.Reason)
	}
}

func TestAdvanceApprovalPauseAbort(t *testing.T) {
	p := policy(t, `[{"name":"a","limit":1,"bake":"0s"},{"name":"b","approval":true,"bake":"0s"}]`, "")
	x := newSim(t, p, devices(4, nil))
	c := x.step(0)
	x.set(c.Admitted[0].Device, Healthy)
	x.step(time.Second)
	x.step(time.Second)
	if x.waveState(0) != WavePassed || x.waveState(1) != WaveWaiting || x.admitted(1) != 0 {
		t.Fatalf("waves %s %s", x.waveState(0), x.waveState(1))
	}
	if w := x.s.Wait(x.s.Members[anyIn(x.s, 1)], x.now); w.Reason != api.WaitApproval {
		t.Errorf("wait = %+v", w)
	}
	x.s.Status = Paused
	x.s.Waves["fleet"][1].Approved = true
	if c := x.step(time.Second); len(c.Admitted) != 0 || x.waveState(1) != WaveWaiting {
		t.Fatal("a paused rollout opened a wave")
	}
	if w := x.s.Wait(x.s.Members[anyIn(x.s, 1)], x.now); w.Reason != api.WaitPaused {
		t.Errorf("wait = %+v", w)
	}
	x.s.Status = Running
	if c := x.step(time.Second); len(c.Admitted) != 3 {
		t.Fatalf("approved and resumed: %d admitted, want 3", len(c.Admitted))
	}
	x.s.Status = Aborted
	if w := x.s.Wait(x.s.Members[anyIn(x.s, 1)], x.now); w.Reason != api.WaitAborted {
		t.Errorf("wait = %+v", w)
	}
}

func TestAdvanceUrgentAndRevert(t *testing.T) {
	p := policy(t, `[{"name":"a","limit":1,"bake":"1h","approval":true},{"name":"rest","bake":"1h"}]`, "")
	x := newSim(t, p, devices(6, nil))
	x.s.Urgent = true
	if c := x.step(0); len(c.Admitted) != 6 {
		t.Fatalf("urgent: %d admitted, want 6", len(c.Admitted))
	}
	y := newSim(t, p, devices(6, nil))
	y.s.Members["d003"].Why = WhyRevert
	y.s.Status = Halted // even a halted rollout lets a revert through
	c := y.step(0)
	if len(c.Admitted) != 1 || c.Admitted[0].Device != "d003" {
		t.Fatalf("revert: admitted %v", c.Admitted)
	}
}

func TestJoin(t *testing.T) {
	p := policy(t, `[{"name":"a","limit":2},{"name":"rest"}]`, "")
	x := newSim(t, p, devices(10, nil))
	before := map[string]int{}
	for id, m := range x.s.Members {
		before[id] = m.Wave
	}
	m := &Member{Device: "zz-new", Track: "fleet", Wave: -1}
	x.s.Join(m)
	if m.Wave < 0 || m.Wave > 1 {
		t.Fatalf("joined wave %d", m.Wave)
	}
	for id, w := range before {
		if x.s.Members[id].Wave != w {
			t.Errorf("%s moved from wave %d", id, w)
		}
	}
}

// TestDisruptionBudgetSampled drives 3 sites of 4 devices with
// max_unavailable 1 per site through a rollout where devices take random
// time to become healthy and some fail, and checks at every instant that
// no site has more than one device updating or failed.
func TestDisruptionBudgetSampled(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		p := policy(t, `[{"name":"a","limit":3,"bake":"1m"},{"name":"rest","bake":"1m"}]`,
			`{"spread_by":["site"],"disruption_budget":{"group_by":["site"],"max_unavailable":1}}`)
		p.Waves[0].SuccessThreshold = spec.Amount{N: 60, Percent: true}
		p.Waves[1].SuccessThreshold = spec.Amount{N: 50, Percent: true}
		x := newSim(t, p, devices(12, func(i int) map[string]string { return map[string]string{"site": fmt.Sprintf("s%d", i/4)} }))
		for step := 0; step < 400 && x.s.Status == Running; step++ {
			x.step(10 * time.Second)
			for _, m := range x.s.Members {
				if !m.Admitted.IsZero() && m.Verdict == Pending {
					switch r := rng.IntN(100); {
					case r < 3:
						x.set(m.Device, Failed, GateApps)
					case r < 30:
						x.set(m.Device, Healthy)
					}
				}
			}
			unavailable := map[string]int{}
			for _, m := range x.s.Members {
				if !m.Admitted.IsZero() && m.Verdict != Healthy {
					unavailable[m.Labels["site"]]++
				}
			}
			for site, n := range unavailable {
				if n > 1 {
					t.Fatalf("seed %d step %d: site %s has %d devices updating or failed", seed, step, site, n)
				}
			}
		}
		if x.s.Status == Running {
			t.Errorf("seed %d: rollout still running after 400 steps", seed)
		}
	}
}
