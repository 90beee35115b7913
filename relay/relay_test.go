package relay_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/relay"
)

// site is one hub, one relay and an origin server for artifacts, all real,
// on loopback; the hub can be stopped and started again on the same address.
type site struct {
	t        *testing.T
	st       store.Store
	hubAddr  string
	hubURL   string
	hubCA    []byte
	caFP     string
	stopHub  func()
	relay    *relay.Relay
	relayURL string
	relayDir string
	stop     func()
	repo     *testenv.Repo
	origin   *httptest.Server
	served   atomic.Int64 // origin GETs
	release  []byte
	relSHA   string
	opts     []func(*relay.Options)
}

func (s *site) startHub() {
	t := s.t
	h, err := hub.New(t.Context(), hub.Options{Store: s.st, PollWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.hubAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the old listener's port coming free
	}
	if err != nil {
		t.Fatal(err)
	}
	s.hubAddr = l.Addr().String()
	s.hubURL = "https://" + s.hubAddr
	s.hubCA, s.caFP = h.CAPEM(), h.CAFingerprint()
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan struct{})
	go func() { h.Run(ctx, l); close(done) }()
	var once sync.Once
	s.stopHub = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(s.stopHub)
}

func newSite(t *testing.T, opts ...func(*relay.Options)) *site {
	s := &site{t: t, opts: opts}
	var err error
	s.st, err = store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "hub.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.st.Close() })
	s.startHub()

	s.release = bytes.Repeat([]byte("shoal release image\n"), 300_000) // ~6 MiB
	sum := sha256.Sum256(s.release)
	s.relSHA = hex.EncodeToString(sum[:])
	s.origin = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/web.tar" {
			w.Write(webTar)
			return
		}
		s.served.Add(1)
		http.ServeContent(w, r, "os.img", time.Time{}, bytes.NewReader(s.release))
	}))
	t.Cleanup(s.origin.Close)

	s.repo = testenv.NewRepo(t)
	s.commit("v1")

	tr, err := hub.CreateRelayToken(t.Context(), s.st, "site-a", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s.relayDir = t.TempDir()
	if _, err := relay.Enrol(t.Context(), s.relayDir, relay.EnrolOptions{Hub: s.hubURL, Token: tr.Token, CAFingerprint: s.caFP}); err != nil {
		t.Fatal(err)
	}
	s.startRelay()
	return s
}

// commit commits a fleet naming the release at the origin, with label tag.
func (s *site) commit(tag string) string {
	return s.repo.Commit(map[string]string{
		"fleet.yaml":       "# " + tag + "\nspec: {}\n",
		"devices/d1.yaml":  "labels:\n  role: gw\n",
		"releases/os.yaml": fmt.Sprintf("version: 1.0.0\nurl: %s/os.img\nsize: %d\nsha256: %s\nsignature: c2ln\n", s.origin.URL, len(s.release), s.relSHA),
		"apps/web.yaml":    fmt.Sprintf("image:\n  ref: example/web:1\n  source:\n    url: %s/web.tar\n    sha256: %x\n", s.origin.URL, sha256.Sum256(webTar)),
		"groups/gw.yaml":   "selector:\n  match_labels:\n    role: gw\nspec:\n  apps:\n    web: {}\n",
	}, "fleet "+tag)
}

func (s *site) startRelay() {
	t := s.t
	o := relay.Options{StateDir: s.relayDir, Hub: s.hubURL, PollWait: 5 * time.Second, StatusInterval: time.Second,
		Logger: slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Mirror: relay.MirrorOptions{URL: s.repo.URL(), Interval: time.Hour}}
	for _, f := range s.opts {
		f(&o)
	}
	r, err := relay.New(o)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.relay, s.relayURL = r, "https://"+l.Addr().String()
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, l) }()
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay run: %v", err)
			}
		})
	}
	t.Cleanup(s.stop)
}

// webTar stands for an app's image tar, fetched by URL.
var webTar = bytes.Repeat([]byte("image tar\n"), 1000)

// device is an enrolled device talking to the relay.
type device struct {
	id   string
	key  *ecdsa.PrivateKey
	cert *api.Certificate
	cl   *client.Client
	hc   *http.Client // raw mutual TLS to the relay
	dir  string       // cert and key as PEM files, for git
}

