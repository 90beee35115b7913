package web_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/web"
)

const benchDevices = 10000

var bench struct {
	once  sync.Once
	dir   string
	st    store.Store
	h     http.Handler
	build time.Duration // first view build
	err   error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bench.st != nil {
		bench.st.Close()
	}
	if bench.dir != "" {
		os.RemoveAll(bench.dir)
	}
	os.Exit(code)
}

// benchStatus is a realistic report: five apps, the updater, clock, attestation.
func benchStatus(i int) api.Status {
	states := []api.State{api.StateConverged, api.StateConverged, api.StateConverged, api.StateConverged, api.StateConverged,
		api.StateConverged, api.StateConverged, api.StateUpdating, api.StateDegraded, api.StateWaiting}
	s := api.Status{APIVersion: api.Version, DeviceID: fmt.Sprintf("dev-%05d", i), Seq: 1, Time: time.Now(), Agent: "shoal-agent/1.0.0",
		Groups: []string{fmt.Sprintf("line-%02d", i%20), "plant-" + []string{"north", "south"}[i%2]}, State: states[i%len(states)],
		Commit: api.CommitStatus{Attempted: "1f0c3a9e5b7d2c4e6a8b0d1f3e5c7a9b1d3f5e7a", Applied: "1f0c3a9e5b7d2c4e6a8b0d1f3e5c7a9b1d3f5e7a", SpecHash: "sha256:ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12"},
		Update: &api.UpdateStatus{State: "committed", Slot: "a", Version: "1.2.0", Since: time.Now().Add(-time.Hour)},
		Clock:  &api.ClockStatus{Trusted: true, Skew: time.Duration(i%3000) * time.Millisecond, Source: "ntp"},
		Attest: &api.AttestStatus{OK: i%50 != 0, Time: time.Now()}}
	for _, a := range []string{"web", "db", "mqtt", "collector", "exporter"} {
		s.Apps = append(s.Apps, api.AppStatus{Name: a, Image: "registry.local/" + a + "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", State: "running", Health: "healthy"})
	}
	if i%97 == 0 {
		s.Apps[1].Drift = "env changed"
	}
	return s
}

// benchFleet builds, once per run, a SQLite hub store holding 10,000
// enrolled devices with one report each, and the page's handler over it.
func benchFleet(b *testing.B) (store.Store, http.Handler) {
	bench.once.Do(func() {
		ctx := context.Background()
		bench.dir, bench.err = os.MkdirTemp("", "shoal-web-bench-")
		if bench.err != nil {
			return
		}
		st, err := store.Open(ctx, "sqlite://"+filepath.Join(bench.dir, "hub.db"))
		if err != nil {
			bench.err = err
			return
		}
		bench.st = st
		now := time.Now()
		for i := range benchDevices {
			s := benchStatus(i)
			h := sha256.Sum256([]byte("tok-" + s.DeviceID))
			kind := "tpm"
			if i%10 == 0 {
				kind = "software"
			}
			if err := st.CreateToken(ctx, store.Token{Hash: h[:], Kind: store.TokenEnrol, DeviceID: s.DeviceID, Created: now, Expires: now.Add(time.Hour)}); err != nil {
				bench.err = err
				return
			}
			if _, err := st.Enrol(ctx, h[:], now, store.Device{KeyKind: kind, CertSerial: "01", CertNotAfter: now.Add(time.Hour)}); err != nil {
				bench.err = err
				return
			}
			body, _ := json.Marshal(s)
			if _, err := st.PutStatus(ctx, store.Report{DeviceID: s.DeviceID, Seq: 1, Time: now, Received: now, State: string(s.State), Groups: s.Groups, Body: body}); err != nil {
				bench.err = err
				return
			}
		}
		bench.h, bench.err = web.New(web.Options{Store: st, OpenAccess: true})
		if bench.err != nil {
			return
		}
		start := time.Now()
		v, _ := store.AsViewer(st)
		// Counts load the index; the page writes the derived view rows.
		if _, bench.err = v.FleetCounts(ctx, store.FleetQuery{}); bench.err != nil {
			return
		}
		_, bench.err = v.FleetPage(ctx, store.FleetQuery{})
		bench.build = time.Since(start)
	})
	if bench.err != nil {
		b.Fatal(bench.err)
	}
	return bench.st, bench.h
}

func get(b *testing.B, h http.Handler, path string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", path, nil)
	r.RemoteAddr = "127.0.0.1:1"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 {
		b.Fatalf("%s: %d %s", path, w.Code, w.Body.String())
	}
	return w
}

