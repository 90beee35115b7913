package hub

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/internal/pgtest"
)

type pollResult struct {
	p      *api.Poke
	cursor int64
	err    error
}

// poll starts a long poll and reports when the hub holds it (the long-poll
// gauge rises), so a poke sent afterwards cannot race the request.
func poll(t *testing.T, th *testHub, cl *client.Client, after int64, wait time.Duration) <-chan pollResult {
	t.Helper()
	before := gaugeValue(t, th, "shoal_hub_long_polls")
	ch := make(chan pollResult, 1)
	go func() {
		p, cur, err := cl.Poll(t.Context(), after, wait)
		ch <- pollResult{p, cur, err}
	}()
	waitFor(t, 10*time.Second, func() bool { return gaugeValue(t, th, "shoal_hub_long_polls") > before })
	return ch
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		<-tick.C
	}
}

func gaugeValue(t *testing.T, th *testHub, name string) float64 {
	t.Helper()
	mfs, err := th.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) > 0 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	return 0
}

func operatorPoke(t *testing.T, th *testHub, req api.PokeRequest) api.PokeResult {
	t.Helper()
	req.APIVersion = api.Version
	code, ae, b := call(t, th.raw(t, nil), "POST", th.URL+"/v1/admin/pokes", th.Operator, mustJSON(t, &req))
	if code != 200 {
		t.Fatalf("poke: %d %+v", code, ae)
	}
	var res api.PokeResult
	mustUnmarshal(t, b, &res)
	return res
}

