package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/store/storetest"
	"github.com/shoalfleet/shoal/internal/pgtest"
)

// TestGroupCommit sends bursts of reports that land in the same batches: the
// same (device, seq) twice, one device's seqs out of order, an unknown and a
// revoked device among good ones. Each report gets its own answer and the
// database ends as if they had come one by one.
func TestGroupCommit(t *testing.T) {
	pg := pgtest.New(t)
	backends := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"sqlite", func(t *testing.T) string { return "sqlite://" + filepath.Join(t.TempDir(), "hub.db") }},
		{"postgres", func(t *testing.T) string { return pg.NewDB(t) }},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			ctx := t.Context()
			s := storetest.OpenURL(t, b.url(t))
			const devices, seqs = 20, 10
			for i := range devices {
				enrol(t, s, fmt.Sprintf("g-%02d", i))
			}
			enrol(t, s, "g-revoked")
			if err := s.RevokeDevice(ctx, "g-revoked", time.Now()); err != nil {
				t.Fatal(err)
			}
			type key struct {
				id  string
				seq uint64
			}
			var mu sync.Mutex
			stored := map[key]int{} // reports acknowledged as stored (not duplicate)
			var wg sync.WaitGroup
			put := func(id string, seq uint64, want error) {
				defer wg.Done()
				res, err := s.PutStatus(ctx, store.Report{DeviceID: id, Seq: seq, Time: time.Now(), Received: time.Now(),
					State: fmt.Sprintf("s%d", seq), Groups: []string{"edge"}, Body: fmt.Appendf(nil, `{"seq":%d}`, seq)})
				if want != nil {
					if !errors.Is(err, want) {
						t.Errorf("%s/%d: %v, want %v", id, seq, err, want)
					}
					return
				}
				if err != nil {
					t.Errorf("%s/%d: %v", id, seq, err)
					return
				}
				if res.Latest < seq {
					t.Errorf("%s/%d: latest %d below the report's seq", id, seq, res.Latest)
				}
				if !res.Duplicate {
					mu.Lock()
					stored[key{id, seq}]++
					mu.Unlock()
				}
			}
			for i := range devices {
				id := fmt.Sprintf("g-%02d", i)
				for seq := uint64(seqs); seq >= 1; seq-- { // newest first: later ones are late arrivals
					wg.Add(2)
					go put(id, seq, nil)
					go put(id, seq, nil) // the same report again, at once
				}
				wg.Add(2)
				go put("g-unknown", uint64(i+1), store.ErrNotFound)
				go put("g-revoked", uint64(i+1), store.ErrRevoked)
			}
			wg.Wait()
			for i := range devices {
				id := fmt.Sprintf("g-%02d", i)
				for seq := uint64(1); seq <= seqs; seq++ {
					if n := stored[key{id, seq}]; n != 1 {
						t.Errorf("%s/%d acknowledged as stored %d times, want once", id, seq, n)
					}
				}
				d, err := s.Device(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if d.LatestSeq != seqs || d.State != fmt.Sprintf("s%d", seqs) {
					t.Errorf("%s: latest %d state %q, want %d s%d", id, d.LatestSeq, d.State, seqs, seqs)
				}
				rs, err := s.Reports(ctx, id, 100)
				if err != nil {
					t.Fatal(err)
				}
				if len(rs) != seqs {
					t.Errorf("%s: %d reports stored, want %d", id, len(rs), seqs)
				}
			}
			for _, id := range []string{"g-unknown", "g-revoked"} {
				if rs, _ := s.Reports(ctx, id, 100); len(rs) != 0 {
					t.Errorf("%s: %d reports stored", id, len(rs))
				}
			}
		})
	}
}

