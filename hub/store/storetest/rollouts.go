package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/hub/store"
)

func testLease(t *testing.T, s store.Store) {
	ctx := t.Context()
	const name = "rollout-controller"
	steps := []struct {
		name   string
		holder string
		at     time.Duration
		want   bool
	}{
		{"free lease taken", "hub-a", 0, true},
		{"held by another", "hub-b", 5 * time.Second, false},
		{"renewed by its holder", "hub-a", 10 * time.Second, true},
		{"still held after the first expiry", "hub-b", 20 * time.Second, false},
		{"taken once expired", "hub-b", 26 * time.Second, true},
		{"the old holder is out", "hub-a", 27 * time.Second, false},
	}
	for _, st := range steps {
		got, err := s.AcquireLease(ctx, name, st.holder, t0.Add(st.at), 15*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got != st.want {
			t.Fatalf("%s: acquired = %v, want %v", st.name, got, st.want)
		}
	}
	// A fenced write by the old holder is refused and changes nothing.
	fa := store.Fence{Name: name, Holder: "hub-a", Now: t0.Add(28 * time.Second), TTL: 15 * time.Second}
	if _, err := s.CreateRollout(ctx, fa, store.RolloutRecord{Commit: "aa", Status: "running", Created: t0, Policies: []byte("{}")}, nil, nil, ""); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("fenced write by a lost holder: %v, want ErrLeaseLost", err)
	}
	if _, err := s.CurrentRollout(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused write left a rollout: %v", err)
	}
	// The holder's fenced write renews the lease.
	fb := store.Fence{Name: name, Holder: "hub-b", Now: t0.Add(40 * time.Second), TTL: 15 * time.Second}
	if _, err := s.CreateRollout(ctx, fb, store.RolloutRecord{Commit: "aa", Status: "running", Created: t0, Policies: []byte("{}")}, nil, nil, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.AcquireLease(ctx, name, "hub-a", t0.Add(50*time.Second), 15*time.Second); got {
		t.Fatal("the lease a fenced write renewed was taken")
	}
	if err := s.ReleaseLease(ctx, name, "hub-b"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.AcquireLease(ctx, name, "hub-a", t0.Add(51*time.Second), 15*time.Second); !got {
		t.Fatal("a released lease was not free")
	}
	// Many hubs at once: exactly one gets it.
	var wg sync.WaitGroup
	var mu sync.Mutex
	winners := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := s.AcquireLease(ctx, "race", fmt.Sprint("hub-", i), t0, time.Minute)
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				winners++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if winners != 1 {
		t.Fatalf("%d hubs hold one lease", winners)
	}
}

func testRollouts(t *testing.T, s store.Store) {
	ctx := t.Context()
	if ok, err := s.AcquireLease(ctx, "c", "me", t0, time.Hour); !ok || err != nil {
		t.Fatal(ok, err)
	}
	f := store.Fence{Name: "c", Holder: "me", Now: t0, TTL: time.Hour}
	waves := []store.RolloutWave{{Track: "fleet", Index: 0, Name: "canary", State: "waiting"}, {Track: "fleet", Index: 1, Name: "rest", State: "waiting"}}
	members := []store.RolloutMember{
		{DeviceID: "d1", Track: "fleet", Wave: 0, Labels: map[string]string{"site": "a"}, FromSpec: "s0", ToSpec: "s1", Verdict: "pending"},
		{DeviceID: "d2", Track: "fleet", Wave: 1, FromSpec: "s0", ToSpec: "s1", Verdict: "pending"},
	}
	id1, err := s.CreateRollout(ctx, f, store.RolloutRecord{Commit: "c1", Status: "running", Created: t0, Policies: []byte(`{"fleet":{}}`)}, waves, members, "")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := s.CurrentRollout(ctx)
	if err != nil || cur.ID != id1 || cur.Commit != "c1" || cur.Status != "running" || string(cur.Policies) != `{"fleet":{}}` {
		t.Fatalf("current = %+v, %v", cur, err)
	}
	ms, err := s.RolloutMembers(ctx, id1)
	if err != nil || len(ms) != 2 || ms[0].DeviceID != "d1" || ms[0].Labels["site"] != "a" || ms[1].Wave != 1 {
		t.Fatalf("members = %+v, %v", ms, err)
	}

	// Grants need admission, and happen once.
	if m, fresh, err := s.GrantMember(ctx, id1, "d1", "g-1", t0); err != nil || fresh || !m.Granted.IsZero() {
		t.Fatalf("grant before admission: %+v %v %v", m, fresh, err)
	}
	if _, _, err := s.GrantMember(ctx, id1, "nobody", "g", t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("grant of a non-member: %v", err)
	}
	adm := members[0]
	adm.RolloutID, adm.Admitted, adm.Why = id1, t0.Add(time.Second), "wave"
	step := store.RolloutStep{RolloutID: id1, Status: "running", Members: []store.RolloutMember{adm},
		Waves:  []store.RolloutWave{{Track: "fleet", Index: 0, Name: "canary", State: "open", Opened: t0.Add(time.Second)}},
		Events: []store.RolloutEvent{{Time: t0, Kind: "wave-opened", Message: "opened"}, {Time: t0, DeviceID: "d1", Kind: "x", Message: "second"}}}
	if err := s.SaveRolloutStep(ctx, f, step); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := 0
	ids := map[string]bool{}
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, ok, err := s.GrantMember(ctx, id1, "d1", fmt.Sprint("g-", i), t0.Add(2*time.Second))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if ok {
				fresh++
			}
			ids[m.GrantID] = true
		}()
	}
	wg.Wait()
	if fresh != 1 || len(ids) != 1 {
		t.Fatalf("six concurrent grants: %d fresh, grant IDs %v; want one", fresh, ids)
	}
	// A controller's save keeps the grant.
	adm.Verdict = "healthy"
	if err := s.SaveRolloutStep(ctx, f, store.RolloutStep{RolloutID: id1, Status: "running", Members: []store.RolloutMember{adm}}); err != nil {
		t.Fatal(err)
	}
	m, err := s.RolloutMember(ctx, id1, "d1")
	if err != nil || m.Granted.IsZero() || m.GrantID == "" || m.Verdict != "healthy" || m.Why != "wave" {
		t.Fatalf("member after save = %+v, %v", m, err)
	}
	// Operator approval is kept across the controller's wave writes.
	if err := s.ApproveWave(ctx, id1, "fleet", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.ApproveWave(ctx, id1, "fleet", 7); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("approve a missing wave: %v", err)
	}
	if err := s.SaveRolloutStep(ctx, f, store.RolloutStep{RolloutID: id1, Status: "running",
		Waves: []store.RolloutWave{{Track: "fleet", Index: 1, Name: "rest", State: "open"}}}); err != nil {
		t.Fatal(err)
	}
	ws, err := s.RolloutWaves(ctx, id1)
	if err != nil || len(ws) != 2 || ws[0].State != "open" || !ws[0].Opened.Equal(t0.Add(time.Second)) || !ws[1].Approved || ws[1].State != "open" || ws[0].Approved {
		t.Fatalf("waves = %+v, %v", ws, err)
	}
	// Pause and abort are the operator's, status the controller's.
	if err := s.SetRolloutControl(ctx, id1, true, false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRolloutControl(ctx, 999, true, false); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("control of a missing rollout: %v", err)
	}
	if r, _ := s.RolloutByID(ctx, id1); !r.Paused || r.Aborted || r.Status != "running" {
		t.Fatalf("after pause: %+v", r)
	}
	// Joining adds once.
	j := store.RolloutMember{RolloutID: id1, DeviceID: "d3", Track: "fleet", FromSpec: "s0", ToSpec: "s1"}
	if ok, err := s.JoinRollout(ctx, j); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := s.JoinRollout(ctx, j); ok || err != nil {
		t.Fatalf("second join: %v %v", ok, err)
	}
	if m, _ := s.RolloutMember(ctx, id1, "d3"); m.Wave != -1 || m.Verdict != "pending" {
		t.Fatalf("joined member = %+v", m)
	}
	if un, err := s.UnplacedMembers(ctx, id1); err != nil || len(un) != 1 || un[0].DeviceID != "d3" {
		t.Fatalf("unplaced = %+v, %v", un, err)
	}
	// Events, newest first.
	if err := s.AddRolloutEvents(ctx, []store.RolloutEvent{{RolloutID: id1, Time: t0, DeviceID: "d9", Kind: "not-target", Message: "third"}}); err != nil {
		t.Fatal(err)
	}
	es, err := s.RolloutEvents(ctx, id1, 2)
	if err != nil || len(es) != 2 || es[0].Message != "third" || es[1].Message != "second" || es[1].DeviceID != "d1" {
		t.Fatalf("events = %+v, %v", es, err)
	}

	// A new rollout supersedes the unfinished one; specs granted before are remembered.
	id2, err := s.CreateRollout(ctx, f, store.RolloutRecord{Commit: "c2", Status: "running", Created: t0.Add(time.Hour), Policies: []byte("{}")}, nil, nil, "commit c2 is newer")
	if err != nil || id2 <= id1 {
		t.Fatal(id2, err)
	}
	if r, _ := s.RolloutByID(ctx, id1); r.Status != "superseded" || r.Reason != "commit c2 is newer" {
		t.Fatalf("old rollout = %+v", r)
	}
	if _, err := s.RolloutByID(ctx, 12345); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing rollout: %v", err)
	}
	rs, err := s.ListRollouts(ctx, 10)
	if err != nil || len(rs) != 2 || rs[0].ID != id2 {
		t.Fatalf("list = %+v, %v", rs, err)
	}
	prior, err := s.GrantedFromSpecs(ctx, id2)
	if err != nil || len(prior) != 1 || len(prior["d1"]) != 1 || prior["d1"][0] != "s0" {
		t.Fatalf("granted from-specs = %v, %v", prior, err)
	}
}

