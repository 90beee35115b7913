package hub

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/pgtest"
)

// cached reports whether the hub's device cache holds id and is in use.
func (h *Hub) cached(id string) bool {
	h.devs.mu.Lock()
	defer h.devs.mu.Unlock()
	_, ok := h.devs.m[id]
	return ok && h.devs.live
}

func (h *Hub) cacheLive() bool {
	h.devs.mu.Lock()
	defer h.devs.mu.Unlock()
	return h.devs.live
}

// sendUntilCached sends reports from seq on through cl until hub h has the
// device cached, and returns the next seq. A send may not leave an entry when
// an announcement of an earlier change (the enrolment, say) lands while it
// reads the database: the cache then rightly keeps nothing.
func sendUntilCached(t *testing.T, h *testHub, cl *client.Client, id string, seq uint64) uint64 {
	t.Helper()
	waitFor(t, 10*time.Second, func() bool {
		if _, err := cl.Send(t.Context(), status(id, seq, api.StateConverged)); err != nil {
			t.Fatalf("send %d at %s: %v", seq, h.URL, err)
		}
		seq++
		return h.cached(id)
	})
	return seq
}

// refusedWithin polls f until it fails with a 403 of reason, for at most d.
func refusedWithin(t *testing.T, d time.Duration, what, reason string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if isAPI(err, 403, reason) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after %v, want 403 %s", what, err, d, reason)
		}
		<-tick.C
	}
}

