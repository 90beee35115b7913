package web_test

import (
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/web"
)

// seed enrols id straight in the store and stores one report.
func seed(t testing.TB, st store.Store, id string, seq uint64, s api.Status) {
	t.Helper()
	ctx := t.Context()
	h := sha256.Sum256([]byte("tok-" + id))
	now := time.Now()
	if err := st.CreateToken(ctx, store.Token{Hash: h[:], Kind: store.TokenEnrol, DeviceID: id, Created: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Enrol(ctx, h[:], now, store.Device{KeyKind: "tpm", CertSerial: "01", CertNotAfter: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	s.APIVersion, s.DeviceID, s.Seq, s.Time = api.Version, id, seq, now
	body, _ := json.Marshal(s)
	if _, err := st.PutStatus(ctx, store.Report{DeviceID: id, Seq: seq, Time: now, Received: now, State: string(s.State), Groups: s.Groups, Body: body}); err != nil {
		t.Fatal(err)
	}
}

type fixture struct {
	h  http.Handler
	op string
}

func newFixture(t *testing.T, o web.Options) fixture {
	t.Helper()
	st := openSQLite(t)
	seed(t, st, "dev-1", 1, api.Status{State: api.StateConverged, Groups: []string{"g"}, Commit: api.CommitStatus{Applied: "c1", Attempted: "c1"}})
	op, err := hub.CreateOperatorToken(t.Context(), st, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	o.Store = st
	h, err := web.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return fixture{h: h, op: op}
}

type req struct {
	method, path, remote string
	bearer, session      string
	csrfCookie           string
	form                 url.Values
	origin               string
}

func (f fixture) do(r req) *httptest.ResponseRecorder {
	var body *strings.Reader
	if r.form != nil {
		body = strings.NewReader(r.form.Encode())
	} else {
		body = strings.NewReader("")
	}
	hr := httptest.NewRequest(r.method, "https://hub.example"+r.path, body)
	if r.form != nil {
		hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	hr.RemoteAddr = "192.0.2.7:5555"
	if r.remote != "" {
		hr.RemoteAddr = r.remote
	}
	if r.bearer != "" {
		hr.Header.Set("Authorization", "Bearer "+r.bearer)
	}
	if r.session != "" {
		hr.AddCookie(&http.Cookie{Name: "shoal_operator", Value: r.session})
	}
	if r.csrfCookie != "" {
		hr.AddCookie(&http.Cookie{Name: "shoal_csrf", Value: r.csrfCookie})
	}
	if r.origin != "" {
		hr.Header.Set("Origin", r.origin)
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, hr)
	return w
}

func TestAccess(t *testing.T) {
	f := newFixture(t, web.Options{})
	open := newFixture(t, web.Options{OpenAccess: true})
	csrf := strings.Repeat("c", 43)
	cases := []struct {
		name     string
		f        fixture
		r        req
		status   int
		location string
	}{
		{"page without token goes to sign-in", f, req{method: "GET", path: "/devices/dev-1"}, 303, "/login?next=%2Fdevices%2Fdev-1"},
		{"page with session cookie", f, req{method: "GET", path: "/", session: f.op}, 200, ""},
		{"page with a wrong cookie", f, req{method: "GET", path: "/", session: "shoal-op-nope"}, 303, "/login?next=%2F"},
		{"API without token", f, req{method: "GET", path: "/api/v1/fleet"}, 401, ""},
		{"API with bearer", f, req{method: "GET", path: "/api/v1/fleet", bearer: f.op}, 200, ""},
		{"API with a wrong bearer", f, req{method: "GET", path: "/api/v1/live", bearer: "nope"}, 401, ""},
		{"open access from loopback", open, req{method: "GET", path: "/", remote: "127.0.0.1:4000"}, 200, ""},
		{"open access from loopback v6", open, req{method: "GET", path: "/api/v1/rollout", remote: "[::1]:4000"}, 200, ""},
		{"open access is loopback only", open, req{method: "GET", path: "/", remote: "10.1.2.3:4000"}, 303, "/login?next=%2F"},
		{"login without CSRF", f, req{method: "POST", path: "/login", form: url.Values{"token": {f.op}}}, 403, ""},
		{"login with a wrong CSRF", f, req{method: "POST", path: "/login", csrfCookie: csrf, form: url.Values{"token": {f.op}, "csrf": {strings.Repeat("d", 43)}}}, 403, ""},
		{"login from another origin", f, req{method: "POST", path: "/login", csrfCookie: csrf, origin: "https://evil.example", form: url.Values{"token": {f.op}, "csrf": {csrf}}}, 403, ""},
		{"login with a bad token", f, req{method: "POST", path: "/login", csrfCookie: csrf, form: url.Values{"token": {"nope"}, "csrf": {csrf}}}, 401, ""},
		{"login", f, req{method: "POST", path: "/login", csrfCookie: csrf, origin: "https://hub.example", form: url.Values{"token": {f.op}, "csrf": {csrf}, "next": {"/rollout"}}}, 303, "/rollout"},
		{"login keeps redirects on site", f, req{method: "POST", path: "/login", csrfCookie: csrf, form: url.Values{"token": {f.op}, "csrf": {csrf}, "next": {"//evil.example/"}}}, 303, "/"},
		{"logout without CSRF", f, req{method: "POST", path: "/logout", session: f.op, form: url.Values{}}, 403, ""},
		{"logout", f, req{method: "POST", path: "/logout", session: f.op, csrfCookie: csrf, form: url.Values{"csrf": {csrf}}}, 303, "/login"},
		{"bad sort", f, req{method: "GET", path: "/api/v1/fleet?sort=body", bearer: f.op}, 400, ""},
		{"bad filter on the page", f, req{method: "GET", path: "/?state=nope", session: f.op}, 400, ""},
		{"unknown device", f, req{method: "GET", path: "/api/v1/devices/nope", bearer: f.op}, 404, ""},
		{"unknown device page", f, req{method: "GET", path: "/devices/nope", session: f.op}, 404, ""},
		{"unknown API path", f, req{method: "GET", path: "/api/v2/x", bearer: f.op}, 404, ""},
		{"static asset needs no token", f, req{method: "GET", path: "/static/style.css"}, 200, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := c.f.do(c.r)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d; body %q", w.Code, c.status, w.Body.String())
			}
			if c.location != "" && w.Header().Get("Location") != c.location {
				t.Errorf("Location %q, want %q", w.Header().Get("Location"), c.location)
			}
			if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
				t.Errorf("CSP %q", csp)
			}
		})
	}
	// The session cookie a login sets.
	w := f.do(req{method: "POST", path: "/login", csrfCookie: csrf, form: url.Values{"token": {f.op}, "csrf": {csrf}}})
	var session *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == "shoal_operator" {
			session = c
		}
	}
	if session == nil || !session.Secure || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Value != f.op {
		t.Errorf("session cookie %+v", session)
	}
}

// TestEscaping: every value a device reports is escaped in the page.
func TestEscaping(t *testing.T) {
	st := openSQLite(t)
	evil := `"><script>alert(1)</script>`
	seed(t, st, "dev-x", 1, api.Status{State: api.StateStalled, Groups: []string{evil},
		Commit:  api.CommitStatus{Attempted: evil, Applied: "c1", SpecHash: evil},
		Apps:    []api.AppStatus{{Name: evil, Image: evil, State: evil, Health: evil, Drift: evil, Message: evil}},
		Update:  &api.UpdateStatus{State: evil, Slot: evil, Version: evil, Target: evil, Rollback: &api.Rollback{Check: evil, LogTail: []string{evil}}},
		Clock:   &api.ClockStatus{Source: evil, Trusted: true},
		Attest:  &api.AttestStatus{Reasons: []string{evil}},
		Problem: &api.Problem{Kind: "stalled", Reason: evil, Message: evil}})
	h, err := web.New(web.Options{Store: st, OpenAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/", "/devices/dev-x", "/rollout", "/?group=" + url.QueryEscape(evil), "/?q=" + url.QueryEscape(evil)} {
		r := httptest.NewRequest("GET", path, nil)
		r.RemoteAddr = "127.0.0.1:1"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("%s: %d", path, w.Code)
		}
		if strings.Contains(w.Body.String(), "<script>alert") {
			t.Errorf("%s: unescaped value in the page", path)
		}
	}
}

// TestDeltaOnDevicePage: the device page says what a delta install planned
// to fetch against the full image, or why it downloads the full image.
func TestDeltaOnDevicePage(t *testing.T) {
	st := openSQLite(t)
	seed(t, st, "dev-d", 1, api.Status{State: api.StateUpdating, Update: &api.UpdateStatus{State: "downloading", Slot: "a", Target: "1.3.0",
		Delta: &api.DeltaStatus{Mode: "delta", Image: 512 << 20, Full: 200 << 20, Fetch: 20 << 20, Seeded: 480 << 20, Fetched: 3 << 20}}})
	seed(t, st, "dev-f", 1, api.Status{State: api.StateUpdating, Update: &api.UpdateStatus{State: "downloading", Slot: "a", Target: "1.3.0",
		Delta: &api.DeltaStatus{Mode: "full", Why: "delta-above-share", Image: 512 << 20, Full: 200 << 20, Fetch: 200 << 20}}})
	h, err := web.New(web.Options{Store: st, OpenAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{
		"dev-d": "delta: 20.0 MiB to fetch of 200.0 MiB (90% saved) · 480.0 MiB from the running slot · 3.0 MiB fetched",
		"dev-f": `full image: 200.0 MiB · <span class="tag warn">delta-above-share</span>`,
	} {
		r := httptest.NewRequest("GET", "/devices/"+id, nil)
		r.RemoteAddr = "127.0.0.1:1"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 || !strings.Contains(w.Body.String(), want) {
			t.Errorf("%s: %d, page lacks %q", id, w.Code, want)
		}
	}
}

// TestAPI: the JSON the CLI reads.
func TestAPI(t *testing.T) {
	f := newFixture(t, web.Options{})
	w := f.do(req{method: "GET", path: "/api/v1/fleet?group=g", bearer: f.op})
	var fl web.Fleet
	if err := json.Unmarshal(w.Body.Bytes(), &fl); err != nil {
		t.Fatal(err)
	}
	if fl.Total != 1 || len(fl.Devices) != 1 || fl.Devices[0].ID != "dev-1" || fl.Devices[0].Commit != "c1" || fl.Counts["converged"] != 1 || fl.Stamp == "" {
		t.Errorf("fleet %+v", fl)
	}
	w = f.do(req{method: "GET", path: "/api/v1/devices/dev-1", bearer: f.op})
	var dd web.DeviceDetail
	if err := json.Unmarshal(w.Body.Bytes(), &dd); err != nil {
		t.Fatal(err)
	}
	if dd.Device.ID != "dev-1" || len(dd.Reports) != 1 || dd.Refused {
		t.Errorf("device %+v", dd)
	}
}

// FuzzQuery: any query string gets a page or a 400, never a 500 or a panic.
func FuzzQuery(f *testing.F) {
	for _, s := range []string{"", "state=failed&group=g&sort=seen&desc=1&page=2", "q=%25_!&label=a%3Db", "per=-1&page=999999999999", "sort=body", "offset=5&state=offline"} {
		f.Add(s)
	}
	st := openSQLite(f)
	seed(f, st, "dev-1", 1, api.Status{State: api.StateConverged, Groups: []string{"g"}})
	h, err := web.New(web.Options{Store: st, OpenAccess: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, q string) {
		for _, path := range []string{"/?", "/api/v1/fleet?", "/api/v1/live?"} {
			r := httptest.NewRequest("GET", "/", nil)
			r.URL.Path, r.URL.RawQuery = strings.TrimSuffix(path, "?"), q
			r.RemoteAddr = "127.0.0.1:1"
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != 200 && w.Code != 400 {
				t.Fatalf("%s%s: %d %s", path, q, w.Code, w.Body.String())
			}
		}
	})
}
