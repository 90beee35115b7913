package web_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/web"
	"github.com/shoalfleet/shoal/internal/browsertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

const xssApp = `<script>window.__xss=1</script>`
const xssGroup = `<img src=x onerror="window.__xss=2">`

// browser starts headless Debian Chromium and returns a tab's context.
func browser(t *testing.T, width, height int) context.Context {
	t.Helper()
	exe := testenv.LookPath(t, "chromium", "chromium")
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		// The hub's server certificate comes from its own CA, which this
		// throwaway profile does not hold.
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
	}
	actx, cancel := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancel3)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// waitJS waits until the expression is true.
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	return browsertest.WaitJS(expr, 20*time.Second)
}

// do runs steps with a 20 s limit; on failure it reports where the page is.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		loc, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText.slice(0, 2000)`))
		t.Fatalf("%s: %v\npage: %s", what, err, loc)
	}
}

func css(s string) chromedp.CSS { return chromedp.CSS(s) }

// textOf returns the visible text of the first element matching sel.
func textOf(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(css(sel), chromedp.NodeVisible))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// TestBrowser drives the page in real Chromium against a real hub: devices
// enrol and report over mutual TLS, the operator signs in, reads the counts,
// filters by group, watches a row change live, opens a device and finds what
// the device reported; hostile names stay text.
func TestBrowser(t *testing.T) {
	ctx := browser(t, 1280, 900)
	v := &verdicts{m: map[string]api.AttestResult{
		"plant-02": {OK: false, Reasons: []string{"pcr[7] mismatch: want 4f2a…, got 9c1d…", "pcr[14] mismatch: application PCR"}},
	}}
	th := startHub(t, openSQLite(t), web.Options{LiveInterval: 200 * time.Millisecond}, v)

	p1, p2, p3 := th.enrol(t, "plant-01"), th.enrol(t, "plant-02"), th.enrol(t, "plant-03")
	const c1, c2 = "1f0c3a9e5b7d2c4e6a8b0d1f3e5c7a9b1d3f5e7a", "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d"
	send(t, p1, api.Status{Seq: 1, State: api.StateConverged, Groups: []string{"line-a"},
		Commit: api.CommitStatus{Attempted: c1, Applied: c1, SpecHash: "ab12cd34ef56"},
		Apps:   []api.AppStatus{{Name: "web", Image: "registry.local/web@sha256:aa", State: "running", Health: "healthy"}, {Name: "db", State: "running"}},
		Update: &api.UpdateStatus{State: "committed", Slot: "a", Version: "1.2.0"},
		Clock:  &api.ClockStatus{Trusted: true, Skew: 120 * time.Millisecond, Source: "ntp"}})
	attest(t, p1)
	since := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Second)
	send(t, p2, api.Status{Seq: 1, State: api.StateUpdating, Groups: []string{"line-b", xssGroup},
		Commit: api.CommitStatus{Attempted: c1, Applied: c1},
		Update: &api.UpdateStatus{State: "trial", Slot: "b", Version: "1.3.0", Target: "1.3.0", Since: since}})
	send(t, p2, api.Status{Seq: 2, State: api.StateStalled, Groups: []string{"line-b", xssGroup},
		Commit:  api.CommitStatus{Attempted: c2, Applied: c1, SpecHash: "ab12cd34ef56"},
		Apps:    []api.AppStatus{{Name: xssApp, State: "exited", Health: "unhealthy", Message: "exit 3"}},
		Update:  &api.UpdateStatus{State: "rolled-back", Slot: "a", Version: "1.2.0", Target: "1.3.0", Since: since.Add(5 * time.Minute), Rollback: &api.Rollback{Check: "app web healthy", ExitCode: 3, LogTail: []string{"panic: no config"}}},
		Clock:   &api.ClockStatus{State: "untrusted"},
		Problem: &api.Problem{Kind: "stalled", Reason: "spec-invalid", Message: "apps/web.yaml:12:9: apps.web.ports[0].host: conflicting values 80 and 8080"}})
	attest(t, p2)
	send(t, p3, api.Status{Seq: 1, State: api.StateUpdating, Groups: []string{"line-a"},
		Commit: api.CommitStatus{Attempted: c2, Applied: c1},
		Update: &api.UpdateStatus{State: "downloading", Slot: "a", Version: "1.2.0", Target: "1.3.0", Progress: 0.4},
		Clock:  &api.ClockStatus{State: "unknown"}})

	do(t, ctx, "open the page",
		browsertest.Navigate(th.URL+"/"),
		chromedp.WaitVisible(css("#token")),
	)
	loginTitle := eval[string](t, ctx, "document.title")
	do(t, ctx, "sign in",
		chromedp.SendKeys(css("#token"), th.Operator),
		chromedp.Submit(css("#token")),
		chromedp.WaitVisible(css("table.fleet")),
	)
	if !strings.Contains(loginTitle, "Sign in") {
		t.Errorf("unauthenticated visit showed %q, want the sign-in page", loginTitle)
	}

	// Counts, each a filter.
	counts := map[string]string{}
	for _, f := range []string{"all", "converged", "updating", "stalled", "rolled-back", "clock-skewed", "clock-untrusted", "attest-failed", "weak-identity"} {
		counts[f] = textOf(t, ctx, `.chips a[data-filter="`+f+`"] b`)
	}
	// An unknown clock (plant-03: no time server answered) is not a skewed one.
	want := map[string]string{"all": "3", "converged": "1", "updating": "1", "stalled": "1", "rolled-back": "1", "clock-skewed": "0", "clock-untrusted": "1",
		"attest-failed": "1", "weak-identity": "3"}
	for f, w := range want {
		if counts[f] != w {
			t.Errorf("chip %s = %q, want %q", f, counts[f], w)
		}
	}
	for id, clock := range map[string]string{"plant-01": "+120 ms", "plant-02": "untrusted", "plant-03": "unknown"} {
		if got := textOf(t, ctx, `tr[data-device="`+id+`"] td[data-clock]`); got != clock {
			t.Errorf("clock of %s in the table = %q, want %q", id, got, clock)
		}
	}

	// Hostile names are text: nothing ran, and the characters are on the page.
	xss := eval[bool](t, ctx, `window.__xss !== undefined`)
	body := textOf(t, ctx, `tr[data-device="plant-02"]`)
	if xss || !strings.Contains(body, xssGroup) {
		t.Errorf("hostile group: script ran=%v, row text %q", xss, body)
	}

	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(t.ArtifactDir(), "overview.png")
	if err := os.WriteFile(shot, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("overview screenshot: %s", shot)

	// Filter by group through the form.
	do(t, ctx, "filter by group",
		chromedp.SendKeys(css(`input[name="group"]`), "line-a"),
		chromedp.Submit(css(`input[name="group"]`)),
		chromedp.WaitVisible(css(".filters a.clear")),
	)
	rows := eval[[]string](t, ctx, `[...document.querySelectorAll("tbody tr[data-device]")].map(r => r.dataset.device)`)
	if strings.Join(rows, ",") != "plant-01,plant-03" {
		t.Errorf("group line-a shows %v, want plant-01, plant-03", rows)
	}

	// Live: a new report changes the row without a reload.
	eval[int](t, ctx, `window.__mark = 42`)
	send(t, p3, api.Status{Seq: 2, State: api.StateConverged, Groups: []string{"line-a"},
		Commit: api.CommitStatus{Attempted: c2, Applied: c2}, Update: &api.UpdateStatus{State: "committed", Slot: "b", Version: "1.3.0"}})
	do(t, ctx, "live update",
		waitJS(`(document.querySelector('tr[data-device="plant-03"] .state')||{}).textContent === "converged"`),
	)
	if eval[int](t, ctx, `window.__mark || 0`) != 42 {
		t.Error("the page reloaded for a live update")
	}

	// Open a device and find what it reported.
	do(t, ctx, "open device",
		browsertest.Navigate(th.URL+"/?group=line-b"),
		chromedp.WaitVisible(css(`a[href="/devices/plant-02"]`)),
		chromedp.Click(css(`a[href="/devices/plant-02"]`)),
		chromedp.WaitVisible(css(`#commit`)),
	)
	fields := map[string]string{}
	for _, sel := range []string{`[data-field="applied"]`, `[data-field="attempted"]`, `[data-field="problem"]`, `[data-field="update-state"]`,
		`[data-field="attestation"]`, `.reasons`, `[data-field="clock"]`, `#apps tbody`, `#update .steps`, `#update .problem`, `#reports tbody`} {
		fields[sel] = textOf(t, ctx, sel)
	}
	checks := []struct{ sel, want string }{
		{`[data-field="applied"]`, c1},
		{`[data-field="attempted"]`, c2},
		{`[data-field="problem"]`, "apps/web.yaml:12:9: apps.web.ports[0].host: conflicting values 80 and 8080"},
		{`[data-field="update-state"]`, "rolled-back"},
		{`[data-field="attestation"]`, "failed"},
		{`.reasons`, "pcr[7] mismatch"},
		{`.reasons`, "pcr[14] mismatch"},
		{`[data-field="clock"]`, "untrusted"},
		{`#apps tbody`, xssApp},
		{`#apps tbody`, "unhealthy"},
		{`#update .steps`, "trial"},
		{`#update .steps`, "rolled-back"},
		{`#update .problem`, "app web healthy (exit 3)"},
		{`#update .problem`, "panic: no config"},
		{`#reports tbody`, "spec-invalid"},
	}
	for _, c := range checks {
		if !strings.Contains(fields[c.sel], c.want) {
			t.Errorf("device page %s = %q, want it to contain %q", c.sel, fields[c.sel], c.want)
		}
	}
	if eval[bool](t, ctx, `window.__xss !== undefined`) {
		t.Error("hostile app name ran as script")
	}

	// Rollout: the newest commit per group.
	do(t, ctx, "rollout",
		chromedp.Click(css(`a[href="/rollout"]`)),
		chromedp.WaitVisible(css(`table.rollout`)),
	)
	rollout := textOf(t, ctx, `table[data-rollout="commit:`+c2+`"] tr[data-group="line-a"]`)
	if f := strings.Fields(rollout); len(f) < 4 || f[1] != "1" || f[2] != "0" || f[3] != "0" {
		t.Errorf("rollout of %s in line-a = %q, want 1 converged", c2[:8], rollout)
	}

	// Phone width: the page fits the screen (the table scrolls inside its box).
	do(t, ctx, "phone width",
		chromedp.EmulateViewport(390, 844),
		browsertest.Navigate(th.URL+"/"),
		chromedp.WaitVisible(css("table.fleet")),
	)
	if !eval[bool](t, ctx, `document.documentElement.scrollWidth <= window.innerWidth`) {
		t.Error("the overview is wider than a 390 px phone screen")
	}
	phone, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), "overview-phone.png"), phone, 0o644); err != nil {
		t.Fatal(err)
	}

	// The page follows the system's colour scheme.
	light := eval[string](t, ctx, `getComputedStyle(document.body).backgroundColor`)
	if _, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}}); err != nil {
		t.Fatal(err)
	}
	dark := eval[string](t, ctx, `getComputedStyle(document.body).backgroundColor`)
	if light != "rgb(255, 255, 255)" || dark != "rgb(15, 19, 24)" {
		t.Errorf("background: light %s, dark %s", light, dark)
	}
	if shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		_ = os.WriteFile(filepath.Join(t.ArtifactDir(), "overview-phone-dark.png"), shot, 0o644)
	}

	// Sign out: the page asks for the token again.
	do(t, ctx, "sign out",
		chromedp.Click(css(`.logout button`)),
		chromedp.WaitVisible(css("#token")),
		browsertest.Navigate(th.URL+"/"),
		chromedp.WaitVisible(css("#token")),
	)
}