// enrol enrols a device through the relay (the hub must be up).
func (s *site) enrol(id string) (*device, error) {
	t := s.t
	tok, err := hub.CreateEnrolToken(t.Context(), s.st, id, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := client.Enrol(t.Context(), s.relayURL, tok.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: s.caFP})
	if err != nil {
		return nil, err
	}
	d := &device{id: id, key: key, cert: c, dir: t.TempDir()}
	d.cl, err = client.New(client.Options{Hub: s.relayURL, Key: key, Cert: c, PollWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	kpem := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	for name, b := range map[string][]byte{"cert.pem": []byte(c.Certificate), "key.pem": kpem, "ca.pem": []byte(c.CA)} {
		if err := os.WriteFile(filepath.Join(d.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tc, err := tls.X509KeyPair([]byte(c.Certificate), kpem)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(c.CA))
	d.hc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{tc}}}, Timeout: time.Minute}
	t.Cleanup(d.hc.CloseIdleConnections)
	t.Cleanup(d.cl.CloseIdleConnections)
	return d, nil
}

func report(id string, seq uint64) *api.Status {
	return &api.Status{APIVersion: api.Version, DeviceID: id, Seq: seq, Time: time.Now().UTC(), State: api.StateConverged, Groups: []string{"edge"}}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hubSeqs returns the seqs the hub holds for a device, ascending.
func (s *site) hubSeqs(id string) []uint64 {
	rs, err := s.st.Reports(s.t.Context(), id, 1000)
	if err != nil {
		s.t.Fatal(err)
	}
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[len(rs)-1-i] = r.Seq
	}
	return out
}

func seqsUpTo(n uint64) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}

