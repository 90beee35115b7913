package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

// NewDB returns the URL of a fresh, empty database (see store.Open). The
// view suite opens some databases twice, as two hubs sharing one database.
type NewDB func(t *testing.T) string

// RunView runs the fleet view's conformance tests: the status page's
// filtered, sorted, paged device list, counts, one device and the rollout.
func RunView(t *testing.T, newDB NewDB) {
	open := func(t *testing.T) store.Store { return OpenURL(t, newDB(t)) }
	t.Run("Filters", func(t *testing.T) { testViewFilters(t, open(t)) })
	t.Run("PagesAndSort", func(t *testing.T) { testViewPages(t, open(t)) })
	t.Run("Refresh", func(t *testing.T) { testViewRefresh(t, open(t)) })
	t.Run("Rollout", func(t *testing.T) { testViewRollout(t, open(t)) })
	t.Run("CountsMatchSQL", func(t *testing.T) {
		u := newDB(t)
		testViewCountsMatchSQL(t, OpenURL(t, u), OpenURL(t, u))
	})
}

// OpenURL opens the store at url, closed when the test ends.
func OpenURL(t *testing.T, url string) store.Store {
	t.Helper()
	s, err := store.Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func viewer(t *testing.T, s store.Store) store.Viewer {
	t.Helper()
	v, err := store.AsViewer(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// put stores st as device id's report seq, received at t0+seq minutes.
func put(t *testing.T, s store.Store, st api.Status, labels map[string]string) {
	t.Helper()
	putAt(t, s, st, labels, t0.Add(time.Duration(st.Seq)*time.Minute))
}

// putAt stores st as device id's report seq, received at received.
func putAt(t *testing.T, s store.Store, st api.Status, labels map[string]string, received time.Time) {
	t.Helper()
	st.APIVersion = api.Version
	if st.Time.IsZero() {
		st.Time = t0.Add(time.Duration(st.Seq) * time.Minute)
	}
	body, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if labels != nil {
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		m["labels"] = labels
		body, _ = json.Marshal(m)
	}
	if _, err := s.PutStatus(t.Context(), store.Report{DeviceID: st.DeviceID, Seq: st.Seq, Time: st.Time,
		Received: received, State: string(st.State), Groups: st.Groups, Body: body}); err != nil {
		t.Fatal(err)
	}
}

func ids(rows []store.FleetRow) []string {
	out := []string{}
	for _, r := range rows {
		out = append(out, r.ID)
	}
	return out
}

// fleetFixture enrols and reports a small fleet with one device per condition.
func fleetFixture(t *testing.T, s store.Store) {
	t.Helper()
	for _, id := range []string{"conv-1", "upd-1", "trial-1", "stall-1", "rb-1", "drift-1", "skew-1", "skewed-1", "untrusted-1", "unknown-1", "attest-1", "wait-1", "silent-1", "odd_%!-1"} {
		enrolled(t, s, id)
	}
	run := func(id string) api.Status {
		return api.Status{DeviceID: id, Seq: 10, State: api.StateConverged, Groups: []string{"line-a"},
			Commit: api.CommitStatus{Attempted: "c2", Applied: "c2", SpecHash: "h2"},
			Apps:   []api.AppStatus{{Name: "web", State: "running", Health: "healthy"}, {Name: "db", State: "running"}},
			Update: &api.UpdateStatus{State: "committed", Slot: "a", Version: "1.2.0"},
			Clock:  &api.ClockStatus{Trusted: true, Skew: 100 * time.Millisecond}}
	}
	conv := run("conv-1")
	put(t, s, conv, map[string]string{"site": "north", "tier": "gold"})
	upd := run("upd-1")
	upd.State, upd.Groups, upd.Commit.Attempted = api.StateUpdating, []string{"line-b"}, "c3"
	upd.Update = &api.UpdateStatus{State: "downloading", Slot: "a", Version: "1.2.0", Target: "1.3.0", Progress: 0.5}
	put(t, s, upd, map[string]string{"site": "south"})
	trial := run("trial-1")
	trial.State, trial.Update = api.StateUpdating, &api.UpdateStatus{State: "trial", Slot: "b", Version: "1.3.0", Since: t0}
	put(t, s, trial, nil)
	stall := run("stall-1")
	stall.State, stall.Commit.Attempted = api.StateStalled, "c3"
	stall.Problem = &api.Problem{Kind: "stalled", Reason: "spec-invalid", Message: "apps/web.yaml:3:1: bad"}
	put(t, s, stall, nil)
	rb := run("rb-1")
	rb.State, rb.Update = api.StateDegraded, &api.UpdateStatus{State: "rolled-back", Slot: "a", Version: "1.2.0", Target: "1.3.0",
		Rollback: &api.Rollback{Check: "app web healthy", ExitCode: 1}}
	put(t, s, rb, nil)
	drift := run("drift-1")
	drift.Apps[1].Drift = "env changed"
	put(t, s, drift, nil)
	skew := run("skew-1")
	skew.Clock.Skew = -5 * time.Second
	put(t, s, skew, nil)
	// By its own policy (the device's max_skew), whatever the page's bound.
	skewed := run("skewed-1")
	skewed.Clock = &api.ClockStatus{State: "skewed", Skew: 3 * time.Second}
	put(t, s, skewed, nil)
	// An agent that sends only trusted: false meant anything but ok.
	untrusted := run("untrusted-1")
	untrusted.Clock.Trusted = false
	put(t, s, untrusted, nil)
	// No time server answered: neither skewed nor untrusted.
	unknown := run("unknown-1")
	unknown.Clock = &api.ClockStatus{State: "unknown"}
	put(t, s, unknown, nil)
	att := run("attest-1")
	att.Attest = &api.AttestStatus{OK: false, Reasons: []string{"pcr 7 mismatch"}}
	put(t, s, att, nil)
	wait := run("wait-1")
	wait.State = api.StateWaiting
	put(t, s, wait, nil)
	odd := run("odd_%!-1")
	odd.Groups = []string{`line-"c"`}
	put(t, s, odd, nil)
	if err := s.PutAttestation(t.Context(), store.Attestation{DeviceID: "conv-1", Time: t0, OK: true, Result: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
}

func testViewFilters(t *testing.T, s store.Store) {
	fleetFixture(t, s)
	v := viewer(t, s)
	now := t0.Add(30 * time.Minute) // every report is at t0+10m; offline after 1h
	cases := []struct {
		name string
		q    store.FleetQuery
		want []string
	}{
		{"converged", store.FleetQuery{Filter: store.FilterConverged}, []string{"attest-1", "conv-1", "drift-1", "odd_%!-1", "skew-1", "skewed-1", "unknown-1", "untrusted-1"}},
		{"updating", store.FleetQuery{Filter: store.FilterUpdating}, []string{"trial-1", "upd-1"}},
		{"trial", store.FleetQuery{Filter: store.FilterTrial}, []string{"trial-1"}},
		{"degraded", store.FleetQuery{Filter: store.FilterDegraded}, []string{"rb-1"}},
		{"stalled", store.FleetQuery{Filter: store.FilterStalled}, []string{"stall-1"}},
		{"rolled back", store.FleetQuery{Filter: store.FilterRolledBack}, []string{"rb-1"}},
		{"drifted", store.FleetQuery{Filter: store.FilterDrifted}, []string{"drift-1"}},
		{"clock skewed", store.FleetQuery{Filter: store.FilterClockSkewed}, []string{"skew-1", "skewed-1"}},
		{"clock skewed, wider bound", store.FleetQuery{Filter: store.FilterClockSkewed, MaxSkew: 10 * time.Second}, []string{"skewed-1"}},
		{"clock untrusted", store.FleetQuery{Filter: store.FilterClockUntrust}, []string{"untrusted-1"}},
		{"attestation failed", store.FleetQuery{Filter: store.FilterAttestFailed}, []string{"attest-1"}},
		{"waiting", store.FleetQuery{Filter: store.FilterWaiting}, []string{"wait-1"}},
		{"never reported", store.FleetQuery{Filter: store.FilterNeverSeen}, []string{"silent-1"}},
		{"offline", store.FleetQuery{Filter: store.FilterOffline}, []string{"silent-1"}},
		{"offline later", store.FleetQuery{Filter: store.FilterOffline, Now: t0.Add(2 * time.Hour), Search: "conv"}, []string{"conv-1"}},
		{"group", store.FleetQuery{Group: "line-b"}, []string{"upd-1"}},
		{"group with quotes", store.FleetQuery{Group: `line-"c"`}, []string{"odd_%!-1"}},
		{"group is not a prefix match", store.FleetQuery{Group: "line"}, []string{}},
		{"label key=value", store.FleetQuery{Label: "site=north"}, []string{"conv-1"}},
		{"label key", store.FleetQuery{Label: "site"}, []string{"conv-1", "upd-1"}},
		{"search", store.FleetQuery{Search: "RB"}, []string{"rb-1"}},
		{"search with wildcards is literal", store.FleetQuery{Search: "_%!"}, []string{"odd_%!-1"}},
		{"search and filter", store.FleetQuery{Search: "1", Filter: store.FilterDrifted}, []string{"drift-1"}},
		{"weak identity (software keys)", store.FleetQuery{Filter: store.FilterWeakIdentity, Search: "conv"}, []string{"conv-1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.q.Now.IsZero() {
				c.q.Now = now
			}
			p, err := v.FleetPage(t.Context(), c.q)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(p.Rows); !slices.Equal(got, c.want) {
				t.Errorf("ids = %v, want %v", got, c.want)
			}
			if p.Total != len(c.want) {
				t.Errorf("total = %d, want %d", p.Total, len(c.want))
			}
			cnt, err := v.FleetCounts(t.Context(), c.q)
			if err != nil {
				t.Fatal(err)
			}
			f := c.q.Filter
			if f == "" {
				f = store.FilterAll
			}
			if cnt.Counts[f] != len(c.want) {
				t.Errorf("counts[%s] = %d, want %d (%v)", f, cnt.Counts[f], len(c.want), cnt.Counts)
			}
		})
	}
	if _, err := v.FleetPage(t.Context(), store.FleetQuery{Filter: "nope"}); !errors.Is(err, store.ErrBadQuery) {
		t.Errorf("unknown filter: %v, want ErrBadQuery", err)
	}
	if _, err := v.FleetPage(t.Context(), store.FleetQuery{Sort: "body"}); !errors.Is(err, store.ErrBadQuery) {
		t.Errorf("unknown sort: %v, want ErrBadQuery", err)
	}

	// One device, with what its report said.
	r, err := v.FleetDevice(t.Context(), "rb-1", store.FleetQuery{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	want := store.FleetRow{Attempted: "c2", Commit: "c2", SpecHash: "h2", Release: "1.2.0", Target: "1.3.0", Slot: "a", UpdateState: "rolled-back", AppsTotal: 2, AppsHealthy: 2}
	if !r.Reported || r.Attempted != want.Attempted || r.Commit != want.Commit || r.SpecHash != want.SpecHash || r.Release != want.Release ||
		r.Target != want.Target || r.Slot != want.Slot || r.UpdateState != want.UpdateState || r.AppsTotal != 2 || r.AppsHealthy != 2 ||
		r.State != "degraded" || !slices.Equal(r.Groups, []string{"line-a"}) || r.ClockTrusted == nil || !*r.ClockTrusted || r.ClockState != "ok" || r.Skew != 100*time.Millisecond {
		t.Errorf("FleetDevice(rb-1) = %+v", r)
	}
	r, err = v.FleetDevice(t.Context(), "conv-1", store.FleetQuery{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if r.AttestOK == nil || !*r.AttestOK || r.Labels["tier"] != "gold" {
		t.Errorf("FleetDevice(conv-1): attest %v labels %v", r.AttestOK, r.Labels)
	}
	for id, state := range map[string]string{"skewed-1": "skewed", "unknown-1": "unknown", "untrusted-1": "untrusted"} {
		if r, err := v.FleetDevice(t.Context(), id, store.FleetQuery{Now: now}); err != nil || r.ClockState != state {
			t.Errorf("FleetDevice(%s): clock state %q, %v; want %q", id, r.ClockState, err, state)
		}
	}
	r, err = v.FleetDevice(t.Context(), "stall-1", store.FleetQuery{Now: now})
	if err != nil || r.ProblemReason != "spec-invalid" || r.Attempted != "c3" || r.Commit != "c2" {
		t.Errorf("FleetDevice(stall-1) = %+v, %v", r, err)
	}
	if _, err := v.FleetDevice(t.Context(), "nope", store.FleetQuery{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown device: %v, want ErrNotFound", err)
	}
	// Revoked devices leave the list and the counts.
	if err := s.RevokeDevice(t.Context(), "wait-1", now); err != nil {
		t.Fatal(err)
	}
	cnt, err := v.FleetCounts(t.Context(), store.FleetQuery{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if cnt.Counts[store.FilterAll] != 13 || cnt.Counts[store.FilterWaiting] != 0 {
		t.Errorf("after revoke: counts %v", cnt.Counts)
	}
}

func testViewPages(t *testing.T, s store.Store) {
	v := viewer(t, s)
	const n = 23
	for i := range n {
		id := fmt.Sprintf("dev-%02d", i)
		enrolled(t, s, id)
		st := api.Status{DeviceID: id, Seq: uint64(1 + i%5), State: api.StateConverged, Groups: []string{"g"},
			Commit: api.CommitStatus{Applied: fmt.Sprintf("c%d", i%3)}, Clock: &api.ClockStatus{Trusted: true, Skew: time.Duration(i) * time.Millisecond}}
		put(t, s, st, nil)
	}
	var all []string
	for off := 0; ; off += 10 {
		p, err := v.FleetPage(t.Context(), store.FleetQuery{Limit: 10, Offset: off})
		if err != nil {
			t.Fatal(err)
		}
		if p.Total != n {
			t.Fatalf("total = %d, want %d", p.Total, n)
		}
		if len(p.Rows) == 0 {
			break
		}
		all = append(all, ids(p.Rows)...)
	}
	if len(all) != n || !slices.IsSorted(all) {
		t.Errorf("pages gave %v", all)
	}
	cases := []struct {
		sort  string
		desc  bool
		first string
	}{
		{"id", true, "dev-22"},
		{"skew", true, "dev-22"},
		{"skew", false, "dev-00"},
		{"commit", false, "dev-00"}, // c0, then by ID
		{"commit", true, "dev-02"},  // c2
		{"seen", true, "dev-04"},    // seq 5 is received last; ties by ID
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s-desc=%v", c.sort, c.desc), func(t *testing.T) {
			p, err := v.FleetPage(t.Context(), store.FleetQuery{Sort: c.sort, Desc: c.desc, Limit: 3})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Rows) != 3 || p.Rows[0].ID != c.first {
				t.Errorf("first = %v, want %s", ids(p.Rows), c.first)
			}
		})
	}
}

// testViewRefresh: a new report changes what the view shows; a stale one
// (lower seq) does not; the stamp moves with each change.
func testViewRefresh(t *testing.T, s store.Store) {
	v := viewer(t, s)
	enrolled(t, s, "d1")
	c0, err := v.FleetCounts(t.Context(), store.FleetQuery{Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, api.Status{DeviceID: "d1", Seq: 2, State: api.StateUpdating, Commit: api.CommitStatus{Attempted: "b"}}, nil)
	c1, err := v.FleetCounts(t.Context(), store.FleetQuery{Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if c1.Stamp == c0.Stamp || c1.Counts[store.FilterUpdating] != 1 {
		t.Errorf("after a report: %+v (before %+v)", c1, c0)
	}
	put(t, s, api.Status{DeviceID: "d1", Seq: 1, State: api.StateStalled, Commit: api.CommitStatus{Attempted: "a"}}, nil)
	put(t, s, api.Status{DeviceID: "d1", Seq: 3, State: api.StateConverged, Commit: api.CommitStatus{Attempted: "b", Applied: "b"}}, nil)
	r, err := v.FleetDevice(t.Context(), "d1", store.FleetQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != "converged" || r.Commit != "b" || r.LatestSeq != 3 {
		t.Errorf("after seq 1 and 3: %+v", r)
	}
	c2, err := v.FleetCounts(t.Context(), store.FleetQuery{Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if c2.Stamp == c1.Stamp || c2.Counts[store.FilterConverged] != 1 || c2.Counts[store.FilterUpdating] != 0 {
		t.Errorf("after seq 3: %+v", c2)
	}
	c3, err := v.FleetCounts(t.Context(), store.FleetQuery{Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if c3.Stamp != c2.Stamp {
		t.Errorf("stamp moved with nothing new: %s → %s", c2.Stamp, c3.Stamp)
	}
}

func testViewRollout(t *testing.T, s store.Store) {
	v := viewer(t, s)
	dev := func(id string, seq uint64, group string, state api.State, attempted, applied string, u *api.UpdateStatus) {
		enrolled(t, s, id)
		put(t, s, api.Status{DeviceID: id, Seq: seq, State: state, Groups: strings.Split(group, ","),
			Commit: api.CommitStatus{Attempted: attempted, Applied: applied}, Update: u}, nil)
	}
	dev("a1", 1, "a", api.StateConverged, "old", "old", &api.UpdateStatus{State: "committed", Version: "1.0"})
	dev("a2", 5, "a", api.StateConverged, "new", "new", &api.UpdateStatus{State: "committed", Version: "1.1"})
	dev("a3", 6, "a", api.StateUpdating, "new", "old", &api.UpdateStatus{State: "trial", Version: "1.1"})
	dev("b1", 7, "b", api.StateStalled, "new", "old", &api.UpdateStatus{State: "rolled-back", Version: "1.0", Target: "1.1"})
	dev("b2", 8, "b", api.StateConverged, "new", "new", &api.UpdateStatus{State: "downloading", Version: "1.0", Target: "1.1"})
	// In two groups: counted in each, and once in the total.
	dev("ab1", 9, "a,b", api.StateConverged, "new", "new", &api.UpdateStatus{State: "committed", Version: "1.1"})
	ro, err := v.Rollout(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if ro.NewestCommit == nil || ro.NewestCommit.Name != "new" {
		t.Fatalf("newest commit = %+v", ro.NewestCommit)
	}
	wantCommit := []store.RolloutCount{{Group: "a", Converged: 2, InProgress: 1}, {Group: "b", Converged: 2, Failed: 1}}
	if !slices.Equal(ro.NewestCommit.Groups, wantCommit) {
		t.Errorf("commit counts = %+v, want %+v", ro.NewestCommit.Groups, wantCommit)
	}
	if w := (store.RolloutCount{Converged: 3, InProgress: 1, Failed: 1}); ro.NewestCommit.Total != w {
		t.Errorf("commit total = %+v, want %+v (each device once)", ro.NewestCommit.Total, w)
	}
	got := map[string][]store.RolloutCount{}
	totals := map[string]store.RolloutCount{}
	for _, r := range ro.Releases {
		got[r.Name], totals[r.Name] = r.Groups, r.Total
	}
	want := map[string][]store.RolloutCount{
		"1.1": {{Group: "a", Converged: 2, InProgress: 1}, {Group: "b", Converged: 1, InProgress: 1, Failed: 1}},
		"1.0": {{Group: "a", Converged: 1}},
	}
	for name, w := range want {
		if !slices.Equal(got[name], w) {
			t.Errorf("release %s = %+v, want %+v", name, got[name], w)
		}
	}
	if w := (store.RolloutCount{Converged: 2, InProgress: 2, Failed: 1}); totals["1.1"] != w {
		t.Errorf("release 1.1 total = %+v, want %+v (each device once)", totals["1.1"], w)
	}
	if len(got) != len(want) {
		t.Errorf("releases = %+v", got)
	}
}

// sqlCounter is the SQL definition of the counts that FleetCounts' in-memory
// index must agree with.
type sqlCounter interface {
	FleetCountsSQL(ctx context.Context, q store.FleetQuery) (store.FleetCounts, error)
}

// enrolAt creates and uses a token for id at now.
func enrolAt(t *testing.T, s store.Store, id, kind string, now time.Time) {
	t.Helper()
	th := hash(fmt.Sprint("tok-", id, tokenN.Add(1)))
	if err := s.CreateToken(t.Context(), store.Token{Hash: th, Kind: store.TokenEnrol, DeviceID: id, Created: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enrol(t.Context(), th, now, store.Device{KeyKind: kind, CertSerial: "01", CertNotAfter: now.Add(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
}

// testViewCountsMatchSQL: after every kind of write (reports, attestations,
// enrolment, revocation, time passing) the counts equal a fresh SQL count,
// on the hub that wrote and on a second hub sharing the database, and a
// write through either hub shows on the other. Times are real: hubs find
// each other's reports by the time they were received.
func testViewCountsMatchSQL(t *testing.T, hub1, hub2 store.Store) {
	ctx := t.Context()
	queries := []store.FleetQuery{
		{}, {Group: "line-a"}, {Group: "LINE-A"}, {Group: "line"}, {Label: "site=north"}, {Label: "site"}, {Label: "SITE=North"},
		{Search: "dev-1"}, {Search: "DEV-0"}, {Search: "_"}, {Revoked: true}, {Revoked: true, Group: "line-b"},
		{MaxSkew: 10 * time.Second}, {OfflineAfter: time.Nanosecond},
	}
	// check compares each hub's counts with SQL's for every query at now,
	// and the two hubs with each other; it returns the fleet-wide counts.
	check := func(step string, now time.Time) map[string]int {
		t.Helper()
		var first map[string]int
		for i, h := range []store.Store{hub1, hub2} {
			sc, ok := h.(sqlCounter)
			if !ok {
				t.Fatalf("store %T has no FleetCountsSQL", h)
			}
			v := viewer(t, h)
			for _, q := range queries {
				q.Now = now
				got, err := v.FleetCounts(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				want, err := sc.FleetCountsSQL(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				if !maps.Equal(got.Counts, want.Counts) || got.Stamp != want.Stamp {
					t.Errorf("%s: hub %d, query %+v:\n index %v %s\n SQL   %v %s", step, i+1, q, got.Counts, got.Stamp, want.Counts, want.Stamp)
				}
				if q.Group == "" && q.Label == "" && q.Search == "" && !q.Revoked && q.MaxSkew == 0 && q.OfflineAfter == 0 {
					if first == nil {
						first = got.Counts
					} else if !maps.Equal(first, got.Counts) {
						t.Errorf("%s: hub 1 counts %v, hub 2 counts %v", step, first, got.Counts)
					}
				}
			}
		}
		return first
	}
	expect := func(step string, c map[string]int, want map[string]int) {
		t.Helper()
		for f, n := range want {
			if c[f] != n {
				t.Errorf("%s: counts[%s] = %d, want %d (%v)", step, f, c[f], n, c)
			}
		}
	}

	// Both hubs have loaded their index before any write.
	expect("empty", check("empty", time.Now()), map[string]int{store.FilterAll: 0})
	for i := 1; i <= 12; i++ {
		kind := "tpm"
		if i%3 == 0 {
			kind = "software"
		}
		enrolAt(t, hub1, fmt.Sprintf("dev-%02d", i), kind, time.Now())
	}
	c := check("enrolled", time.Now())
	expect("enrolled", c, map[string]int{store.FilterAll: 12, store.FilterNeverSeen: 12, store.FilterOffline: 12, store.FilterWeakIdentity: 4})

	states := []api.State{api.StateConverged, api.StateUpdating, api.StateStalled, api.StateWaiting}
	status := func(i int, seq uint64) api.Status {
		st := api.Status{DeviceID: fmt.Sprintf("dev-%02d", i), Seq: seq, State: states[i%4], Groups: []string{[]string{"line-a", "line-b"}[i%2]},
			Commit: api.CommitStatus{Attempted: "c1", Applied: "c1"}, Update: &api.UpdateStatus{State: "committed", Slot: "a", Version: "1.0"},
			Clock: &api.ClockStatus{Trusted: true, Skew: 10 * time.Millisecond}, Apps: []api.AppStatus{{Name: "web", State: "running"}}}
		switch i {
		case 3:
			st.Update.State = "trial"
		case 5:
			st.Update.State = "rolled-back"
		case 6:
			st.Apps[0].Drift = "image changed"
		case 7:
			st.Clock.Skew = -5 * time.Second
		case 8:
			st.Clock.Trusted = false
		case 9:
			st.Attest = &api.AttestStatus{OK: false}
		case 10:
			st.Clock, st.Attest = nil, &api.AttestStatus{OK: true, Weak: true}
		}
		return st
	}
	for i := 1; i <= 11; i++ { // dev-12 never reports
		putAt(t, hub1, status(i, 1), map[string]string{"site": []string{"north", "south"}[i%2]}, time.Now())
	}
	c = check("reported", time.Now())
	expect("reported", c, map[string]int{store.FilterAll: 12, store.FilterNeverSeen: 1, store.FilterOffline: 1, store.FilterConverged: 2,
		store.FilterWaiting: 3, store.FilterTrial: 1, store.FilterRolledBack: 1, store.FilterDrifted: 1, store.FilterClockSkewed: 1, store.FilterClockUntrust: 1,
		store.FilterAttestFailed: 1, store.FilterWeakIdentity: 5})

	if err := hub1.PutAttestation(ctx, store.Attestation{DeviceID: "dev-01", Time: time.Now(), OK: false, Result: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	c = check("attestation failed", time.Now())
	expect("attestation failed", c, map[string]int{store.FilterAttestFailed: 2})
	if err := hub1.PutAttestation(ctx, store.Attestation{DeviceID: "dev-09", Time: time.Now(), OK: true, Result: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	c = check("attestation passed over a failed report", time.Now())
	expect("attestation passed over a failed report", c, map[string]int{store.FilterAttestFailed: 1})

	if err := hub1.RevokeDevice(ctx, "dev-02", time.Now()); err != nil {
		t.Fatal(err)
	}
	c = check("revoked", time.Now())
	expect("revoked", c, map[string]int{store.FilterAll: 11, store.FilterStalled: 2})
	enrolAt(t, hub1, "dev-02", "tpm", time.Now())
	c = check("re-enrolled", time.Now())
	expect("re-enrolled", c, map[string]int{store.FilterAll: 12, store.FilterStalled: 3})

	// Devices go offline as time passes, with no write at all.
	c = check("two hours later", time.Now().Add(2*time.Hour))
	expect("two hours later", c, map[string]int{store.FilterOffline: 12})
	c = check("back to now", time.Now())
	expect("back to now", c, map[string]int{store.FilterOffline: 1})

	// Writes through the second hub show on the first, and the other way.
	st := status(3, 2)
	st.Update.State = "committed" // dev-03: trial → committed
	putAt(t, hub2, st, nil, time.Now())
	st = status(4, 2)
	st.State = api.StateWaiting // dev-04: converged → waiting
	putAt(t, hub2, st, nil, time.Now())
	c = check("report through hub 2", time.Now())
	expect("report through hub 2", c, map[string]int{store.FilterTrial: 0, store.FilterConverged: 1, store.FilterWaiting: 4})
	if err := hub2.PutAttestation(ctx, store.Attestation{DeviceID: "dev-05", Time: time.Now(), OK: false, Result: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	c = check("attestation through hub 2", time.Now())
	expect("attestation through hub 2", c, map[string]int{store.FilterAttestFailed: 2})
	enrolAt(t, hub2, "dev-13", "software", time.Now())
	c = check("enrolment through hub 2", time.Now())
	expect("enrolment through hub 2", c, map[string]int{store.FilterAll: 13, store.FilterNeverSeen: 2})
	if err := hub2.RevokeDevice(ctx, "dev-06", time.Now()); err != nil {
		t.Fatal(err)
	}
	c = check("revocation through hub 2", time.Now())
	expect("revocation through hub 2", c, map[string]int{store.FilterAll: 12, store.FilterDrifted: 0})
	putAt(t, hub1, status(12, 1), nil, time.Now())
	c = check("report through hub 1 after hub 2's writes", time.Now())
	expect("report through hub 1 after hub 2's writes", c, map[string]int{store.FilterNeverSeen: 1, store.FilterConverged: 2})

	// The page agrees with the counts on both hubs.
	for i, h := range []store.Store{hub1, hub2} {
		for _, f := range store.Filters {
			p, err := viewer(t, h).FleetPage(ctx, store.FleetQuery{Filter: f, Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			if p.Total != c[f] {
				t.Errorf("hub %d: page total for %s = %d, counts say %d", i+1, f, p.Total, c[f])
			}
		}
	}
}