// TestBrowserReceipts imports receipts from offline bundles into a real hub
// (POST /v1/admin/receipts, as `shoal receipts import` does) and finds them
// in Chromium: the overview row says the device was updated offline after
// its last report, and the device page lists each receipt.
func TestBrowserReceipts(t *testing.T) {
	ctx := browser(t, 1280, 900)
	th := startHub(t, openSQLite(t), web.Options{}, &verdicts{m: map[string]api.AttestResult{}})
	tr, err := hub.CreateEnrolToken(t.Context(), th.Store, "kiosk-7", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := client.Enrol(t.Context(), th.URL, tr.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: th.CAFingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(client.Options{Hub: th.URL, Key: key, Cert: c})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseIdleConnections)
	const before, after = "1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"
	send(t, cl, api.Status{Seq: 1, State: api.StateConverged, Time: time.Now().Add(-2 * time.Hour),
		Commit: api.CommitStatus{Attempted: before, Applied: before}})

	receipt := func(bundle, commit, result, reason string, at time.Time, errs ...string) json.RawMessage {
		r := &api.Receipt{APIVersion: api.ReceiptVersion, DeviceID: "kiosk-7", BundleHash: bundle, Commit: commit, Release: "4.2.0",
			Result: result, Reason: reason, Errors: errs, Time: at.UTC()}
		if err := api.SignReceipt(r, key); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(r)
		return b
	}
	ha, hb := strings.Repeat("a", 64), strings.Repeat("b", 64)
	batch := api.ReceiptBatch{APIVersion: api.ReceiptVersion, Receipts: []json.RawMessage{
		// Applied from a stick after the device's last report.
		receipt(ha, after, api.ReceiptApplied, "", time.Now()),
		receipt(hb, after, api.ReceiptRefused, "bundle-replayed", time.Now().Add(time.Millisecond), "bundle older than the applied one"),
	}}
	body, _ := json.Marshal(batch)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(th.CAPEM())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}}
	t.Cleanup(hc.CloseIdleConnections)
	req, _ := http.NewRequestWithContext(t.Context(), "POST", th.URL+"/v1/admin/receipts", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+th.Operator)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var res api.ReceiptBatchResult
	err = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if err != nil || len(res.Outcomes) != 2 || !res.Outcomes[0].Accepted || !res.Outcomes[1].Accepted {
		t.Fatalf("import: %d %+v %v", resp.StatusCode, res, err)
	}

	do(t, ctx, "sign in",
		browsertest.Navigate(th.URL+"/"),
		chromedp.WaitVisible(css("#token")),
		chromedp.SendKeys(css("#token"), th.Operator),
		chromedp.Submit(css("#token")),
		chromedp.WaitVisible(css(`tr[data-device="kiosk-7"] [data-offline-work]`)),
	)
	if row := textOf(t, ctx, `tr[data-device="kiosk-7"] [data-offline-work]`); !strings.Contains(row, "USB") || !strings.Contains(row, "refused") {
		t.Errorf("overview row's offline work = %q, want the latest receipt (refused)", row)
	}
	do(t, ctx, "open device",
		chromedp.Click(css(`a[href="/devices/kiosk-7"]`)),
		chromedp.WaitVisible(css(`#receipts tbody`)),
	)
	rows := eval[[]string](t, ctx, `[...document.querySelectorAll("#receipts tbody tr")].map(r => r.innerText)`)
	if len(rows) != 2 {
		t.Fatalf("device page lists %d receipts, want 2: %q", len(rows), rows)
	}
	for i, want := range [][]string{
		{"bbbbbbbb", "22222222", "4.2.0", "refused", "bundle-replayed", "bundle older than the applied one"},
		{"aaaaaaaa", "22222222", "4.2.0", "applied"},
	} {
		for _, w := range want {
			if !strings.Contains(rows[i], w) {
				t.Errorf("receipt row %d = %q, want it to contain %q", i, rows[i], w)
			}
		}
	}
	if ow := textOf(t, ctx, `[data-field="offline-work"]`); !strings.Contains(ow, "Updated offline") || !strings.Contains(ow, "22222222") {
		t.Errorf("offline work note = %q", ow)
	}
	if shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		_ = os.WriteFile(filepath.Join(t.ArtifactDir(), "device-receipts.png"), shot, 0o644)
	}
}

