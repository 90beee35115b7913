// Package hub is Shoal's cloud service. It enrols devices with one-time
// tokens and a CSR signed by the device key, issues short-lived client
// certificates from its own CA, and then serves the device API over mutual
// TLS 1.3: status ingest (idempotent by device and sequence number),
// attestation nonces and quote verification, long-poll pokes, and each
// device's own report history. An operator API (bearer operator token) makes
// enrolment tokens, revokes tokens and devices, and pokes devices; a Git
// webhook pokes too. State lives in hub/store: SQLite by default, or
// PostgreSQL for several hubs, which then share pokes through LISTEN/NOTIFY.
//
// Only cmd/shoal imports it. It must never be linked into the device binary.
package hub

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/sdnotify"
)

// Verifier checks an attestation quote for a device. The hub has already
// consumed the nonce (issued to that device, fresh, unused) and checked that
// the AK is the one registered for the device (ak is nil on a device's first
// attestation). It returns the verdict; an error means verification could
// not run at all. attest.Verifier is wired in through a small adapter.
type Verifier interface {
	Verify(ctx context.Context, deviceID string, ak []byte, software bool, req *api.AttestRequest) (api.AttestResult, error)
}

// Options configure a Hub. Store is required; the zero value of the rest works.
type Options struct {
	Store store.Store
	// CACert and CAKey (PEM) give the hub CA. When empty, the CA stored in
	// the database is used, or a new one is created and stored there.
	CACert, CAKey []byte
	// TLSCert overrides the server certificate the hub issues itself for Hosts.
	TLSCert *tls.Certificate
	// Hosts are the server certificate's names (default: localhost, 127.0.0.1, ::1 and the host name).
	Hosts []string
	// CertTTL is the device certificates' lifetime (default 7 days); devices renew after two thirds.
	CertTTL time.Duration
	// NonceTTL is how long an attestation nonce stays fresh (default 5 minutes).
	NonceTTL time.Duration
	// Retention keeps reports this long (default 30 days); each device's latest is always kept.
	Retention time.Duration
	// PollWait caps a long poll (default 60s); a device may ask for less with ?wait=.
	PollWait time.Duration
	// Verifier checks quotes; nil refuses attestation with 501.
	Verifier Verifier
	// EKRoots, when set, admits a TPM enrolment only if its EK certificate
	// chains to one of these TPM makers' CAs and certifies the EK sent, and
	// only through the credential challenge (a "tpm" key sent straight to
	// /v1/enrol is refused too: 403 ek-untrusted). Nil checks only that the
	// EK's forms agree.
	EKRoots *attest.EKRoots
	// KnownDevice, when set, is asked before an enrolment token is made for
	// a device: an error (its text for the operator) refuses the token with
	// 422 device-not-in-fleet. FleetPolicy.KnownDevice checks the --fleet repo.
	KnownDevice func(id string) error
	// Fleet is the fleet repo the hub follows (--fleet). With it the hub
	// runs the rollout controller and answers grant requests from the
	// rollout state; without it every grant request is granted.
	Fleet *FleetPolicy
	// RolloutTick is how often the rollout controller steps (default 500ms).
	RolloutTick time.Duration
	// RolloutLease is how long the hub deciding rollouts holds its lease
	// without renewing it (default 15s): how long the others wait after
	// it dies.
	RolloutLease time.Duration
	// Web is mounted at / for the status page (hub/web); nil serves JSON 404s.
	Web http.Handler
	// Registerer receives the hub's metrics besides its own /metrics registry.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time
	// Notify sends systemd notification states (READY=1 once serving,
	// WATCHDOG=1 while the database answers); nil: sdnotify.Notify, which does
	// nothing outside a Type=notify unit.
	Notify func(state string) error
	// Watchdog is the interval systemd expects WATCHDOG=1 within; zero:
	// the unit's WatchdogSec= (sdnotify.WatchdogInterval), none outside systemd.
	Watchdog time.Duration
}

