package web_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/web"
)

// testHub is a real hub on a loopback port with the status page mounted.
type testHub struct {
	*hub.Hub
	URL      string
	Store    store.Store
	Operator string
	stop     func() // stops the hub (once)
}

// verdicts is the hub's attestation verifier in these tests: it returns the
// verdict set for the device, so the page shows a real stored verdict.
type verdicts struct {
	mu sync.Mutex
	m  map[string]api.AttestResult
}

func (v *verdicts) Verify(_ context.Context, id string, _ []byte, _ bool, _ *api.AttestRequest) (api.AttestResult, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.m[id]
	if !ok {
		r = api.AttestResult{OK: true}
	}
	r.APIVersion, r.Time = api.Version, time.Now()
	return r, nil
}

func openSQLite(t testing.TB) store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "hub.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func startHub(t *testing.T, st store.Store, wo web.Options, v hub.Verifier) *testHub {
	t.Helper()
	return startHubWith(t, st, wo, func(o *hub.Options) { o.Verifier = v })
}

// startHubWith is startHub with the hub's options edited (a fleet to follow, say).
func startHubWith(t *testing.T, st store.Store, wo web.Options, edit func(*hub.Options)) *testHub {
	t.Helper()
	wo.Store = st
	h, err := web.New(wo)
	if err != nil {
		t.Fatal(err)
	}
	o := hub.Options{Store: st, Web: h, PollWait: 5 * time.Second}
	edit(&o)
	hb, err := hub.New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- hb.Run(ctx, l) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("hub run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	op, err := hub.CreateOperatorToken(t.Context(), st, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &testHub{Hub: hb, URL: "https://" + l.Addr().String(), Store: st, Operator: op, stop: stop}
}

// enrol enrols device id through the real device API (mutual TLS from then on).
func (th *testHub) enrol(t *testing.T, id string) *client.Client {
	t.Helper()
	tr, err := hub.CreateEnrolToken(t.Context(), th.Store, id, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Enrol(t.Context(), th.URL, tr.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: th.CAFingerprint()})
	if err != nil {
		t.Fatalf("enrol %s: %v", id, err)
	}
	cl, err := client.New(client.Options{Hub: th.URL, Key: key, Cert: c})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseIdleConnections)
	return cl
}

func send(t *testing.T, cl *client.Client, s api.Status) {
	t.Helper()
	s.APIVersion, s.DeviceID = api.Version, cl.DeviceID()
	if s.Time.IsZero() {
		s.Time = time.Now()
	}
	if _, err := cl.Send(t.Context(), &s); err != nil {
		t.Fatalf("report %d of %s: %v", s.Seq, cl.DeviceID(), err)
	}
}

// attest runs one attestation through the device API; the verdict is the verifier's.
func attest(t *testing.T, cl *client.Client) {
	t.Helper()
	n, err := cl.Nonce(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	req := &api.AttestRequest{APIVersion: api.Version, Nonce: n.Nonce, AKPublic: []byte("ak"), Quote: []byte("quote"), Signature: []byte("sig")}
	if _, err := cl.Attest(t.Context(), req); err != nil {
		t.Fatal(err)
	}
}