// TestBrowserRolloutOpenAccess opens the rollout page of an open-access hub
// in Chromium: a device in two groups counts in each group's row and once
// in the "All devices" row, and there is no session, so no "Sign out".
func TestBrowserRolloutOpenAccess(t *testing.T) {
	ctx := browser(t, 1280, 900)
	th := startHub(t, openSQLite(t), web.Options{OpenAccess: true}, &verdicts{m: map[string]api.AttestResult{}})
	const c1 = "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c"
	both, one := th.enrol(t, "edge-both"), th.enrol(t, "edge-one")
	send(t, both, api.Status{Seq: 1, State: api.StateConverged, Groups: []string{"canary", "line-a"},
		Commit: api.CommitStatus{Attempted: c1, Applied: c1}})
	send(t, one, api.Status{Seq: 1, State: api.StateUpdating, Groups: []string{"line-a"},
		Commit: api.CommitStatus{Attempted: c1}})

	do(t, ctx, "open the rollout page without signing in",
		browsertest.Navigate(th.URL+"/rollout"),
		chromedp.WaitVisible(css(`table[data-rollout="commit:`+c1+`"]`)),
	)
	row := func(sel string) []string {
		return strings.Fields(textOf(t, ctx, `table[data-rollout="commit:`+c1+`"] `+sel))
	}
	for _, c := range []struct {
		sel  string
		want []string
	}{
		{`tr[data-group="canary"]`, []string{"canary", "1", "0", "0"}},
		{`tr[data-group="line-a"]`, []string{"line-a", "1", "1", "0"}},
		{`tr[data-total]`, []string{"All", "devices", "1", "1", "0"}},
	} {
		if got := row(c.sel); !slices.Equal(got, c.want) {
			t.Errorf("rollout row %s = %q, want %q", c.sel, got, c.want)
		}
	}
	if n := eval[int](t, ctx, `document.querySelectorAll(".logout").length`); n != 0 {
		t.Errorf("open-access page shows %d sign-out button(s), want none", n)
	}
	do(t, ctx, "overview", browsertest.Navigate(th.URL+"/"), chromedp.WaitVisible(css("table.fleet")))
	if n := eval[int](t, ctx, `document.querySelectorAll(".logout").length`); n != 0 {
		t.Errorf("open-access overview shows %d sign-out button(s), want none", n)
	}
}