// Hub is the hub service. New builds it, Serve/Run work, Close releases it.
type Hub struct {
	o     Options
	log   *slog.Logger
	st    store.Store
	ca    *authority
	srvTC tls.Certificate
	reg   *prometheus.Registry
	m     *metrics
	pokes *broadcaster
	devs  *devCache // nil for a shared store that does not announce device changes
	ro    *rollouts // nil without Options.Fleet
	watch deviceWatcher
	// relays caches relay rows for relayAuth, fwd verified forwarded certificates.
	relays relayCache
	fwd    fwdCache

	stopping chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// New loads or creates the CA and prepares the hub.
func New(ctx context.Context, o Options) (*Hub, error) {
	if o.Store == nil {
		return nil, errors.New("hub: Options.Store is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Notify == nil {
		o.Notify = sdnotify.Notify
	}
	if o.Watchdog <= 0 {
		o.Watchdog = sdnotify.WatchdogInterval()
	}
	if o.CertTTL <= 0 {
		o.CertTTL = 7 * 24 * time.Hour
	}
	if o.NonceTTL <= 0 {
		o.NonceTTL = 5 * time.Minute
	}
	if o.Retention <= 0 {
		o.Retention = 30 * 24 * time.Hour
	}
	if o.PollWait <= 0 {
		o.PollWait = 60 * time.Second
	}
	if len(o.Hosts) == 0 {
		o.Hosts = []string{"localhost", "127.0.0.1", "::1"}
		if hn, err := os.Hostname(); err == nil {
			o.Hosts = append(o.Hosts, hn)
		}
	}
	h := &Hub{o: o, log: o.Logger, st: o.Store, pokes: newBroadcaster(), stopping: make(chan struct{})}
	if w, ok := o.Store.(deviceWatcher); ok {
		// Live once Run has the change feed connected. The TTL is only a
		// backstop for a change made behind the hubs' back (by hand in SQL).
		h.devs, h.watch = newDevCache(time.Minute, o.Now, false), w
	} else if o.Store.Backend() == "sqlite" {
		h.devs = newDevCache(10*time.Second, o.Now, true)
	}
	var ca store.CA
	if len(o.CACert) > 0 || len(o.CAKey) > 0 {
		ca = store.CA{CertPEM: o.CACert, KeyPEM: o.CAKey}
	} else {
		var err error
		ca, err = o.Store.CA(ctx)
		if errors.Is(err, store.ErrNotFound) {
			cp, kp, gerr := NewCA("Shoal hub CA", o.Now())
			if gerr != nil {
				return nil, gerr
			}
			ca, err = o.Store.InitCA(ctx, store.CA{CertPEM: cp, KeyPEM: kp})
			if err == nil {
				h.log.Info("hub CA ready", "stored", "database")
			}
		}
		if err != nil {
			return nil, fmt.Errorf("hub: %w", err)
		}
	}
	auth, err := parseAuthority(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	h.ca = auth
	if o.TLSCert != nil {
		h.srvTC = *o.TLSCert
	} else if h.srvTC, err = auth.serverCert(o.Hosts, o.Now()); err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	if o.Fleet != nil {
		h.ro = newRollouts(h, o.Fleet, o.RolloutTick, o.RolloutLease)
	}
	h.reg = prometheus.NewRegistry()
	h.m = newMetrics(h)
	cs := h.m.collectors()
	if vc, ok := o.Verifier.(interface{ Collectors() []prometheus.Collector }); ok {
		cs = append(cs, vc.Collectors()...)
	}
	for _, c := range cs {
		h.reg.MustRegister(c)
		if o.Registerer != nil {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("hub: register metrics: %w", err)
			}
		}
	}
	return h, nil
}

// CAPEM returns the hub CA certificate, PEM encoded.
func (h *Hub) CAPEM() []byte { return h.ca.certPEM }

// CAFingerprint returns the hex sha256 of the CA certificate's DER.
func (h *Hub) CAFingerprint() string { return h.ca.fingerprint }

// Collectors returns the hub's metrics.
func (h *Hub) Collectors() []prometheus.Collector { return h.m.collectors() }

// TLSConfig is the hub's server TLS configuration: TLS 1.3 only, client
// certificates requested (enrolment has none yet) and checked per request.
func (h *Hub) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{h.srvTC},
		// Verified by the handler so a wrong certificate gets a JSON 401
		// rather than a bare handshake failure.
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"h2", "http/1.1"},
	}
}