// BenchmarkPage is the server time of the status page over 10,000 devices.
func BenchmarkPage(b *testing.B) {
	_, h := benchFleet(b)
	b.Logf("first build of the fleet view for %d devices: %v", benchDevices, bench.build)
	for _, c := range []struct{ name, path string }{
		{"FirstPage", "/"},
		{"FilteredPage", "/?group=line-07&state=failed&sort=seen&desc=1"},
		{"SearchPage", "/?q=dev-09&sort=skew&desc=1&page=3"},
		{"LastPage", "/?page=200"},
		{"Live", "/api/v1/live"},
		{"LiveFiltered", "/api/v1/live?group=line-07"},
		{"FleetJSON", "/api/v1/fleet"},
		{"Device", "/devices/dev-04242"},
		{"Rollout", "/rollout"},
	} {
		b.Run(c.name, func(b *testing.B) {
			var n int
			for b.Loop() {
				n = get(b, h, c.path).Body.Len()
			}
			b.ReportMetric(float64(n), "bytes")
		})
	}
}

// BenchmarkBaseline is the same store read without the fleet view: list
// every device and parse its latest report (what a page needs to count
// drifted, in-trial or skewed devices), and the store's plain CountByState.
func BenchmarkBaseline(b *testing.B) {
	st, _ := benchFleet(b)
	ctx := context.Background()
	b.Run("ListAndParseAll", func(b *testing.B) {
		for b.Loop() {
			ds, err := st.ListDevices(ctx)
			if err != nil {
				b.Fatal(err)
			}
			drifted := 0
			for _, d := range ds {
				rs, err := st.Reports(ctx, d.ID, 1)
				if err != nil || len(rs) != 1 {
					b.Fatal(err)
				}
				var s api.Status
				if err := json.Unmarshal(rs[0].Body, &s); err != nil {
					b.Fatal(err)
				}
				for _, a := range s.Apps {
					if a.Drift != "" {
						drifted++
					}
				}
			}
		}
	})
	b.Run("CountByState", func(b *testing.B) {
		for b.Loop() {
			if _, err := st.CountByState(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRefresh is the live endpoint's server time right after one
// device reported: bring that device's view row and index entry up to date,
// then count 13 filters over 10,000 devices. The report comes through this
// hub (its write marks the device), or through a second hub on the same
// database file (found by the change reads). SQLRecount is the baseline: the
// counts with one SQL scan over devices joined with the view, as FleetCounts
// did before the in-memory index (after the same incremental refresh, so the
// old anti-join over every device is not in it).
func BenchmarkRefresh(b *testing.B) {
	st, h := benchFleet(b)
	ctx := context.Background()
	other, err := store.Open(ctx, "sqlite://"+filepath.Join(bench.dir, "hub.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer other.Close()
	recount, ok := st.(interface {
		FleetCountsSQL(context.Context, store.FleetQuery) (store.FleetCounts, error)
	})
	if !ok {
		b.Fatalf("store %T has no FleetCountsSQL", st)
	}
	seq := uint64(time.Now().UnixNano()) >> 20 // above any seq an earlier run stored
	report := func(b *testing.B, via store.Store) {
		seq++
		s := benchStatus(4242)
		s.Seq = seq
		s.State = []api.State{api.StateConverged, api.StateUpdating}[seq%2]
		body, _ := json.Marshal(s)
		if _, err := via.PutStatus(ctx, store.Report{DeviceID: s.DeviceID, Seq: seq, Time: time.Now(), Received: time.Now(), State: string(s.State), Groups: s.Groups, Body: body}); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		via  store.Store
		read func(b *testing.B)
	}{
		{"Live", st, func(b *testing.B) { get(b, h, "/api/v1/live") }},
		{"LiveFiltered", st, func(b *testing.B) { get(b, h, "/api/v1/live?group=line-02") }},
		{"LiveOtherHub", other, func(b *testing.B) { get(b, h, "/api/v1/live") }},
		{"SQLRecount", st, func(b *testing.B) {
			if _, err := recount.FleetCountsSQL(ctx, store.FleetQuery{}); err != nil {
				b.Fatal(err)
			}
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			// One untimed round first: the index is loaded, and the one-off
			// cost of the first report after the fleet was built (a stall
			// of 150-500 ms seen once per run here, cause not pinned down)
			// stays out of the figures.
			report(b, c.via)
			c.read(b)
			var worst time.Duration
			for b.Loop() {
				b.StopTimer()
				report(b, c.via)
				b.StartTimer()
				start := time.Now()
				c.read(b)
				worst = max(worst, time.Since(start))
			}
			// The mean hides the reads that also verify a slice of the index.
			b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms")
		})
	}
}

// TestPageWeight: the overview (a full page of 50 devices; the page size
// does not grow with the fleet), its stylesheet and script stay under 100 KB.
func TestPageWeight(t *testing.T) {
	st := openSQLite(t)
	for i := range 60 {
		seed(t, st, fmt.Sprintf("dev-%05d", i), 1, benchStatus(i))
	}
	h, err := web.New(web.Options{Store: st, OpenAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, p := range []string{"/", "/static/style.css", "/static/app.js"} {
		r := httptest.NewRequest("GET", p, nil)
		r.RemoteAddr = "127.0.0.1:1"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("%s: %d", p, w.Code)
		}
		t.Logf("%s: %d bytes", p, w.Body.Len())
		total += w.Body.Len()
	}
	if total > 100_000 {
		t.Errorf("page weight %d bytes, want under 100 KB", total)
	}
}