// TestBrowserStates checks the one vocabulary of device states in Chromium:
// a device in each api.State, each state a chip with its label and count,
// the table saying the same word, and each chip filtering to its device.
func TestBrowserStates(t *testing.T) {
	ctx := browser(t, 1280, 900)
	th := startHub(t, openSQLite(t), web.Options{OpenAccess: true}, &verdicts{m: map[string]api.AttestResult{}})
	for _, st := range api.States {
		cl := th.enrol(t, "dev-"+string(st))
		s := api.Status{Seq: 1, State: st}
		switch st {
		case api.StateStalled:
			s.Problem = &api.Problem{Kind: "stalled", Reason: "spec-invalid", Message: "apps/web.yaml:3:1: bad"}
		case api.StateWaiting:
			s.Problem = &api.Problem{Kind: "waiting", Reason: "fetch-failed", Message: "dial tcp: refused"}
		}
		send(t, cl, s)
	}
	do(t, ctx, "open the overview", browsertest.Navigate(th.URL+"/"), chromedp.WaitVisible(css("table.fleet")))
	for _, st := range api.States {
		chip := `.chips a[data-filter="` + string(st) + `"]`
		if got, want := textOf(t, ctx, chip), "1 "+st.Label(); got != want {
			t.Errorf("chip %s = %q, want %q", st, got, want)
		}
		if got := textOf(t, ctx, `tr[data-device="dev-`+string(st)+`"] .state`); got != string(st) {
			t.Errorf("table says %q for a device that reported %q", got, st)
		}
		do(t, ctx, "filter "+string(st), chromedp.Click(css(chip)), chromedp.WaitVisible(css(chip+`.active`)))
		rows := eval[[]string](t, ctx, `[...document.querySelectorAll("tbody tr[data-device]")].map(r => r.dataset.device + ":" + r.querySelector(".state").textContent)`)
		if want := "dev-" + string(st) + ":" + string(st); len(rows) != 1 || rows[0] != want {
			t.Errorf("chip %s lists %q, want %q", st, rows, want)
		}
		do(t, ctx, "back to all", browsertest.Navigate(th.URL+"/"), chromedp.WaitVisible(css("table.fleet")))
	}
}

