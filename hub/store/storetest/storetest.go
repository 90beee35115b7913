// Package storetest is the behavioural conformance suite every hub store
// backend must pass. Backend tests call Run with a function that opens a
// fresh, empty store.
package storetest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/hub/store"
)

// Open returns a fresh, empty, migrated store, closed by the caller's cleanup.
type Open func(t *testing.T) store.Store

var tokenN atomic.Int64

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func hash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// enrolled creates and uses a token for id.
func enrolled(t *testing.T, s store.Store, id string) store.Device {
	t.Helper()
	ctx := t.Context()
	th := hash(fmt.Sprint("tok-", id, tokenN.Add(1)))
	if err := s.CreateToken(ctx, store.Token{Hash: th, Kind: store.TokenEnrol, DeviceID: id, Created: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	d, err := s.Enrol(ctx, th, t0, store.Device{KeyKind: "software", CertSerial: "01", CertNotAfter: t0.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func report(id string, seq uint64, state string) store.Report {
	return store.Report{DeviceID: id, Seq: seq, Time: t0.Add(time.Duration(seq) * time.Minute), Received: t0.Add(time.Duration(seq) * time.Minute),
		State: state, Groups: []string{"edge"}, Body: []byte(fmt.Sprintf(`{"seq":%d}`, seq))}
}

// Run runs the suite.
func Run(t *testing.T, open Open) {
	t.Run("Tokens", func(t *testing.T) { testTokens(t, open(t)) })
	t.Run("EnrolOnce", func(t *testing.T) { testEnrolOnce(t, open(t)) })
	t.Run("Revoke", func(t *testing.T) { testRevoke(t, open(t)) })
	t.Run("Status", func(t *testing.T) { testStatus(t, open(t)) })
	t.Run("StatusConcurrent", func(t *testing.T) { testStatusConcurrent(t, open(t)) })
	t.Run("Prune", func(t *testing.T) { testPrune(t, open(t)) })
	t.Run("Nonces", func(t *testing.T) { testNonces(t, open(t)) })
	t.Run("Attestations", func(t *testing.T) { testAttestations(t, open(t)) })
	t.Run("Counters", func(t *testing.T) { testCounters(t, open(t)) })
	t.Run("Pokes", func(t *testing.T) { testPokes(t, open(t)) })
	t.Run("Receipts", func(t *testing.T) { testReceipts(t, open(t)) })
	t.Run("CA", func(t *testing.T) { testCA(t, open(t)) })
	t.Run("Relays", func(t *testing.T) { testRelays(t, open(t)) })
	t.Run("Lease", func(t *testing.T) { testLease(t, open(t)) })
	t.Run("Rollouts", func(t *testing.T) { testRollouts(t, open(t)) })
	t.Run("ReportReads", func(t *testing.T) { testReportReads(t, open(t)) })
}

func testTokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, tk := range []store.Token{
		{Hash: hash("live"), Kind: store.TokenEnrol, DeviceID: "dev-1", Created: t0, Expires: t0.Add(time.Hour)},
		{Hash: hash("expired"), Kind: store.TokenEnrol, DeviceID: "dev-2", Created: t0, Expires: t0.Add(-time.Second)},
		{Hash: hash("revoked"), Kind: store.TokenEnrol, DeviceID: "dev-3", Created: t0, Expires: t0.Add(time.Hour)},
		{Hash: hash("op"), Kind: store.TokenOperator, Created: t0},
	} {
		if err := s.CreateToken(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateToken(ctx, store.Token{Hash: hash("live"), Kind: store.TokenEnrol, DeviceID: "x", Expires: t0}); err == nil {
		t.Error("duplicate token hash accepted")
	}
	if tk, err := s.RevokeToken(ctx, hash("revoked")); err != nil || tk.Kind != store.TokenEnrol || tk.DeviceID != "dev-3" ||
		!tk.Expires.Equal(t0.Add(time.Hour)) || !tk.Used.IsZero() || !tk.Revoked {
		t.Fatalf("revoke: %+v, %v", tk, err)
	}
	if _, err := s.RevokeToken(ctx, hash("nope")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke unknown token: %v, want ErrNotFound", err)
	}
	cases := []struct {
		name string
		hash []byte
		want string
	}{
		{"live", hash("live"), "dev-1"},
		{"expired", hash("expired"), ""},
		{"revoked", hash("revoked"), ""},
		{"unknown", hash("unknown"), ""},
		{"operator token is not an enrol token", hash("op"), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, err := s.PeekEnrolToken(ctx, c.hash, t0)
			if c.want == "" {
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("peek: %q, %v; want ErrNotFound", id, err)
				}
				return
			}
			if err != nil || id != c.want {
				t.Fatalf("peek: %q, %v; want %q", id, err, c.want)
			}
		})
	}
	if err := s.CheckOperatorToken(ctx, hash("op"), t0); err != nil {
		t.Errorf("operator token: %v", err)
	}
	if err := s.CheckOperatorToken(ctx, hash("live"), t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("enrol token as operator token: %v, want ErrNotFound", err)
	}
	if tk, err := s.RevokeToken(ctx, hash("op")); err != nil || tk.Kind != store.TokenOperator {
		t.Fatalf("revoke operator token: %+v, %v", tk, err)
	}
	if err := s.CheckOperatorToken(ctx, hash("op"), t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoked operator token: %v, want ErrNotFound", err)
	}
}

func testEnrolOnce(t *testing.T, s store.Store) {
	ctx := t.Context()
	th := hash("once")
	if err := s.CreateToken(ctx, store.Token{Hash: th, Kind: store.TokenEnrol, DeviceID: "dev-a", Created: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enrol(ctx, th, t0, store.Device{ID: "dev-b", KeyKind: "tpm", CertSerial: "aa"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("enrol as another device: %v, want ErrNotFound", err)
	}
	if _, err := s.Device(ctx, "dev-b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("device written by a refused enrolment: %v", err)
	}
	// Many concurrent uses of one token: exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Enrol(ctx, th, t0, store.Device{KeyKind: "tpm", CertSerial: fmt.Sprint(i), CertNotAfter: t0.Add(time.Hour)})
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("enrol: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d enrolments with one token, want 1", wins)
	}
	d, err := s.Device(ctx, "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	if d.KeyKind != "tpm" || !d.Enrolled.Equal(t0) || !d.Revoked.IsZero() || d.LatestSeq != 0 {
		t.Errorf("device: %+v", d)
	}
	if _, err := s.PeekEnrolToken(ctx, th, t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("used token still peekable: %v", err)
	}
}

func testRevoke(t *testing.T, s store.Store) {
	ctx := t.Context()
	enrolled(t, s, "dev-r")
	if _, err := s.PutStatus(ctx, report("dev-r", 1, "converged")); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeDevice(ctx, "dev-r", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeDevice(ctx, "nobody", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
	if _, err := s.PutStatus(ctx, report("dev-r", 2, "degraded")); !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("status of revoked device: %v, want ErrRevoked", err)
	}
	if err := s.SetCert(ctx, "dev-r", "02", t0.Add(48*time.Hour)); !errors.Is(err, store.ErrRevoked) {
		t.Fatalf("renew revoked device: %v, want ErrRevoked", err)
	}
	d, err := s.Device(ctx, "dev-r")
	if err != nil {
		t.Fatal(err)
	}
	if d.Revoked.IsZero() || d.LatestSeq != 1 || d.State != "converged" || d.CertSerial != "01" {
		t.Errorf("revoked device changed: %+v", d)
	}
	if rs, _ := s.Reports(ctx, "dev-r", 10); len(rs) != 1 {
		t.Errorf("%d reports, want 1 (nothing written after revocation)", len(rs))
	}
	counts, err := s.CountByState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts["converged"] != 0 {
		t.Errorf("revoked device counted: %v", counts)
	}
	// A fresh token re-enrols and lifts the revocation.
	enrolled(t, s, "dev-r")
	if got, _ := s.Device(ctx, "dev-r"); !got.Revoked.IsZero() || got.LatestSeq != 1 {
		t.Errorf("re-enrolled: %+v", got)
	}
}

func testStatus(t *testing.T, s store.Store) {
	ctx := t.Context()
	enrolled(t, s, "dev-s")
	if _, err := s.PutStatus(ctx, report("ghost", 1, "converged")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("status of unknown device: %v", err)
	}
	steps := []struct {
		name      string
		seq       uint64
		state     string
		duplicate bool
		latest    uint64
	}{
		{"first", 1, "updating", false, 1},
		{"next", 2, "converged", false, 2},
		{"resent", 2, "stalled", true, 2},
		{"gap", 5, "degraded", false, 5},
		{"late arrival", 3, "waiting", false, 5},
		{"late resent", 3, "waiting", true, 5},
	}
	for _, st := range steps {
		res, err := s.PutStatus(ctx, report("dev-s", st.seq, st.state))
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if res.Duplicate != st.duplicate || res.Latest != st.latest {
			t.Errorf("%s: %+v, want duplicate=%v latest=%d", st.name, res, st.duplicate, st.latest)
		}
	}
	d, err := s.Device(ctx, "dev-s")
	if err != nil {
		t.Fatal(err)
	}
	if d.LatestSeq != 5 || d.State != "degraded" || len(d.Groups) != 1 || d.Groups[0] != "edge" {
		t.Errorf("device after reports: %+v", d)
	}
	rs, err := s.Reports(ctx, "dev-s", 10)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, r := range rs {
		seqs = append(seqs, r.Seq)
	}
	if fmt.Sprint(seqs) != "[5 3 2 1]" {
		t.Errorf("history seqs %v, want [5 3 2 1]", seqs)
	}
	if rs[2].State != "converged" || !bytes.Equal(rs[2].Body, []byte(`{"seq":2}`)) {
		t.Errorf("duplicate overwrote the first report: %+v", rs[2])
	}
	if rs, _ := s.Reports(ctx, "dev-s", 2); len(rs) != 2 {
		t.Errorf("limit 2: %d reports", len(rs))
	}
	counts, err := s.CountByState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts["degraded"] != 1 {
		t.Errorf("counts %v", counts)
	}
}

func testStatusConcurrent(t *testing.T, s store.Store) {
	ctx := t.Context()
	const devices, per = 4, 25
	for i := range devices {
		enrolled(t, s, fmt.Sprintf("dev-%d", i))
	}
	var wg sync.WaitGroup
	for i := range devices {
		for w := range 2 { // two writers per device send the same reports
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := uint64(1); seq <= per; seq++ {
					if _, err := s.PutStatus(ctx, report(fmt.Sprintf("dev-%d", i), seq, "converged")); err != nil {
						t.Errorf("writer %d: %v", w, err)
						return
					}
				}
			}()
		}
	}
	// Reports for an unknown device, mixed into the same bursts, fail alone.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := uint64(1); seq <= per; seq++ {
			if _, err := s.PutStatus(ctx, report("ghost", seq, "converged")); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("unknown device: %v, want ErrNotFound", err)
				return
			}
		}
	}()
	wg.Wait()
	if rs, _ := s.Reports(ctx, "ghost", 10); len(rs) != 0 {
		t.Errorf("unknown device has %d reports", len(rs))
	}
	for i := range devices {
		rs, err := s.Reports(ctx, fmt.Sprintf("dev-%d", i), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != per || rs[0].Seq != per {
			t.Errorf("dev-%d: %d reports, newest %d; want %d", i, len(rs), rs[0].Seq, per)
		}
	}
}

func testPrune(t *testing.T, s store.Store) {
	ctx := t.Context()
	enrolled(t, s, "dev-p")
	for seq := uint64(1); seq <= 5; seq++ {
		if _, err := s.PutStatus(ctx, report("dev-p", seq, "converged")); err != nil {
			t.Fatal(err)
		}
	}
	// Everything is older than the cutoff, but the latest report stays.
	n, err := s.PruneReports(ctx, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("pruned %d, want 4", n)
	}
	rs, _ := s.Reports(ctx, "dev-p", 10)
	if len(rs) != 1 || rs[0].Seq != 5 {
		t.Errorf("left %+v, want only seq 5", rs)
	}
}

func testNonces(t *testing.T, s store.Store) {
	ctx := t.Context()
	n1, n2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	if err := s.PutNonce(ctx, "dev-n", n1, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutNonce(ctx, "dev-n", n2, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		device string
		nonce  []byte
		now    time.Time
		ok     bool
	}{
		{"another device's nonce", "dev-other", n1, t0, false},
		{"expired", "dev-n", n2, t0.Add(2 * time.Minute), false},
		{"unknown", "dev-n", bytes.Repeat([]byte{3}, 32), t0, false},
		{"good", "dev-n", n1, t0, true},
		{"reused", "dev-n", n1, t0, false},
	}
	for _, c := range cases {
		err := s.UseNonce(ctx, c.device, c.nonce, c.now)
		if c.ok && err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if !c.ok && !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", c.name, err)
		}
	}
}

func testAttestations(t *testing.T, s store.Store) {
	ctx := t.Context()
	enrolled(t, s, "dev-at")
	if err := s.PutAttestation(ctx, store.Attestation{DeviceID: "ghost", Time: t0, OK: true, Result: []byte("{}")}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("attestation of unknown device: %v", err)
	}
	for i, ok := range []bool{false, true} {
		ak := []byte(fmt.Sprint("ak", i))
		if err := s.PutAttestation(ctx, store.Attestation{DeviceID: "dev-at", Time: t0.Add(time.Duration(i) * time.Minute), OK: ok, Result: []byte(fmt.Sprintf(`{"ok":%v}`, ok)), AK: ak}); err != nil {
			t.Fatal(err)
		}
	}
	as, err := s.Attestations(ctx, "dev-at", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(as) != 2 || !as[0].OK || as[1].OK || string(as[0].Result) != `{"ok":true}` {
		t.Errorf("attestations %+v", as)
	}
	d, _ := s.Device(ctx, "dev-at")
	if d.AttestOK == nil || !*d.AttestOK || !d.AttestTime.Equal(t0.Add(time.Minute)) || string(d.AK) != "ak0" || d.AttestPCRs {
		t.Errorf("device attestation: %v %v, AK %q (the first registered stays), PCRs checked %v", d.AttestOK, d.AttestTime, d.AK, d.AttestPCRs)
	}
	// Whether the boot PCRs were held to expected values goes with the
	// latest verdict, on the device and in the fleet view.
	for i, pcrs := range []bool{true, false, true} {
		if err := s.PutAttestation(ctx, store.Attestation{DeviceID: "dev-at", Time: t0.Add(time.Duration(2+i) * time.Minute), OK: true, PCRsChecked: pcrs, Result: []byte(`{"ok":true}`)}); err != nil {
			t.Fatal(err)
		}
		d, _ := s.Device(ctx, "dev-at")
		if d.AttestPCRs != pcrs {
			t.Errorf("verdict %d: device's PCRs checked = %v, want %v", i, d.AttestPCRs, pcrs)
		}
		if v, ok := s.(store.Viewer); ok {
			if fr, err := v.FleetDevice(ctx, "dev-at", store.FleetQuery{}); err != nil || fr.AttestPCRs != pcrs {
				t.Errorf("verdict %d: fleet row's PCRs checked = %v (%v), want %v", i, fr.AttestPCRs, err, pcrs)
			}
		}
	}
}

func testPokes(t *testing.T, s store.Store) {
	ctx := t.Context()
	if id, err := s.LatestPoke(ctx); err != nil || id != 0 {
		t.Fatalf("latest poke of empty store: %d, %v", id, err)
	}
	var ids []int64
	for _, p := range []store.Poke{
		{Reason: "operator", Time: t0},
		{Group: "edge", Commit: "abc", Reason: "webhook", Time: t0},
		{Devices: []string{"dev-1", "dev-2"}, Reason: "operator", Time: t0},
	} {
		id, err := s.AddPoke(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if !(ids[0] < ids[1] && ids[1] < ids[2]) {
		t.Fatalf("poke IDs not increasing: %v", ids)
	}
	if id, _ := s.LatestPoke(ctx); id != ids[2] {
		t.Errorf("latest %d, want %d", id, ids[2])
	}
	ps, err := s.PokesAfter(ctx, ids[0], 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Group != "edge" || ps[0].Commit != "abc" || len(ps[1].Devices) != 2 || !ps[0].Time.Equal(t0) {
		t.Fatalf("pokes after %d: %+v", ids[0], ps)
	}
	match := []struct {
		name   string
		p      store.Poke
		id     string
		groups []string
		want   bool
	}{
		{"all", store.Poke{}, "x", nil, true},
		{"group member", ps[0], "x", []string{"edge"}, true},
		{"group outsider", ps[0], "x", []string{"lab"}, false},
		{"listed device", ps[1], "dev-2", nil, true},
		{"unlisted device", ps[1], "dev-3", []string{"edge"}, false},
	}
	for _, m := range match {
		if got := m.p.Matches(m.id, m.groups); got != m.want {
			t.Errorf("%s: Matches = %v", m.name, got)
		}
	}
}

func testCA(t *testing.T, s store.Store) {
	ctx := t.Context()
	if _, err := s.CA(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("CA of empty store: %v", err)
	}
	var wg sync.WaitGroup
	got := make([]store.CA, 4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ca, err := s.InitCA(ctx, store.CA{CertPEM: []byte(fmt.Sprint("cert", i)), KeyPEM: []byte(fmt.Sprint("key", i))})
			if err != nil {
				t.Error(err)
			}
			got[i] = ca
		}()
	}
	wg.Wait()
	for _, ca := range got[1:] {
		if !bytes.Equal(ca.CertPEM, got[0].CertPEM) || !bytes.Equal(ca.KeyPEM, got[0].KeyPEM) {
			t.Fatalf("hubs disagree on the CA: %q vs %q", ca.CertPEM, got[0].CertPEM)
		}
	}
}