func TestPoke(t *testing.T) {
	th := startHub(t, openSQLite(t))
	ctx := t.Context()
	edge, edgeKey := th.enrol(t, "dev-edge")
	lab, _ := th.enrol(t, "dev-lab")
	// Reports tell the hub each device's groups.
	if _, err := edge.Send(ctx, status("dev-edge", 1, api.StateConverged)); err != nil {
		t.Fatal(err)
	}
	st := status("dev-lab", 1, api.StateConverged)
	st.Groups = []string{"lab"}
	if _, err := lab.Send(ctx, st); err != nil {
		t.Fatal(err)
	}

	// A group poke reaches the member; the other device's poll times out
	// with a cursor past the poke.
	pe := poll(t, th, edge, -1, 20*time.Second)
	pl := poll(t, th, lab, -1, 300*time.Millisecond)
	res := operatorPoke(t, th, api.PokeRequest{Group: "edge", Commit: "c0ffee"})
	if res.Devices != 1 {
		t.Errorf("group poke reaches %d devices, want 1", res.Devices)
	}
	got := <-pe
	if got.err != nil || got.p == nil || got.p.Commit != "c0ffee" || got.p.Reason != "operator" || got.p.ID != res.ID {
		t.Fatalf("edge poll: %+v", got)
	}
	gl := <-pl
	if gl.err != nil || gl.p != nil || gl.cursor != res.ID {
		t.Fatalf("lab poll: %+v, want timeout with cursor %d", gl, res.ID)
	}

	// A poke made while a device was not polling is delivered on its next
	// poll from its cursor.
	res2 := operatorPoke(t, th, api.PokeRequest{Devices: []string{"dev-lab"}})
	p, cur, err := lab.Poll(ctx, gl.cursor, 5*time.Second)
	if err != nil || p == nil || cur != res2.ID {
		t.Fatalf("missed poke: %+v %d %v", p, cur, err)
	}

	// WaitPoke, the agent's Poker, starts from now: old pokes are not
	// replayed to a restarted agent, and a timeout is a nil poke.
	wc, err := client.New(client.Options{Hub: th.URL, Key: edgeKey, Cert: edge.Certificate(), PollWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.CloseIdleConnections()
	if p, err := wc.WaitPoke(ctx, 0); p != nil || err != nil {
		t.Fatalf("WaitPoke replayed %+v, %v", p, err)
	}

	// A Git webhook pokes everyone.
	pe = poll(t, th, edge, got.cursor, 20*time.Second)
	code, ae, _ := call(t, th.raw(t, nil), "POST", th.URL+"/v1/hooks/git", th.Operator, []byte(`{"ref":"refs/heads/main","after":"feedface"}`))
	if code != 200 {
		t.Fatalf("webhook: %d %+v", code, ae)
	}
	got = <-pe
	if got.err != nil || got.p == nil || got.p.Commit != "feedface" || got.p.Reason != "webhook" {
		t.Fatalf("webhook poll: %+v", got)
	}
}

// TestTwoHubs runs two hubs on one PostgreSQL database: a device long-polls
// hub B, the operator pokes through hub A, and the poke arrives through
// LISTEN/NOTIFY. Reports through either hub land in one history.
func TestTwoHubs(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	a := startHub(t, openPostgres(t, dsn))
	b := startHub(t, openPostgres(t, dsn))
	if a.CAFingerprint() != b.CAFingerprint() {
		t.Fatal("two hubs on one database made two CAs")
	}
	ctx := t.Context()
	clA, key := a.enrol(t, "dev-2h")
	clB, err := client.New(client.Options{Hub: b.URL, Key: key, Cert: clA.Certificate()})
	if err != nil {
		t.Fatal(err)
	}
	defer clB.CloseIdleConnections()
	if _, err := clA.Send(ctx, status("dev-2h", 1, api.StateConverged)); err != nil {
		t.Fatal(err)
	}
	if _, err := clB.Send(ctx, status("dev-2h", 2, api.StateConverged)); err != nil {
		t.Fatal(err)
	}
	if ack, err := clB.Send(ctx, status("dev-2h", 1, api.StateConverged)); err != nil || !ack.Duplicate {
		t.Fatalf("resend through the other hub: %+v %v", ack, err)
	}
	pb := poll(t, b, clB, -1, 30*time.Second)
	res := operatorPoke(t, a, api.PokeRequest{Commit: "beef"})
	select {
	case got := <-pb:
		if got.err != nil || got.p == nil || got.p.ID != res.ID || got.p.Commit != "beef" {
			t.Fatalf("poll on hub B: %+v", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("poke through hub A never reached the poll on hub B")
	}
	// Revocation through hub A is refused at hub B at once.
	code, _, _ := call(t, a.raw(t, nil), "POST", a.URL+"/v1/admin/devices/dev-2h/revoke", a.Operator, nil)
	if code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	if _, err := clB.Send(ctx, status("dev-2h", 3, api.StateConverged)); !isAPI(err, 403, api.ReasonDeviceRevoked) {
		t.Fatalf("revoked device at hub B: %v", err)
	}
}

func TestHealthMetricsShutdown(t *testing.T) {
	th := startHub(t, openSQLite(t))
	cl, _ := th.enrol(t, "dev-m")
	if _, err := cl.Send(t.Context(), status("dev-m", 1, api.StateDegraded)); err != nil {
		t.Fatal(err)
	}
	hc := th.raw(t, nil)
	code, _, b := call(t, hc, "GET", th.URL+"/healthz", "", nil)
	if code != 200 || !strings.Contains(string(b), `"ok"`) {
		t.Fatalf("healthz: %d %s", code, b)
	}
	resp, err := hc.Get(th.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`shoal_hub_devices{state="degraded"} 1`,
		`shoal_hub_reports_total{result="stored"} 1`,
		`shoal_hub_enrolments_total{result="ok"} 1`,
		`shoal_hub_ingest_seconds_count 1`,
		`shoal_hub_db_seconds_count{op="put_status"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// Graceful shutdown ends a long poll at once with 204 and its cursor.
	pc := poll(t, th, cl, -1, 20*time.Second)
	start := time.Now()
	if err := th.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	got := <-pc
	if got.err != nil || got.p != nil || time.Since(start) > 10*time.Second {
		t.Fatalf("poll across shutdown: %+v after %v", got, time.Since(start))
	}
	if _, err := hc.Get(th.URL + "/healthz"); err == nil {
		t.Error("hub still serving after shutdown")
	}
}

func TestAttestation(t *testing.T) {
	th := startHub(t, openSQLite(t))
	ctx := t.Context()
	ak := newKey(t)
	// Enrolment with an attestation registers the AK. The key is a software
	// one: a TPM key must also activate its AK (TestEnrolActivation, swtpm).
	key := newKey(t)
	c, err := client.Enrol(ctx, th.URL, th.token(t, "dev-tpm", time.Hour), key, api.KeySoftware, client.EnrolOptions{
		CAFingerprint: th.CAFingerprint(),
		Attest: func(_ context.Context, nonce []byte) (*api.AttestRequest, error) {
			return softQuote(t, ak, nonce), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := th.Store.Device(ctx, "dev-tpm")
	if d.KeyKind != api.KeySoftware || len(d.AK) == 0 {
		t.Fatalf("enrolled device %+v", d)
	}
	cl, err := client.New(client.Options{Hub: th.URL, Key: key, Cert: c})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseIdleConnections()
	cases := []struct {
		name   string
		req    func(nonce []byte) *api.AttestRequest
		ok     bool
		reason string
	}{
		{"good quote", func(n []byte) *api.AttestRequest { return softQuote(t, ak, n) }, true, ""},
		{"bad signature", func(n []byte) *api.AttestRequest {
			q := softQuote(t, ak, n)
			q.Quote[len(q.Quote)-1] ^= 1
			return q
		}, false, "signature"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, err := cl.Nonce(ctx)
			if err != nil {
				t.Fatal(err)
			}
			res, err := cl.Attest(ctx, c.req(n.Nonce))
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != c.ok || (!c.ok && !strings.Contains(strings.Join(res.Reasons, " "), c.reason)) {
				t.Fatalf("result %+v", res)
			}
			as, _ := th.Store.Attestations(ctx, "dev-tpm", 1)
			if len(as) != 1 || as[0].OK != c.ok {
				t.Fatalf("stored %+v", as)
			}
		})
	}
	// A stale nonce: expired before use.
	stale := startHub(t, openSQLite(t), func(o *Options) { o.NonceTTL = time.Nanosecond })
	scl, _ := stale.enrol(t, "dev-stale")
	n, err := scl.Nonce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := scl.Attest(ctx, softQuote(t, ak, n.Nonce)); !isAPI(err, http.StatusForbidden, api.ReasonNonceInvalid) {
		t.Fatalf("stale nonce: %v", err)
	}
	if as, _ := stale.Store.Attestations(ctx, "dev-stale", 10); len(as) != 0 {
		t.Errorf("stale quote stored: %+v", as)
	}
	// Enrolment with a failing attestation enrols nothing and leaves the token usable.
	tok := th.token(t, "dev-bad", time.Hour)
	_, err = client.Enrol(ctx, th.URL, tok, newKey(t), api.KeySoftware, client.EnrolOptions{
		CAFingerprint: th.CAFingerprint(),
		Attest: func(_ context.Context, nonce []byte) (*api.AttestRequest, error) {
			q := softQuote(t, ak, nonce)
			q.Signature[5] ^= 1
			return q, nil
		},
	})
	if !isAPI(err, http.StatusForbidden, api.ReasonQuoteInvalid) {
		t.Fatalf("enrol with a bad quote: %v", err)
	}
	if _, err := th.Store.Device(ctx, "dev-bad"); err == nil {
		t.Error("device enrolled despite a failed attestation")
	}
	if _, err := th.Store.PeekEnrolToken(ctx, hashToken(tok), time.Now()); err != nil {
		t.Errorf("token consumed by a refused enrolment: %v", err)
	}
}
