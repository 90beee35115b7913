package hub

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/pgtest"
)

// testHub is a hub serving real TLS on a loopback port.
type testHub struct {
	*Hub
	URL      string
	Store    store.Store
	Operator string // operator token
	stop     func() error
}

type hubOpt func(*Options)

func openSQLite(t *testing.T) store.Store {
	t.Helper()
	s, err := store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "hub.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPostgres(t *testing.T, dsn string) store.Store {
	t.Helper()
	s, err := store.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func startHub(t *testing.T, st store.Store, opts ...hubOpt) *testHub {
	t.Helper()
	o := Options{Store: st, Verifier: softVerifier{}, PollWait: 20 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	h, err := New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx, l) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("hub run: %v", err)
		}
	})
	op, err := CreateOperatorToken(t.Context(), st, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &testHub{Hub: h, URL: "https://" + l.Addr().String(), Store: st, Operator: op, stop: stop}
}

func (th *testHub) token(t *testing.T, id string, ttl time.Duration) string {
	t.Helper()
	tr, err := CreateEnrolToken(t.Context(), th.Store, id, ttl, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tr.Token
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// enrol enrols device id through the real client, pinning the CA by fingerprint.
func (th *testHub) enrol(t *testing.T, id string) (*client.Client, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	c, err := client.Enrol(t.Context(), th.URL, th.token(t, id, time.Hour), key, api.KeySoftware, client.EnrolOptions{CAFingerprint: th.CAFingerprint()})
	if err != nil {
		t.Fatalf("enrol %s: %v", id, err)
	}
	cl, err := client.New(client.Options{Hub: th.URL, Key: key, Cert: c})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseIdleConnections)
	return cl, key
}

// raw makes an HTTP client presenting cert (nil: none) and trusting the hub CA.
func (th *testHub) raw(t *testing.T, cert *tls.Certificate) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(th.CAPEM())
	tc := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "127.0.0.1"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// deviceCert turns a client's key and certificate into a tls.Certificate.
func deviceCert(t *testing.T, cl *client.Client, key crypto.Signer) *tls.Certificate {
	t.Helper()
	tc, err := tls.X509KeyPair([]byte(cl.Certificate().Certificate), mustPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	return &tc
}

func mustPKCS8(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("PRIVATE KEY", der)
}

// call sends a request and decodes an api.Error for 4xx/5xx.
func call(t *testing.T, hc *http.Client, method, url, bearer string, body []byte) (int, *api.Error, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var ae api.Error
		if err := json.Unmarshal(b, &ae); err != nil || ae.Reason == "" || ae.Status != resp.StatusCode {
			t.Fatalf("%s %s: %d without a JSON error body: %q", method, url, resp.StatusCode, b)
		}
		return resp.StatusCode, &ae, b
	}
	return resp.StatusCode, nil, b
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func status(id string, seq uint64, state api.State) *api.Status {
	return &api.Status{APIVersion: api.Version, DeviceID: id, Seq: seq, Time: time.Now().UTC(), State: state, Groups: []string{"edge"},
		Commit: api.CommitStatus{Applied: "abc123", Attempted: "abc123"}}
}

// softVerifier stands in for attest.Verifier in this package's tests: a quote
// is nonce || PCR digest, signed (ASN.1 ECDSA over its sha256) by a software
// AK given as PKIX DER.
type softVerifier struct{}

func (softVerifier) Verify(_ context.Context, _ string, _ []byte, _ bool, req *api.AttestRequest) (api.AttestResult, error) {
	var reasons []string
	pub, err := x509.ParsePKIXPublicKey(req.AKPublic)
	k, ok := pub.(*ecdsa.PublicKey)
	if err != nil || !ok {
		reasons = append(reasons, "ak: not an ECDSA public key")
	} else {
		sum := sha256.Sum256(req.Quote)
		if !ecdsa.VerifyASN1(k, sum[:], req.Signature) {
			reasons = append(reasons, "signature: does not verify")
		}
	}
	if !bytes.HasPrefix(req.Quote, req.Nonce) {
		reasons = append(reasons, "nonce: not the quoted one")
	}
	return api.AttestResult{OK: len(reasons) == 0, Reasons: reasons}, nil
}

func softQuote(t *testing.T, ak *ecdsa.PrivateKey, nonce []byte) *api.AttestRequest {
	t.Helper()
	pcr := bytes.Repeat([]byte{7}, 32)
	quote := append(append([]byte{}, nonce...), pcr...)
	sum := sha256.Sum256(quote)
	sig, err := ecdsa.SignASN1(rand.Reader, ak, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	akDER, _ := x509.MarshalPKIXPublicKey(&ak.PublicKey)
	return &api.AttestRequest{APIVersion: api.Version, Nonce: nonce, AKPublic: akDER, Quote: quote, Signature: sig, PCRs: map[int][]byte{7: pcr}}
}

// backends runs f against SQLite and a real PostgreSQL.
func backends(t *testing.T, f func(t *testing.T, open func(t *testing.T) store.Store)) {
	t.Run("sqlite", func(t *testing.T) { f(t, openSQLite) })
	t.Run("postgres", func(t *testing.T) {
		pg := pgtest.New(t)
		f(t, func(t *testing.T) store.Store { return openPostgres(t, pg.NewDB(t)) })
	})
}

func TestEnrolReportRenew(t *testing.T) {
	backends(t, func(t *testing.T, open func(t *testing.T) store.Store) {
		th := startHub(t, open(t))
		ctx := t.Context()
		cl, _ := th.enrol(t, "dev-1")
		if cl.DeviceID() != "dev-1" {
			t.Fatalf("device ID %q", cl.DeviceID())
		}
		steps := []struct {
			name   string
			seq    uint64
			state  api.State
			dup    bool
			latest uint64
		}{
			{"first", 1, api.StateUpdating, false, 1},
			{"second", 2, api.StateConverged, false, 2},
			{"resent", 2, api.StateConverged, true, 2},
			{"ahead", 4, api.StateDegraded, false, 4},
			{"late", 3, api.StateWaiting, false, 4},
		}
		for _, s := range steps {
			ack, err := cl.Send(ctx, status("dev-1", s.seq, s.state))
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			if ack.Duplicate != s.dup || ack.Latest != s.latest || ack.Seq != s.seq {
				t.Errorf("%s: ack %+v", s.name, ack)
			}
		}
		d, err := th.Store.Device(ctx, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		if d.LatestSeq != 4 || d.State != string(api.StateDegraded) || d.KeyKind != api.KeySoftware {
			t.Errorf("stored device %+v", d)
		}
		rs, err := cl.Reports(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 4 || rs[0].Seq != 4 || rs[3].Seq != 1 || rs[0].DeviceID != "dev-1" {
			t.Errorf("history: %d reports %+v", len(rs), rs)
		}
		// Renewal: a new certificate, recorded, and used from then on.
		old := cl.Certificate()
		nc, err := cl.Renew(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if nc.Certificate == old.Certificate || !nc.NotAfter.After(time.Now()) || !nc.RenewAfter.Before(nc.NotAfter) {
			t.Fatalf("renewed certificate %+v", nc)
		}
		d2, _ := th.Store.Device(ctx, "dev-1")
		if d2.CertSerial == d.CertSerial {
			t.Error("renewal not recorded")
		}
		if _, err := cl.Send(ctx, status("dev-1", 5, api.StateConverged)); err != nil {
			t.Fatalf("report with renewed certificate: %v", err)
		}
	})
}

func TestRenewalDue(t *testing.T) {
	now := time.Now()
	th := startHub(t, openSQLite(t), func(o *Options) { o.CertTTL = 3 * time.Hour })
	key := newKey(t)
	c, err := client.Enrol(t.Context(), th.URL, th.token(t, "dev-r", time.Hour), key, api.KeySoftware, client.EnrolOptions{CAFingerprint: th.CAFingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.RenewAfter.Sub(now); got < 100*time.Minute || got > 125*time.Minute {
		t.Errorf("renew after %v for a 3h certificate, want about 2h", got)
	}
	for _, tc := range []struct {
		name string
		at   time.Time
		want bool
	}{{"fresh", now, false}, {"two thirds", now.Add(2*time.Hour + time.Minute), true}} {
		cl, err := client.New(client.Options{Hub: th.URL, Key: key, Cert: c, Now: func() time.Time { return tc.at }})
		if err != nil {
			t.Fatal(err)
		}
		if cl.NeedsRenewal() != tc.want {
			t.Errorf("%s: NeedsRenewal = %v", tc.name, !tc.want)
		}
	}
}

func TestEnrolTrust(t *testing.T) {
	th := startHub(t, openSQLite(t))
	other, _, _ := NewCA("other", time.Now())
	otherPool := x509.NewCertPool()
	otherPool.AppendCertsFromPEM(other)
	good := x509.NewCertPool()
	good.AppendCertsFromPEM(th.CAPEM())
	cases := []struct {
		name string
		o    client.EnrolOptions
		ok   bool
	}{
		{"pinned fingerprint", client.EnrolOptions{CAFingerprint: th.CAFingerprint()}, true},
		{"root pool", client.EnrolOptions{RootCAs: good}, true},
		{"wrong fingerprint", client.EnrolOptions{CAFingerprint: strings.Repeat("ab", 32)}, false},
		{"untrusted root", client.EnrolOptions{RootCAs: otherPool}, false},
		{"no trust given", client.EnrolOptions{}, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := fmt.Sprintf("dev-trust-%d", i)
			_, err := client.Enrol(t.Context(), th.URL, th.token(t, id, time.Hour), newKey(t), api.KeySoftware, c.o)
			if (err == nil) != c.ok {
				t.Fatalf("enrol: %v, want ok=%v", err, c.ok)
			}
			_, derr := th.Store.Device(t.Context(), id)
			if c.ok != (derr == nil) {
				t.Errorf("device stored = %v, want %v", derr == nil, c.ok)
			}
		})
	}
}

// TestRenewDuringLongPoll: a device renews while its long poll holds the
// HTTP/2 connection open. Its next requests present the new certificate
// (new connections), so they still work once the old certificate has
// expired, and the poll in flight still gets its poke.
func TestRenewDuringLongPoll(t *testing.T) {
	ctx := t.Context()
	const ttl = 6 * time.Second
	th := startHub(t, openSQLite(t), func(o *Options) { o.CertTTL = ttl })
	key := newKey(t)
	c, err := client.Enrol(ctx, th.URL, th.token(t, "dev-lp", time.Hour), key, api.KeySoftware, client.EnrolOptions{CAFingerprint: th.CAFingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	// Two thirds from issue (certificate times are whole seconds).
	if due := time.Until(c.RenewAfter); due < ttl/2 || due > ttl {
		t.Errorf("renewal due in %v for a %v certificate, want about two thirds of it", due, ttl)
	}
	cl, err := client.New(client.Options{Hub: th.URL, Key: key, Cert: c, PollWait: 3 * ttl})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Send(ctx, status("dev-lp", 1, api.StateConverged)); err != nil {
		t.Fatal(err)
	}
	polled := make(chan error, 1)
	go func() { _, err := cl.WaitPoke(ctx, -1); polled <- err }()
	time.Sleep(ttl / 2) // the poll holds the connection
	nc, err := cl.Renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !nc.NotAfter.After(c.NotAfter.Add(time.Second)) {
		t.Fatalf("renewed certificate ends %v, the first %v", nc.NotAfter, c.NotAfter)
	}
	time.Sleep(time.Until(c.NotAfter) + 500*time.Millisecond)
	if _, err := cl.Send(ctx, status("dev-lp", 2, api.StateConverged)); err != nil {
		t.Fatalf("report after the first certificate expired: %v", err)
	}
	if _, err := th.Poke(ctx, store.Poke{Devices: []string{"dev-lp"}, Reason: "operator", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := <-polled; err != nil {
		t.Fatalf("the poll in flight during the renewal: %v", err)
	}
}

// TestClientClock: the device client checks the hub's certificate by the
// clock it is given (the agent gives its bounded clock), not the system's:
// given 1970 or a time after the hub certificate it is refused with the
// certificate's validity named. Enrolment likewise.
func TestClientClock(t *testing.T) {
	ctx := t.Context()
	th := startHub(t, openSQLite(t))
	key := newKey(t)
	epoch := func() time.Time { return time.Unix(0, 0) }
	if _, err := client.Enrol(ctx, th.URL, th.token(t, "dev-early", time.Hour), key, api.KeySoftware,
		client.EnrolOptions{CAFingerprint: th.CAFingerprint(), Now: epoch}); err == nil || !strings.Contains(err.Error(), "not yet valid") {
		t.Fatalf("enrol with the clock at 1970: %v, want the hub's certificate not yet valid", err)
	}
	c, err := client.Enrol(ctx, th.URL, th.token(t, "dev-clock", time.Hour), key, api.KeySoftware,
		client.EnrolOptions{CAFingerprint: th.CAFingerprint(), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		now  func() time.Time
		want string // "" succeeds
	}{
		{"right", time.Now, ""},
		{"1970", epoch, "not yet valid"},
		{"after the hub certificate", func() time.Time { return time.Now().AddDate(30, 0, 0) }, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, err := client.New(client.Options{Hub: th.URL, Key: key, Cert: c, Now: tc.now})
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.Send(ctx, status("dev-clock", uint64(time.Now().UnixNano()), api.StateConverged))
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("report: %v, want %q", err, tc.want)
			}
		})
	}
}