func testReportReads(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, id := range []string{"r1", "r2", "r3"} {
		enrolled(t, s, id)
	}
	for _, r := range []store.Report{report("r1", 1, "converged"), report("r1", 2, "updating"), report("r2", 1, "converged")} {
		if _, err := s.PutStatus(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RevokeDevice(ctx, "r3", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutAttestation(ctx, store.Attestation{DeviceID: "r2", Time: t0.Add(time.Minute), OK: false, Result: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	seqs := map[string]store.DeviceLatest{}
	if err := s.LatestSeqs(ctx, func(d store.DeviceLatest) { seqs[d.ID] = d }); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 2 || seqs["r1"].Seq != 2 || seqs["r2"].Seq != 1 || seqs["r1"].AttestOK != nil {
		t.Fatalf("latest seqs = %+v", seqs)
	}
	if r2 := seqs["r2"]; r2.AttestOK == nil || *r2.AttestOK || !r2.AttestTime.Equal(t0.Add(time.Minute)) {
		t.Fatalf("r2's attestation verdict = %+v", r2)
	}
	var refs []store.ReportRef
	for i := range 450 { // more than one chunk
		refs = append(refs, store.ReportRef{DeviceID: "zz", Seq: uint64(i + 10)})
	}
	refs = append(refs, store.ReportRef{DeviceID: "r1", Seq: 2}, store.ReportRef{DeviceID: "r2", Seq: 1}, store.ReportRef{DeviceID: "r2", Seq: 9})
	bodies, err := s.ReportBodies(ctx, refs)
	if err != nil {
		t.Fatal(err)
	}
	if len(bodies) != 2 || string(bodies[store.ReportRef{DeviceID: "r1", Seq: 2}]) != `{"seq":2}` || string(bodies[store.ReportRef{DeviceID: "r2", Seq: 1}]) != `{"seq":1}` {
		t.Fatalf("bodies = %v", bodies)
	}
}