// TestBrowserRollbackKept: an app rolled back seconds ago, reported again
// by two later passes (as the agent repeats its record), still shows on the
// device page with its check, exit code and last log lines, and says when:
// relative and absolute, never "earlier".
func TestBrowserRollbackKept(t *testing.T) {
	ctx := browser(t, 1280, 900)
	th := startHub(t, openSQLite(t), web.Options{OpenAccess: true}, &verdicts{m: map[string]api.AttestResult{}})
	cl := th.enrol(t, "line-7")
	at := time.Now().Add(-7 * time.Second).UTC().Truncate(time.Second)
	rb := &api.Rollback{Check: "health-failed", ExitCode: 3, LogTail: []string{"starting version=2", "panic: config missing"},
		Message: "exited with code 3", Time: at}
	for seq := uint64(1); seq <= 3; seq++ {
		send(t, cl, api.Status{Seq: seq, State: api.StateStalled,
			Apps: []api.AppStatus{{Name: "web", State: "running", Health: "healthy", Rollback: rb,
				Message: "rolled-back: app \"web\": healthcheck: unhealthy: this version was rolled back at " + at.Format(time.RFC3339)}},
			Update:  &api.UpdateStatus{State: "rolled-back", Version: "1.2.0", Target: "1.3.0", Rollback: &api.Rollback{Check: "health-gate-failed", Message: "app web unhealthy", Time: at}},
			Problem: &api.Problem{Kind: "stalled", Reason: "health-failed", Message: "containers: app \"web\": healthcheck: unhealthy"}})
	}
	do(t, ctx, "open the device", browsertest.Navigate(th.URL+"/devices/line-7"), chromedp.WaitVisible(css(`[data-rollback="web"]`)))
	app := textOf(t, ctx, `[data-rollback="web"]`)
	for _, want := range []string{"App web", "Rolled back", "s ago", at.Format("2006-01-02 15:04:05Z"), "health-failed (exit 3)", "exited with code 3", "panic: config missing"} {
		if !strings.Contains(app, want) {
			t.Errorf("app rollback = %q, want it to contain %q", app, want)
		}
	}
	if strings.Contains(app, "earlier") {
		t.Errorf("app rollback says %q", app)
	}
	if iso := eval[string](t, ctx, `document.querySelector('[data-rollback="web"] time').getAttribute("datetime")`); iso != at.Format(time.RFC3339) {
		t.Errorf("rollback <time datetime=%q>, want %s", iso, at.Format(time.RFC3339))
	}
	upd := textOf(t, ctx, `[data-rollback="update"]`)
	if !strings.Contains(upd, "s ago") || !strings.Contains(upd, "health-gate-failed") || !strings.Contains(upd, "app web unhealthy") {
		t.Errorf("update rollback = %q", upd)
	}
}