// TestDeviceCacheTwoHubs runs two hubs on one PostgreSQL database, each
// caching devices for the mutual-TLS check, and checks that every change
// that matters to authentication made through one hub drops the entry on the
// other at once, so the other refuses the device within a second and never
// stores its reports.
func TestDeviceCacheTwoHubs(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	a := startHub(t, openPostgres(t, dsn))
	b := startHub(t, openPostgres(t, dsn))
	ctx := t.Context()
	waitFor(t, 10*time.Second, func() bool { return a.cacheLive() && b.cacheLive() })

	const id = "dev-cache"
	clA, key := a.enrol(t, id)
	onB := func(key *ecdsa.PrivateKey, cert *api.Certificate) *client.Client {
		cl, err := client.New(client.Options{Hub: b.URL, Key: key, Cert: cert})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.CloseIdleConnections)
		return cl
	}
	clB := onB(key, clA.Certificate())
	seq := sendUntilCached(t, b, clB, id, 1)

	// Renewal through A drops B's entry.
	if _, err := clA.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, func() bool { return !b.cached(id) })
	seq = sendUntilCached(t, b, clB, id, seq)

	// An attestation key registered through A (any hub's store) drops it too.
	if err := a.Store.PutAttestation(ctx, store.Attestation{DeviceID: id, Time: time.Now(), OK: true, Result: []byte(`{}`), AK: []byte("ak")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, func() bool { return !b.cached(id) })
	seq = sendUntilCached(t, b, clB, id, seq)

	// Re-enrolment through A with a new key: B refuses the old certificate
	// (its own-records read has no other check) and takes the new one.
	key2 := newKey(t)
	cert2, err := client.Enrol(ctx, a.URL, a.token(t, id, time.Hour), key2, api.KeySoftware, client.EnrolOptions{CAFingerprint: a.CAFingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	refusedWithin(t, time.Second, "old certificate at hub B after re-enrolment at hub A", api.ReasonDeviceRevoked, func() error {
		_, err := clB.Reports(ctx, 1)
		return err
	})
	clB = onB(key2, cert2)

	// Revocation through A: B refuses the device within a second, on a
	// route that reads no revocation itself, and stores none of its reports.
	seq = sendUntilCached(t, b, clB, id, seq)
	last := seq - 1 // the last report stored
	if code, ae, _ := call(t, a.raw(t, nil), "POST", a.URL+"/v1/admin/devices/"+id+"/revoke", a.Operator, nil); code != 204 {
		t.Fatalf("revoke at hub A: %d %+v", code, ae)
	}
	start := time.Now()
	refusedWithin(t, time.Second, "revoked device reading its records at hub B", api.ReasonDeviceRevoked, func() error {
		_, err := clB.Reports(ctx, 1)
		return err
	})
	t.Logf("hub B refused the device %v after the revocation at hub A", time.Since(start).Round(time.Millisecond))
	for ; seq < last+4; seq++ {
		if _, err := clB.Send(ctx, status(id, seq, api.StateConverged)); !isAPI(err, 403, api.ReasonDeviceRevoked) {
			t.Fatalf("report %d of the revoked device at hub B: %v", seq, err)
		}
	}
	rs, err := a.Store.Reports(ctx, id, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != int(last) || rs[0].Seq != last {
		t.Fatalf("stored reports: %d, newest %d; want %d, none after the revocation", len(rs), rs[0].Seq, last)
	}
}

// TestDeviceCacheFeedLoss cuts hub B's device change feed: the cache is
// bypassed until the feed is back, then starts empty, so a change made while
// the feed was down is never hidden by a stale entry.
func TestDeviceCacheFeedLoss(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	a := startHub(t, openPostgres(t, dsn))
	b := startHub(t, openPostgres(t, dsn))
	ctx := t.Context()
	waitFor(t, 10*time.Second, func() bool { return b.cacheLive() })

	const id = "dev-feed"
	clA, key := a.enrol(t, id)
	clB, err := client.New(client.Options{Hub: b.URL, Key: key, Cert: clA.Certificate()})
	if err != nil {
		t.Fatal(err)
	}
	defer clB.CloseIdleConnections()
	sendUntilCached(t, b, clB, id, 1)

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	listeners := func() []int {
		rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN shoal_device'`)
		if err != nil {
			t.Fatal(err)
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil {
			t.Fatal(err)
		}
		return pids
	}
	before := listeners()
	if len(before) != 2 {
		t.Fatalf("device feed listeners: %v, want one per hub", before)
	}
	// Cut both feeds (which is B's is not visible from here); both hubs
	// must fall back to the database and come back on their own.
	for _, pid := range before {
		if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, func() bool { return !b.cached(id) })
	// Revoke behind the hubs' backs while the feeds may be down: B must not
	// answer from a stale entry.
	if err := a.Store.RevokeDevice(ctx, id, time.Now()); err != nil {
		t.Fatal(err)
	}
	refusedWithin(t, time.Second, "device revoked while the feed was down", api.ReasonDeviceRevoked, func() error {
		_, err := clB.Reports(ctx, 1)
		return err
	})
	// The feeds reconnect.
	waitFor(t, 10*time.Second, func() bool {
		after := listeners()
		return len(after) == 2 && after[0] != before[0] && after[1] != before[1] && b.cacheLive()
	})
}

// TestDeviceCacheStaleRead checks the cache never keeps a read that raced a
// change: a drop that lands while the database read runs wins.
func TestDeviceCacheStaleRead(t *testing.T) {
	now := time.Now()
	c := newDevCache(time.Minute, func() time.Time { return now }, true)
	st := &raceStore{during: func() { c.drop("d") }}
	if _, err := c.get(t.Context(), st, "d"); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.m["d"]; ok {
		t.Fatal("a read that raced a drop was cached")
	}
	st.during = nil
	if _, err := c.get(t.Context(), st, "d"); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.m["d"]; !ok {
		t.Fatal("a quiet read was not cached")
	}
	if _, err := c.get(t.Context(), st, "d"); err != nil || st.reads != 2 {
		t.Fatalf("cached read: %v, %d database reads, want 2", err, st.reads)
	}
	// Not live: read through, keep nothing.
	c.setLive(false)
	if _, err := c.get(t.Context(), st, "d"); err != nil || st.reads != 3 || len(c.m) != 0 {
		t.Fatalf("not live: %v, %d reads, %d entries", err, st.reads, len(c.m))
	}
	// A read that raced going live is not kept either.
	st.during = func() { c.setLive(true) }
	if _, err := c.get(t.Context(), st, "d"); err != nil || len(c.m) != 0 {
		t.Fatalf("read across going live: %v, %d entries", err, len(c.m))
	}
	st.err = store.ErrNotFound
	st.during = nil
	if _, err := c.get(t.Context(), st, "gone"); !errors.Is(err, store.ErrNotFound) || len(c.m) != 0 {
		t.Fatalf("unknown device: %v, %d entries", err, len(c.m))
	}
}

// raceStore is a Store whose Device runs during in the middle of the read.
type raceStore struct {
	store.Store
	during func()
	reads  int
	err    error
}

func (s *raceStore) Device(_ context.Context, id string) (store.Device, error) {
	s.reads++
	if s.during != nil {
		s.during()
	}
	if s.err != nil {
		return store.Device{}, s.err
	}
	return store.Device{ID: id}, nil
}
