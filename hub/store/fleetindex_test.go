package store

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
)

func TestLikeContains(t *testing.T) {
	cases := []struct {
		name, hay, needle string
		fold, want        bool
	}{
		{"substring", `["line-a","plant-n"]`, `"line-a"`, false, true},
		{"element, not prefix", `["line-ab"]`, `"line-a"`, false, false},
		{"case differs, PostgreSQL", `["Line-A"]`, `"line-a"`, false, false},
		{"case differs, SQLite", `["Line-A"]`, `"line-a"`, true, true},
		{"non-ASCII case is not folded", `["Éa"]`, `"éa"`, true, false},
		{"empty needle", `[]`, ``, true, true},
		{"needle longer than hay", `[]`, `"x"`, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := likeContains(c.hay, c.needle, c.fold); got != c.want {
				t.Errorf("likeContains(%q, %q, %v) = %v, want %v", c.hay, c.needle, c.fold, got, c.want)
			}
		})
	}
}

func TestLowerID(t *testing.T) {
	lite, pg := &sqlStore{d: dialect{name: "sqlite"}}, &sqlStore{d: dialect{name: "postgres"}}
	for _, c := range []struct{ id, sqlite, postgres string }{
		{"dev-01", "dev-01", "dev-01"},
		{"DEV-Ä1", "dev-Ä1", "dev-ä1"},
	} {
		if got := lite.lowerID(c.id); got != c.sqlite {
			t.Errorf("sqlite lowerID(%q) = %q, want %q", c.id, got, c.sqlite)
		}
		if got := pg.lowerID(c.id); got != c.postgres {
			t.Errorf("postgres lowerID(%q) = %q, want %q", c.id, got, c.postgres)
		}
	}
}

// TestVerifyCatchesOddClock: a report another hub stores with a received
// time far behind ours is outside the change reads; the periodic verify
// scan brings it in. The same write through this hub shows at once.
func TestVerifyCatchesOddClock(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "hub.db")
	open := func() *sqlStore {
		st, err := OpenSQLite(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st.(*sqlStore)
	}
	hub1, hub2 := open(), open()
	now := time.Now()
	for _, id := range []string{"a", "b"} {
		h := sha256.Sum256([]byte(id))
		if err := hub1.CreateToken(ctx, Token{Hash: h[:], Kind: TokenEnrol, DeviceID: id, Created: now, Expires: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if _, err := hub1.Enrol(ctx, h[:], now, Device{KeyKind: "tpm"}); err != nil {
			t.Fatal(err)
		}
	}
	converged := func() int {
		t.Helper()
		c, err := hub1.FleetCounts(ctx, FleetQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return c.Counts[FilterConverged]
	}
	if n := converged(); n != 0 {
		t.Fatalf("converged = %d before any report", n)
	}
	late := now.Add(-time.Hour) // the writing hub's clock is an hour behind
	put := func(s *sqlStore, id string) {
		t.Helper()
		body, _ := json.Marshal(api.Status{APIVersion: api.Version, DeviceID: id, Seq: 1, State: api.StateConverged})
		if _, err := s.PutStatus(ctx, Report{DeviceID: id, Seq: 1, Time: late, Received: late, State: "converged", Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	put(hub1, "a")
	if n := converged(); n != 1 {
		t.Errorf("after this hub's write: converged = %d, want 1 at once", n)
	}
	put(hub2, "b")
	if n := converged(); n != 1 {
		t.Errorf("after the other hub's write with an old clock: converged = %d, want 1 until the verify scan", n)
	}
	// One device per read: the sweep finds "b" on its second read.
	defer func(n int) { verifySlice = n }(verifySlice)
	verifySlice = 1
	hub1.view.mu.Lock()
	hub1.view.checkAt = time.Now().Add(-verifyEvery)
	hub1.view.mu.Unlock()
	if n := converged(); n != 1 {
		t.Errorf("after the verify sweep's first slice: converged = %d, want 1", n)
	}
	if n := converged(); n != 2 {
		t.Errorf("after the verify sweep's second slice: converged = %d, want 2", n)
	}
	converged() // a slice past the last device ends the sweep
	if hub1.view.sweeping {
		t.Errorf("verify sweep still running after the last device")
	}
}

// TestRefreshErrorKeepsChanges: a refresh that fails (here: its context is
// cancelled) keeps the devices it was to reload, so the next read shows them.
func TestRefreshErrorKeepsChanges(t *testing.T) {
	ctx := t.Context()
	now := time.Now()
	s := sqliteWithDevice(t, "a", now)
	if _, err := s.FleetCounts(ctx, FleetQuery{}); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(api.Status{APIVersion: api.Version, DeviceID: "a", Seq: 1, State: api.StateConverged})
	// Received an hour ago: outside the change reads, so only this
	// process's dirty mark brings it in.
	old := now.Add(-time.Hour)
	if _, err := s.PutStatus(ctx, Report{DeviceID: "a", Seq: 1, Time: old, Received: old, State: "converged", Body: body}); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.FleetCounts(cancelled, FleetQuery{}); err == nil {
		t.Fatal("FleetCounts with a cancelled context: no error")
	}
	c, err := s.FleetCounts(ctx, FleetQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Counts[FilterConverged] != 1 {
		t.Errorf("after a failed refresh: counts %v, want the report counted", c.Counts)
	}
}

// TestCountsDoNotWrite: the live endpoint's counts derive a changed
// device's view row without writing it; the next page read writes it.
func TestCountsDoNotWrite(t *testing.T) {
	ctx := t.Context()
	now := time.Now()
	s := sqliteWithDevice(t, "a", now)
	body, _ := json.Marshal(api.Status{APIVersion: api.Version, DeviceID: "a", Seq: 1, State: api.StateUpdating,
		Update: &api.UpdateStatus{State: "trial", Version: "1.1"}})
	if _, err := s.PutStatus(ctx, Report{DeviceID: "a", Seq: 1, Time: now, Received: now, State: "updating", Body: body}); err != nil {
		t.Fatal(err)
	}
	stored := func() int {
		t.Helper()
		var n int
		if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM device_view`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	c, err := s.FleetCounts(ctx, FleetQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Counts[FilterTrial] != 1 {
		t.Errorf("counts %v, want the device in trial", c.Counts)
	}
	if n := stored(); n != 0 {
		t.Errorf("after counts: %d view rows stored, want 0", n)
	}
	p, err := s.FleetPage(ctx, FleetQuery{Filter: FilterTrial})
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != 1 || len(p.Rows) != 1 || p.Rows[0].Release != "1.1" {
		t.Errorf("page %+v, want device a in trial on 1.1", p)
	}
	if n := stored(); n != 1 {
		t.Errorf("after the page: %d view rows stored, want 1", n)
	}
}

// sqliteWithDevice opens a fresh SQLite store, closed when the test ends,
// with device id enrolled at now.
func sqliteWithDevice(t *testing.T, id string, now time.Time) *sqlStore {
	t.Helper()
	st, err := OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "hub.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := st.(*sqlStore)
	h := sha256.Sum256([]byte(id))
	if err := s.CreateToken(t.Context(), Token{Hash: h[:], Kind: TokenEnrol, DeviceID: id, Created: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enrol(t.Context(), h[:], now, Device{KeyKind: "tpm"}); err != nil {
		t.Fatal(err)
	}
	return s
}