// TestBrowserAttestationPCRs: a verdict that held the boot PCRs to the
// release's values says "passed"; one the hub could only check for
// freshness and signature (no PCR policy: no --fleet) says "PCRs not
// checked", never "passed", on the overview, the device page and in the
// JSON API.
func TestBrowserAttestationPCRs(t *testing.T) {
	ctx := browser(t, 1280, 900)
	v := &verdicts{m: map[string]api.AttestResult{
		"checked":   {OK: true, CheckedPCRs: []int{0, 7}},
		"unchecked": {OK: true},
		"refused":   {OK: false, Reasons: []string{"pcr-mismatch: PCR 7"}},
	}}
	th := startHub(t, openSQLite(t), web.Options{OpenAccess: true}, v)
	for _, id := range []string{"checked", "unchecked", "refused"} {
		cl := th.enrol(t, id)
		send(t, cl, api.Status{Seq: 1, State: api.StateConverged})
		attest(t, cl)
	}
	do(t, ctx, "overview", browsertest.Navigate(th.URL+"/"), chromedp.WaitVisible(css(`tr[data-device="refused"]`)))
	for id, want := range map[string]string{"checked": "passed", "unchecked": "PCRs not checked", "refused": "failed"} {
		if got := textOf(t, ctx, `tr[data-device="`+id+`"] [data-attestation]`); !strings.HasPrefix(got, want) {
			t.Errorf("overview: %s's attestation = %q, want %q", id, got, want)
		}
	}
	for id, want := range map[string]string{"checked": "PCRs 0, 7 held to the release's values", "unchecked": "PCRs not checked"} {
		do(t, ctx, "device "+id, browsertest.Navigate(th.URL+"/devices/"+id), chromedp.WaitVisible(css(`[data-field="attestation"]`)))
		got := textOf(t, ctx, `[data-field="attestation"]`)
		if !strings.Contains(got, want) || (id == "unchecked" && strings.Contains(got, "passed")) {
			t.Errorf("device page of %s: attestation %q, want %q", id, got, want)
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(th.CAPEM())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}}
	t.Cleanup(hc.CloseIdleConnections)
	resp, err := hc.Get(th.URL + "/api/v1/fleet") // open access: loopback needs no token
	if err != nil {
		t.Fatal(err)
	}
	var f web.Fleet
	err = json.NewDecoder(resp.Body).Decode(&f)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, d := range f.Devices {
		got[d.ID] = d.Attestation
	}
	if got["checked"] != web.AttestOK || got["unchecked"] != web.AttestPCRsNotChecked || got["refused"] != web.AttestFailed {
		t.Errorf("API attestation fields %v", got)
	}
}