func equalSeqs(a, b []uint64) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func (d *device) get(t *testing.T, u string, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", u, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestRelaySite runs one site end to end against a real hub and git: a
// device enrols, reports, is poked, clones the fleet repo and fetches a
// release through the relay; the release is fetched from its origin once,
// served with Range, and a tampered cache file is never served; with the
// hub down reports are held and enrolment waits, and when it returns every
// report reaches it in order, none twice.
func TestRelaySite(t *testing.T) {
	s := newSite(t)
	ctx := t.Context()
	d, err := s.enrol("d1")
	if err != nil {
		t.Fatalf("enrol through the relay: %v", err)
	}
	// Reports: acked by the relay, forwarded with the device's seq.
	for seq := uint64(1); seq <= 3; seq++ {
		if _, err := d.cl.Send(ctx, report("d1", seq)); err != nil {
			t.Fatalf("report %d: %v", seq, err)
		}
	}
	waitFor(t, 20*time.Second, "reports at the hub", func() bool { return equalSeqs(s.hubSeqs("d1"), seqsUpTo(3)) })
	if dv, _ := s.st.Device(ctx, "d1"); dv.Relay != "site-a" {
		t.Fatalf("hub says d1 reports through %q", dv.Relay)
	}
	// Another device's certificate cannot report as d1.
	d2, err := s.enrol("d2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d2.cl.Send(ctx, report("d1", 9)); !isAPI(err, 403, api.ReasonForbidden) {
		t.Fatalf("d2 reporting as d1: %v", err)
	}

	// A device cannot slip another's certificate into what the relay forwards.
	code, body := d2.get(t, s.relayURL+"/v1/devices/d1/reports", map[string]string{api.HeaderDeviceCert: base64.StdEncoding.EncodeToString([]byte(d.cert.Certificate))})
	if code != 403 || !strings.Contains(string(body), `may not read device \"d1\"`) {
		t.Fatalf("d2 forwarding d1's certificate header: %d %s", code, body)
	}

	// Pokes: an operator's poke reaches the device through the relay.
	got := make(chan *api.Poke, 1)
	go func() {
		// Polls end empty after the relay's wait; the poke comes in one of them.
		for ctx.Err() == nil {
			p, err := d.cl.WaitPoke(ctx, 0)
			if err != nil {
				t.Error(err)
			}
			if p != nil || err != nil {
				got <- p
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond) // the device's poll is in place (a missed poke only makes this test wait)
	if _, err := s.st.AddPoke(ctx, store.Poke{Reason: "operator", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p == nil || p.Reason != "operator" {
		t.Fatalf("poke through the relay: %+v", p)
	}

	// The fleet repo: a shallow clone through the relay, with the device's certificate.
	clone := filepath.Join(t.TempDir(), "clone")
	git := exec.Command("git", "-c", "http.sslCert="+filepath.Join(d.dir, "cert.pem"), "-c", "http.sslKey="+filepath.Join(d.dir, "key.pem"),
		"clone", "-q", "--depth", "1", s.relayURL+"/git/fleet.git", clone)
	git.Env = append(os.Environ(), "GIT_SSL_CAINFO="+filepath.Join(d.dir, "ca.pem"))
	if out, err := git.CombinedOutput(); err != nil {
		t.Fatalf("git clone through the relay: %v\n%s", err, out)
	}
	if head := strings.TrimSpace(testenv.Git(t, clone, "rev-parse", "HEAD")); head != s.repo.Git("rev-parse", "HEAD") {
		t.Fatalf("clone has %s", head)
	}
	// Without a device certificate, nothing.
	anon := exec.Command("git", "ls-remote", s.relayURL+"/git/fleet.git")
	anon.Env = git.Env
	if out, err := anon.CombinedOutput(); err == nil {
		t.Fatalf("ls-remote without a certificate succeeded: %s", out)
	}

	// Artifacts: 4 devices at once, one origin fetch, the right bytes.
	art := s.relayURL + "/v1/artifacts?url=" + url.QueryEscape(s.origin.URL+"/os.img")
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, b := d.get(t, art, nil)
			if code != 200 || !bytes.Equal(b, s.release) {
				t.Errorf("artifact: %d, %d bytes", code, len(b))
			}
		}()
	}
	wg.Wait()
	if n := s.served.Load(); n != 1 {
		t.Fatalf("origin served %d times, want 1", n)
	}
	code, b := d.get(t, s.relayURL+"/v1/artifacts/sha256/"+s.relSHA, map[string]string{"Range": "bytes=100-199"})
	if code != 206 || !bytes.Equal(b, s.release[100:200]) {
		t.Fatalf("range by digest: %d %q", code, b)
	}
	// An app's image tar, by the URL d1's rendered spec names.
	code, b = d.get(t, s.relayURL+"/v1/artifacts?url="+url.QueryEscape(s.origin.URL+"/web.tar"), nil)
	if code != 200 || !bytes.Equal(b, webTar) {
		t.Fatalf("image tar through the relay: %d %q", code, b[:min(len(b), 80)])
	}
	code, b = d.get(t, s.relayURL+"/v1/artifacts?url="+url.QueryEscape("https://elsewhere.example/x.img"), nil)
	if code != 404 || !strings.Contains(string(b), api.ReasonArtifactUnknown) {
		t.Fatalf("unknown artifact: %d %s", code, b)
	}

	// A byte flipped on disk: detected, dropped, fetched again, never served.
	cached := filepath.Join(s.relayDir, "cache", "sha256", s.relSHA)
	flip(t, cached, 12345)
	code, b = d.get(t, art, nil)
	if code != 200 || !bytes.Equal(b, s.release) || s.served.Load() != 2 {
		t.Fatalf("after tampering: %d, good=%v, origin fetches %d", code, bytes.Equal(b, s.release), s.served.Load())
	}
	flip(t, cached, 999)
	s.origin.Config.Handler = http.NotFoundHandler() // the origin cannot help now
	code, b = d.get(t, art, map[string]string{"Range": "bytes=0-99"})
	if code == 200 || code == 206 || bytes.Contains(b, s.release[:50]) {
		t.Fatalf("tampered artifact served: %d %q", code, b[:min(len(b), 80)])
	}

	// The hub goes away: reports are held (and acked), enrolment waits.
	s.stopHub()
	for seq := uint64(4); seq <= 10; seq++ {
		if _, err := d.cl.Send(ctx, report("d1", seq)); err != nil {
			t.Fatalf("report %d with the hub down: %v", seq, err)
		}
	}
	// A resend of one already held is harmless.
	if _, err := d.cl.Send(ctx, report("d1", 7)); err != nil {
		t.Fatal(err)
	}
	if st := s.relay.Status(); st.Backlog.Reports != 7 {
		t.Fatalf("backlog with the hub down: %+v", st.Backlog)
	}
	_, err = s.enrol("d3")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 503 || ae.Reason != api.ReasonUpstreamUnavailable || !client.Retryable(err) {
		t.Fatalf("enrolment with the hub down: %v", err)
	}
	if _, err := d.cl.Nonce(ctx); !client.Retryable(err) {
		t.Fatalf("nonce with the hub down: %v", err)
	}
	s.startHub()
	waitFor(t, 60*time.Second, "held reports at the hub", func() bool { return equalSeqs(s.hubSeqs("d1"), seqsUpTo(10)) })
	waitFor(t, 10*time.Second, "an empty backlog", func() bool { return s.relay.Status().Backlog.Reports == 0 })
	if _, err := d.cl.Nonce(ctx); err != nil {
		t.Fatalf("nonce from the hub through the relay: %v", err)
	}
	// Its metrics are lint-clean.
	if code, body := d.get(t, s.relayURL+"/metrics", nil); code != 200 {
		t.Fatalf("/metrics: %d", code)
	} else {
		for _, name := range []string{"shoal_relay_backlog_reports", "shoal_relay_cache_bytes", "shoal_relay_reports_forwarded_total", "shoal_relay_upstream_up"} {
			if !strings.Contains(string(body), "# TYPE "+name+" ") {
				t.Errorf("/metrics lacks %s", name)
			}
		}
		testenv.CheckMetrics(t, "the relay's /metrics", body)
	}
	// The relay's health reaches the hub.
	waitFor(t, 20*time.Second, "relay status at the hub", func() bool {
		rl, err := s.st.Relay(ctx, "site-a")
		return err == nil && len(rl.Status) > 0
	})
}

// tlog writes logs to the test's log.
type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func isAPI(err error, code int, reason string) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status == code && ae.Reason == reason
}

// flip flips one byte of a file in place, as a disk or a hand might.
func flip(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
