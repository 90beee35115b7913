package web_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/web"
	"github.com/shoalfleet/shoal/internal/browsertest"
	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// rolloutHub is a hub following a Git fleet repo (devices r1..r4, a canary
// wave of one, then a wave that waits for approval) with the page showing
// its staged rollouts; the devices have reported the first commit.
type rolloutHub struct {
	*testHub
	repo *testenv.Repo
	fp   *hub.FleetPolicy
	devs map[string]*client.Client
	seq  map[string]uint64
}

func webApp(v string) string {
	return "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\nenv:\n  VERSION: \"" + v + "\"\n"
}

func startRolloutHub(t *testing.T, wo web.Options) *rolloutHub {
	t.Helper()
	repo := testenv.NewRepo(t)
	files := map[string]string{
		"fleet.yaml":      "spec:\n  network: plant\nrollout:\n  waves:\n    - {name: canary, limit: 1, bake: 0s}\n    - {name: rest, approval: true, bake: 0s}\n",
		"groups/all.yaml": "selector: {}\nspec:\n  apps:\n    web: {}\n",
		"apps/web.yaml":   webApp("1"),
	}
	for i := 1; i <= 4; i++ {
		files[fmt.Sprintf("devices/r%d.yaml", i)] = "labels:\n  role: web\n"
	}
	repo.Commit(files, "fleet")
	fp := &hub.FleetPolicy{Load: func(context.Context) (hub.FleetRevision, error) {
		f, rev, err := gitfs.Open(repo.Dir, "HEAD")
		if err != nil {
			return hub.FleetRevision{}, err
		}
		return hub.FleetRevision{FS: f, Revision: rev}, nil
	}}
	if err := fp.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	st := openSQLite(t)
	rh := &rolloutHub{repo: repo, fp: fp, devs: map[string]*client.Client{}, seq: map[string]uint64{}}
	// The devices enrol and report the first commit before the hub follows the fleet.
	pre := startHub(t, st, web.Options{}, &verdicts{m: map[string]api.AttestResult{}})
	rh.testHub = pre
	_, c1, _ := fp.Current()
	keys := map[string]*ecdsa.PrivateKey{}
	for i := 1; i <= 4; i++ {
		id := fmt.Sprintf("r%d", i)
		tr, err := hub.CreateEnrolToken(t.Context(), st, id, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		keys[id], _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		cert, err := client.Enrol(t.Context(), pre.URL, tr.Token, keys[id], api.KeySoftware, client.EnrolOptions{CAFingerprint: pre.CAFingerprint()})
		if err != nil {
			t.Fatal(err)
		}
		rh.devs[id] = rh.connect(t, keys[id], cert)
		rh.report(t, id, c1, api.StateConverged, nil)
	}
	pre.stop()
	late := &lateRollouts{}
	wo.Rollouts = late
	rh.testHub = startHubWith(t, st, wo, func(o *hub.Options) { o.Fleet, o.RolloutTick = fp, 50*time.Millisecond })
	late.h = rh.testHub.Hub
	for id, cl := range rh.devs {
		rh.devs[id] = rh.connect(t, keys[id], cl.Certificate())
	}
	return rh
}

func (rh *rolloutHub) connect(t *testing.T, key *ecdsa.PrivateKey, cert *api.Certificate) *client.Client {
	t.Helper()
	c, err := client.New(client.Options{Hub: rh.URL, Key: key, Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// lateRollouts hands the page, built before the hub, the hub's rollouts.
type lateRollouts struct{ h *hub.Hub }

func (l *lateRollouts) RolloutView(ctx context.Context, commit string, devices bool) (api.RolloutView, error) {
	return l.h.RolloutView(ctx, commit, devices)
}

func (l *lateRollouts) RolloutAct(ctx context.Context, a api.RolloutAction) (api.RolloutView, error) {
	return l.h.RolloutAct(ctx, a)
}

func (rh *rolloutHub) specHash(t *testing.T, id string) string {
	t.Helper()
	f, _, _ := rh.fp.Current()
	d, err := f.Render(id)
	if err != nil {
		t.Fatal(err)
	}
	return d.Hash()
}

func (rh *rolloutHub) report(t *testing.T, id, commit string, state api.State, mod func(*api.Status)) {
	t.Helper()
	rh.seq[id]++
	s := api.Status{Seq: rh.seq[id], State: state, Commit: api.CommitStatus{Applied: commit, Attempted: commit, SpecHash: rh.specHash(t, id)}}
	if mod != nil {
		mod(&s)
	}
	send(t, rh.devs[id], s)
}

func (rh *rolloutHub) grant(t *testing.T, id, commit string) bool {
	t.Helper()
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	res, err := rh.devs[id].Grant(t.Context(), &api.GrantRequest{APIVersion: api.Version, Commit: commit, SpecHash: rh.specHash(t, id), Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	return res.Grant != nil
}

func (rh *rolloutHub) commit(t *testing.T, v string) string {
	t.Helper()
	c := strings.TrimSpace(rh.repo.Commit(map[string]string{"apps/web.yaml": webApp(v)}, "web "+v))
	if err := rh.fp.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBrowserStagedRollout drives the rollout page in Chromium: the
// operator signs in and sees the waves, their states, counts and bake, the
// device that failed and its gate; approves the waiting wave, pauses,
// resumes and aborts with the page's buttons (CSRF-protected forms). A
// form without the CSRF token, or from an open-access viewer with no
// session, changes nothing.
func TestBrowserStagedRollout(t *testing.T) {
	ctx := browser(t, 1280, 1000)
	rh := startRolloutHub(t, web.Options{})
	c2 := rh.commit(t, "2")
	var canary string
	waitFor(t, "a canary admitted", func() bool {
		for id := range rh.devs {
			if rh.grant(t, id, c2) {
				canary = id
				return true
			}
		}
		return false
	})
	rh.report(t, canary, c2, api.StateConverged, nil)

	do(t, ctx, "sign in and open the rollout page",
		browsertest.Navigate(rh.URL+"/rollout"),
		chromedp.WaitVisible(css("#token")),
		chromedp.SendKeys(css("#token"), rh.Operator),
		chromedp.Submit(css("#token")),
		chromedp.WaitVisible(css(`section[data-staged="`+c2+`"]`)),
	)
	reloadUntil(t, ctx, rh.URL, "the canary wave passed", `(document.querySelector('table.waves tr[data-wave="1"]')||{dataset:{}}).dataset.state === "passed"`)
	if got := textOf(t, ctx, `table.waves tr[data-wave="2"]`); !strings.Contains(got, "waiting") || !strings.Contains(got, "needs approval") || !strings.Contains(got, "2 rest") {
		t.Errorf("rest wave row = %q", got)
	}
	if got := textOf(t, ctx, `[data-rollout-status]`); got != "running" {
		t.Errorf("status = %q", got)
	}
	if got := textOf(t, ctx, `[data-rollout-counts]`); !strings.Contains(got, "4 device(s) change: 1 healthy, 0 failed, 3 pending; 1 granted") {
		t.Errorf("counts = %q", got)
	}

	// A form posted without the CSRF token changes nothing.
	code := postForm(t, rh.URL, rh.Operator, url.Values{"action": {"pause"}, "commit": {c2}})
	if code != http.StatusForbidden {
		t.Errorf("pause without the CSRF token: %d, want 403", code)
	}
	// Approve with the page's button: the rest wave opens.
	submit(t, ctx, "approve the rest wave", `table.waves tr[data-wave="2"] button[data-action="approve"]`)
	reloadUntil(t, ctx, rh.URL, "the rest wave open", `(document.querySelector('table.waves tr[data-wave="2"]')||{dataset:{}}).dataset.state === "open"`)
	// One of the rest fails its apps gate: the wave halts; the page names it.
	var failed string
	for id := range rh.devs {
		if id != canary && rh.grant(t, id, c2) {
			failed = id
			break
		}
	}
	if failed == "" {
		t.Fatal("no device of the rest wave granted after the approval")
	}
	rh.report(t, failed, c2, api.StateWaiting, func(s *api.Status) {
		s.Commit.Applied = ""
		s.Apps = []api.AppStatus{{Name: "web", State: "running", Health: "unhealthy", Rollback: &api.Rollback{Check: "health", ExitCode: 1}}}
	})
	reloadUntil(t, ctx, rh.URL, "the failed device on the page", `!!document.querySelector('a[data-failed-device="`+failed+`"]') && document.querySelector('[data-rollout-status]').textContent === "halted"`)
	if got := textOf(t, ctx, `[data-failed-gate="apps_healthy"]`); got != "apps_healthy 1" {
		t.Errorf("failed gate = %q", got)
	}
	if got := textOf(t, ctx, `table.waves tr[data-wave="2"] + tr`); !strings.Contains(got, "can no longer be met") {
		t.Errorf("halted wave note = %q", got)
	}
	if got := textOf(t, ctx, `[data-rollout-status]`); got != "halted" {
		t.Errorf("status after the failure = %q", got)
	}
	// Abort with the page's button.
	submit(t, ctx, "abort", `button[data-action="abort"]`)
	reloadUntil(t, ctx, rh.URL, "the rollout aborted", `(document.querySelector('[data-rollout-status]')||{}).textContent === "aborted"`)
	if n := eval[int](t, ctx, `document.querySelectorAll("button[data-action]").length`); n != 0 {
		t.Errorf("an aborted rollout shows %d action buttons", n)
	}
	events := textOf(t, ctx, `[data-rollout-events]`)
	for _, want := range []string{"approved", "aborted", "halted", "from the status page"} {
		if !strings.Contains(events, want) {
			t.Errorf("events lack %q:\n%s", want, events)
		}
	}
}

// TestBrowserStagedRolloutOpenAccess: an open-access viewer sees the staged
// rollout but no buttons, and a posted action needs an operator session.
func TestBrowserStagedRolloutOpenAccess(t *testing.T) {
	ctx := browser(t, 1280, 900)
	rh := startRolloutHub(t, web.Options{OpenAccess: true})
	c2 := rh.commit(t, "2")
	do(t, ctx, "open the rollout page without signing in", browsertest.Navigate(rh.URL+"/rollout"))
	reloadUntil(t, ctx, rh.URL, "the staged rollout shown", `!!document.querySelector('section[data-staged="`+c2+`"]')`)
	if n := eval[int](t, ctx, `document.querySelectorAll("button[data-action]").length`); n != 0 {
		t.Errorf("open access shows %d action buttons", n)
	}
	if !eval[bool](t, ctx, `!!document.querySelector("[data-sign-in-to-act]")`) {
		t.Error("no sign-in hint for the actions")
	}
	// The page's JSON carries the staged rollout too.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(rh.URL + "/api/v1/rollout")
	if err != nil {
		t.Fatal(err)
	}
	var ro web.Rollout
	err = json.NewDecoder(resp.Body).Decode(&ro)
	resp.Body.Close()
	if err != nil || ro.Staged == nil || ro.Staged.Commit != c2 || len(ro.Staged.Tracks) != 1 {
		t.Fatalf("/api/v1/rollout: %v %+v", err, ro.Staged)
	}
	// Even with the CSRF cookie and field, no session: refused.
	if code := postForm(t, rh.URL, "", url.Values{"action": {"abort"}, "commit": {c2}}); code != http.StatusUnauthorized {
		t.Errorf("abort with no session: %d, want 401", code)
	}
	v, err := rh.RolloutView(t.Context(), c2, false)
	if err != nil || v.Aborted {
		t.Fatalf("rollout after a refused abort: %+v %v", v, err)
	}
}

// postForm posts an action to /rollout/action with the session (when op is
// set) and a CSRF cookie but no CSRF field.
func postForm(t *testing.T, base, op string, form url.Values) int {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", base+"/rollout/action", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "shoal_csrf", Value: strings.Repeat("c", 40)})
	if op != "" {
		req.AddCookie(&http.Cookie{Name: "shoal_operator", Value: op})
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(50 * time.Millisecond)
	}
}

// submit clicks a form's button and waits until the page the form's post
// leads to has replaced this one (the old page's JavaScript context is gone).
func submit(t *testing.T, ctx context.Context, what, button string) {
	t.Helper()
	do(t, ctx, what, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](`window.__old = true`)(ctx, tg)
		return err
	}), chromedp.Click(css(button)))
	deadline := time.Now().Add(20 * time.Second)
	for {
		done, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__old === undefined && document.readyState === "complete" && location.pathname === "/rollout"`))
		if err == nil && done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the form's page never loaded (%v)", what, err)
		}
		<-time.After(50 * time.Millisecond)
	}
}

// reloadUntil loads the rollout page again until expr holds (the
// controller steps on its own). A load that a form's own navigation
// aborts is tried again.
func reloadUntil(t *testing.T, ctx context.Context, base, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := chromedp.Run(ctx, browsertest.Navigate(base+"/rollout"))
		ok := false
		if err == nil {
			ok, err = chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		}
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			loc, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText.slice(0, 3000)`))
			t.Fatalf("%s: never true: %s\npage: %s", what, expr, loc)
		}
		<-time.After(200 * time.Millisecond)
	}
}
