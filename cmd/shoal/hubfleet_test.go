package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestHubFleetFlag runs `shoal hub --fleet` on a Git URL (file://, fetched
// through the source package) and on a directory: a device the fleet lists enrols with an
// attestation, one it does not list is refused, naming it. A --fleet that is
// neither a directory nor a URL is a usage error.
func TestHubFleetFlag(t *testing.T) {
	if code, _, errs := (inProcess{}).run(t, nil, "hub", "--fleet", "no-such-dir", "--db", "sqlite://"+filepath.Join(t.TempDir(), "x.db")); code != exitUsage || !strings.Contains(errs, "no-such-dir") {
		t.Fatalf("--fleet no-such-dir: exit %d, %s", code, errs)
	}
	repo := fleetRepo(t)
	for _, c := range []struct{ name, fleet string }{
		{"git URL", "file://" + repo},
		{"directory", repo},
	} {
		t.Run(c.name, func(t *testing.T) { hubWithFleet(t, c.fleet) })
	}
}

// fleetRepo is a Git fleet repo whose fleet requires quotes over PCRs 0
// and 7 and lists one device, dev-f.
func fleetRepo(t *testing.T) string {
	t.Helper()
	repo := t.TempDir()
	testenv.Git(t, repo, "init", "-q", "-b", "main")
	for name, body := range map[string]string{
		"fleet.yaml":         "spec:\n  attestation:\n    pcrs: [0, 7]\n",
		"devices/dev-f.yaml": "labels:\n  role: gateway\n",
	} {
		p := filepath.Join(repo, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	testenv.GitCommitAll(t, repo, "fleet")
	return repo
}

// servedHub is `shoal hub` serving in-process on loopback with SQLite.
type servedHub struct {
	db    string
	addr  string
	st    store.Store
	pool  *x509.CertPool // trusts the hub CA
	stop  func() int     // stops the hub (again: a no-op) and returns its exit code
	token func(id string) string
}

// serveHub starts `shoal hub` with args and waits until it is healthy.
func serveHub(t *testing.T, args ...string) *servedHub {
	t.Helper()
	ctx := t.Context()
	db := "sqlite://" + filepath.Join(t.TempDir(), "hub.db")
	addr := freeAddr(t)
	stopHub := (inProcess{}).serve(t, append([]string{"hub", "--listen", addr, "--db", db, "--host", "127.0.0.1"}, args...)...)
	var once sync.Once
	code := -1
	stop := func() int { once.Do(func() { code = stopHub() }); return code }
	t.Cleanup(func() { stop() })
	st, err := store.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pool := x509.NewCertPool()
	eventually(t, "the hub CA in the database", func() bool {
		ca, err := st.CA(ctx)
		return err == nil && pool.AppendCertsFromPEM(ca.CertPEM)
	})
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	defer hc.CloseIdleConnections()
	eventually(t, "the hub healthy", func() bool {
		resp, err := hc.Get("https://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	token := func(id string) string {
		tr, err := hub.CreateEnrolToken(ctx, st, id, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tr.Token
	}
	return &servedHub{db: db, addr: addr, st: st, pool: pool, stop: stop, token: token}
}

// hubWithFleet serves `shoal hub --fleet fleet` and the extra args (a fleet
// listing dev-f only) and enrols dev-f and dev-x with software attestations.
func hubWithFleet(t *testing.T, fleet string, args ...string) {
	ctx := t.Context()
	h := serveHub(t, append([]string{"--fleet", fleet}, args...)...)
	at, err := attest.New(ctx, attest.Options{StateDir: t.TempDir(), DevicePath: "/nonexistent/tpm", AllowSoftware: true})
	if err != nil {
		t.Fatal(err)
	}
	defer at.Close()
	const spec = "sha256:f00d"
	if err := at.ExtendApp(ctx, spec, ""); err != nil {
		t.Fatal(err)
	}
	enrol := func(id string) error {
		_, err = client.Enrol(ctx, "https://"+h.addr, h.token(id), at.Signer(), api.KeySoftware, client.EnrolOptions{
			RootCAs: h.pool,
			Attest: func(ctx context.Context, nonce []byte) (*api.AttestRequest, error) {
				q, err := at.Quote(ctx, nonce, []int{0, 7})
				if err != nil {
					return nil, err
				}
				return &api.AttestRequest{APIVersion: api.Version, Nonce: nonce, AKPublic: q.AK, Quote: q.Attest,
					Signature: q.Signature, PCRs: q.PCRs, SpecHash: spec}, nil
			},
		})
		return err
	}
	if err := enrol("dev-f"); err != nil {
		t.Fatalf("device in the fleet: %v", err)
	}
	err = enrol("dev-x")
	if err == nil || !strings.Contains(err.Error(), "dev-x") || !strings.Contains(err.Error(), "policy-invalid") {
		t.Fatalf("device not in the fleet: %v, want a refusal naming it", err)
	}
	if code := h.stop(); code != 0 {
		t.Fatalf("hub exit %d", code)
	}
}

// eventually waits up to 60s for cond, checking every 50ms.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(60 * time.Second)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("no %s within 60s", what)
		case <-tick.C:
		}
	}
}