// Server returns an http.Server for the hub's handler, with TLSConfig and
// timeouts suited to long polls. Serve it with ServeTLS(l, "", "").
func (h *Hub) Server() *http.Server {
	srv := &http.Server{
		Handler:           h.Handler(),
		TLSConfig:         h.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      h.o.PollWait + 30*time.Second,
		IdleTimeout:       5 * time.Minute,
		ConnContext:       withConnAuth,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	srv.RegisterOnShutdown(h.stop)
	return srv
}

func (h *Hub) stop() { h.stopOnce.Do(func() { close(h.stopping) }) }

// Run serves on l until ctx ends, then shuts down gracefully: it stops
// accepting, ends long polls, and waits up to 20 seconds for requests in
// flight. It also runs retention and, on PostgreSQL, the poke listener and
// the device change feed that keeps the device cache in step across hubs.
func (h *Hub) Run(ctx context.Context, l net.Listener) error {
	srv := h.Server()
	bg, cancel := context.WithCancel(ctx)
	defer cancel()
	h.wg.Add(1)
	go func() { defer h.wg.Done(); h.retention(bg) }()
	if ln, ok := h.st.(store.Listener); ok {
		h.wg.Add(1)
		go func() { defer h.wg.Done(); h.listen(bg, ln) }()
	}
	if h.watch != nil {
		h.wg.Add(1)
		go func() { defer h.wg.Done(); h.watchDevices(bg, h.watch) }()
	}
	if h.ro != nil {
		// The lease holder is this host and listening address: a hub
		// restarted in its place (after a crash) takes its lease back at
		// once instead of waiting for it to expire. No other process can
		// listen there while this one does.
		host, _ := os.Hostname()
		h.ro.holder = host + "/" + l.Addr().String()
		h.wg.Add(1)
		go func() { defer h.wg.Done(); h.ro.run(bg) }()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	h.log.Info("hub listening", "addr", l.Addr().String(), "db", h.st.Backend(), "ca", h.ca.fingerprint)
	// The listener is bound and served: systemd may start what comes after us.
	if err := h.o.Notify("READY=1"); err != nil {
		h.log.Warn("sd_notify READY failed", "err", err)
	}
	if h.o.Watchdog > 0 {
		h.wg.Add(1)
		go func() { defer h.wg.Done(); h.watchdog(bg, h.o.Watchdog) }()
	}
	select {
	case err := <-errc:
		cancel()
		h.wg.Wait()
		return fmt.Errorf("hub: serve: %w", err)
	case <-ctx.Done():
	}
	h.stop()
	_ = h.o.Notify("STOPPING=1")
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer scancel()
	err := srv.Shutdown(sctx)
	cancel()
	h.wg.Wait()
	if err != nil {
		return fmt.Errorf("hub: shutdown: %w", err)
	}
	h.log.Info("hub stopped")
	return nil
}

// watchdog tells systemd the hub is alive every half interval, as long as
// its database answers: a hub that cannot reach its store serves nothing
// useful, and a restart (Restart=always) is the cure systemd can apply.
func (h *Hub) watchdog(ctx context.Context, interval time.Duration) {
	tk := time.NewTicker(interval / 2)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			pctx, cancel := context.WithTimeout(ctx, interval/4)
			err := h.st.Ping(pctx)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					h.log.Error("database does not answer; withholding the watchdog ping", "err", err)
				}
				continue
			}
			if err := h.o.Notify("WATCHDOG=1"); err != nil {
				h.log.Warn("sd_notify WATCHDOG failed", "err", err)
			}
		}
	}
}

// listen relays other hubs' pokes to this hub's long polls, reconnecting
// with a pause after a failure.
func (h *Hub) listen(ctx context.Context, ln store.Listener) {
	for {
		err := ln.Listen(ctx, h.pokes.notify)
		if ctx.Err() != nil {
			return
		}
		h.log.Warn("poke listener failed; retrying", "err", err)
		// Wake pollers so they re-read the store: a poke may have been missed.
		h.pokes.notify(0)
		t := time.NewTimer(2 * time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// retention prunes old reports hourly.
func (h *Hub) retention(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := h.st.PruneReports(ctx, h.o.Now().Add(-h.o.Retention))
		if err != nil && ctx.Err() == nil {
			h.log.Warn("prune reports", "err", err)
		} else if n > 0 {
			h.log.Info("pruned reports", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// broadcaster wakes every long poll when a poke may be waiting.
type broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

func newBroadcaster() *broadcaster { return &broadcaster{ch: make(chan struct{})} }

// wait returns a channel closed at the next notify.
func (b *broadcaster) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcaster) notify(int64) {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}