func enrol(t *testing.T, s store.Store, id string) {
	t.Helper()
	hash := []byte("token-" + id)
	now := time.Now()
	if err := s.CreateToken(t.Context(), store.Token{Hash: hash, Kind: store.TokenEnrol, DeviceID: id, Created: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enrol(t.Context(), hash, now, store.Device{ID: id, KeyKind: "software", CertSerial: "01", CertNotAfter: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
}

// TestWatchDevices: every change another hub makes that matters to a
// device's authentication (enrolment, renewal, AK registration, revocation)
// is announced to a hub watching on its own connection, and a status report
// is not.
func TestWatchDevices(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	a, b := storetest.OpenURL(t, dsn), storetest.OpenURL(t, dsn)
	w, ok := b.(interface {
		WatchDevices(ctx context.Context, ready func(), changed func(id string)) error
	})
	if !ok {
		t.Fatal("postgres store does not announce device changes")
	}
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan struct{})
	got := make(chan string, 10)
	done := make(chan error, 1)
	go func() { done <- w.WatchDevices(ctx, func() { close(ready) }, func(id string) { got <- id }) }()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("watch not ready within 20s")
	}
	now := time.Now()
	steps := []struct {
		name string
		do   func() error
	}{
		{"enrol", func() error { enrol(t, a, "w-1"); return nil }},
		{"report (not announced)", func() error {
			_, err := a.PutStatus(t.Context(), store.Report{DeviceID: "w-1", Seq: 1, Time: now, Received: now, State: "converged", Body: []byte(`{}`)})
			return err
		}},
		{"renew", func() error { return a.SetCert(t.Context(), "w-1", "02", now.Add(time.Hour)) }},
		{"attestation key", func() error {
			return a.PutAttestation(t.Context(), store.Attestation{DeviceID: "w-1", Time: now, OK: true, Result: []byte(`{}`), AK: []byte("ak")})
		}},
		{"revoke", func() error { return a.RevokeDevice(t.Context(), "w-1", now) }},
		{"revoke unknown (not announced)", func() error {
			if err := a.RevokeDevice(t.Context(), "w-none", now); !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("revoke unknown device: %v", err)
			}
			return nil
		}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
	// Four announcements, all for w-1, and nothing more.
	for i := range 4 {
		select {
		case id := <-got:
			if id != "w-1" {
				t.Fatalf("announcement %d for %q", i, id)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d announcements, want 4", i)
		}
	}
	// A marker change shows nothing else was queued before it.
	enrol(t, a, "w-marker")
	if id := <-got; id != "w-marker" {
		t.Fatalf("unexpected announcement for %q", id)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("watch: %v", err)
	}
}

// TestReportWriterReconnects: the connection report batches are written on
// is PostgreSQL's to lose (a restart, a terminated backend). The batch
// written on it fails and the callers may resend; the next batch dials a new
// connection and stores, and a resent report is a duplicate, not a second
// row.
func TestReportWriterReconnects(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	ctx := t.Context()
	s := storetest.OpenURL(t, dsn)
	enrol(t, s, "w-1")
	put := func(seq uint64) (store.PutResult, error) {
		return s.PutStatus(ctx, store.Report{DeviceID: "w-1", Seq: seq, Time: time.Now(), Received: time.Now(), State: "converged", Body: []byte(`{}`)})
	}
	if _, err := put(1); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'shoal-hub report writer'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d report writer connections (%v), want 1", n, err)
	}
	// The first report after the loss may fail with it; a resend stores.
	res, err := put(2)
	if err != nil {
		t.Logf("report on the lost connection: %v (resent)", err)
		res, err = put(2)
	}
	if err != nil || res.Latest != 2 {
		t.Fatalf("report after the writer's connection was lost: %+v, %v", res, err)
	}
	if res, err := put(2); err != nil || !res.Duplicate {
		t.Fatalf("resent report: %+v, %v, want a duplicate", res, err)
	}
	var rows int
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM reports WHERE device_id = 'w-1'`).Scan(&rows); err != nil || rows != 2 {
		t.Fatalf("%d reports stored (%v), want 2", rows, err)
	}
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'shoal-hub report writer'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d report writer connections after the loss (%v), want 1", n, err)
	}
}
