// Package relay is the site tier, `shoal relay`: a small server at a site
// (a NUC in the factory, a cabinet PC) that the site's devices talk to
// exactly as they would to the hub — the same device API over the same
// mutual TLS — and that talks to the hub for them.
//
//   - It enrols with the hub like a device, with a relay token and the relay
//     role in its certificate, which is also the server certificate its
//     devices verify against the hub CA they already hold.
//   - It mirrors the fleet repo (on the hub's poke and on an interval) and
//     serves it to its devices with git http-backend; devices still check
//     commit signatures themselves.
//   - It caches artifacts (releases, image tars) by sha256, fetched once per
//     site, verified before they are served, with Range requests.
//   - It keeps devices' status reports on disk and forwards them to the hub
//     in order, with the devices' own sequence numbers, at least once.
//   - It forwards every other device request to the hub with the device's
//     certificate (api.HeaderDeviceCert); without the hub, the device is
//     told to wait (503 upstream-unavailable).
//   - It passes the hub's pokes on to its devices, after updating its mirror.
//   - It publishes devices' status and events to the site's MQTT broker.
//
// It imports api, api/client and spec (and small internal helpers), and is
// linked into cmd/shoal only, never into the device binary.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/backoff"
	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/spec"
)

// Options configure a Relay. StateDir and Hub are required; the zero value
// of the rest works.
type Options struct {
	// StateDir holds the relay's identity, held reports, mirror and cache.
	StateDir string
	// Hub is the hub's base URL.
	Hub string
	// Mirror is the fleet repo to mirror; no URL: none (devices fetch
	// the fleet repo elsewhere).
	Mirror MirrorOptions
	// CacheLimit bounds the artifact cache in bytes (default 20 GiB).
	CacheLimit int64
	// ScrubInterval is how often every cached artifact is hashed again (default 24h).
	ScrubInterval time.Duration
	// StatusInterval is how often the relay reports its health to the hub (default 30s).
	StatusInterval time.Duration
	// PollWait caps a device's long poll and the relay's own (default 55s).
	PollWait time.Duration
	// MQTT, when its Broker is set, publishes devices' status and events.
	MQTT MQTTOptions
	// Origin fetches artifacts from their origins (default: a client with
	// the system's proxy settings and CAs).
	Origin *http.Client
	// Version is the relay's software version, for its status.
	Version    string
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time
}

// Relay is a running site relay. New builds it, Run serves, and Run's
// return means every goroutine it started has ended.
type Relay struct {
	o       Options
	log     *slog.Logger
	id      *identity
	up      *upstream
	out     *outbox
	devs    *devices
	pokes   *pokeBoard
	cache   *cache
	mirror  *mirror // nil without a fleet repo
	mq      *mqttPub
	m       *relayMetrics
	reg     *prometheus.Registry
	certs   certCache
	proxy   http.Handler
	started time.Time

	indexedMu sync.Mutex
	indexed   map[string]string // device -> mirror commit its images were indexed at

	bg       context.Context
	cancel   context.CancelFunc
	stopping chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// New opens the relay's state (it must be enrolled: Enrol) and prepares it.
func New(o Options) (*Relay, error) {
	if o.StateDir == "" || o.Hub == "" {
		return nil, errors.New("relay: StateDir and Hub are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CacheLimit <= 0 {
		o.CacheLimit = 20 << 30
	}
	if o.ScrubInterval <= 0 {
		o.ScrubInterval = 24 * time.Hour
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = 30 * time.Second
	}
	if o.PollWait <= 0 {
		o.PollWait = 55 * time.Second
	}
	if o.Origin == nil {
		o.Origin = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	id, err := loadIdentity(o.StateDir)
	if err != nil {
		return nil, err
	}
	r := &Relay{o: o, id: id, started: o.Now(), stopping: make(chan struct{})}
	r.log = o.Logger.With("relay", id.ID())
	r.bg, r.cancel = context.WithCancel(context.Background())
	if r.up, err = newUpstream(o.Hub, id); err != nil {
		return nil, err
	}
	if r.out, err = openOutbox(filepath.Join(o.StateDir, "outbox")); err != nil {
		return nil, err
	}
	r.m = newRelayMetrics(func() float64 { return float64(r.out.backlog().Reports) }, func() float64 {
		if r.up.ok.Load() {
			return 1
		}
		return 0
	})
	if r.devs, err = openDevices(filepath.Join(o.StateDir, "devices")); err != nil {
		return nil, err
	}
	if r.pokes, err = openPokeBoard(filepath.Join(o.StateDir, "pokes.json")); err != nil {
		return nil, err
	}
	if r.cache, err = openCache(r.bg, filepath.Join(o.StateDir, "cache"), o.CacheLimit, o.Origin, r.log.With("part", "cache"), r.m); err != nil {
		return nil, err
	}
	if o.Mirror.URL != "" {
		if r.mirror, err = newMirror(o.StateDir, o.Mirror); err != nil {
			return nil, err
		}
		r.reindex()
	}
	if o.MQTT.Broker != "" {
		r.mq = newMQTT(o.MQTT, id.ID(), r.devs, r.m, r.log.With("part", "mqtt"))
	}
	r.proxy = r.newProxy()
	r.reg = prometheus.NewRegistry()
	for _, c := range r.m.collectors() {
		r.reg.MustRegister(c)
		if o.Registerer != nil {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("relay: register metrics: %w", err)
			}
		}
	}
	return r, nil
}

// ID is the relay's ID, from its certificate.
func (r *Relay) ID() string { return r.id.ID() }

// TLSConfig is the device-facing TLS configuration: the relay's certificate
// (renewed in place) with the hub CA in its chain, TLS 1.3, and client
// certificates requested and checked per request, as the hub does.
func (r *Relay) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, _ := r.id.current()
			return c, nil
		},
		ClientAuth: tls.RequestClientCert,
		// Named so a device presents its certificate to a relay and to no
		// other server asking for one (source.UseClientCertificate).
		ClientCAs:  r.id.ca,
		NextProtos: []string{"h2", "http/1.1"},
	}
}

// Run serves devices on l until ctx ends, with the relay's loops: held
// reports to the hub, the hub's pokes, the mirror, its own status, its
// certificate's renewal, the cache scrub and MQTT. Then it shuts down
// gracefully and waits for all of them.
func (r *Relay) Run(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           r.Handler(),
		TLSConfig:         r.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelDebug),
	}
	srv.RegisterOnShutdown(r.stop)
	loops := []func(context.Context){r.forwardLoop, r.pokeLoop, r.statusLoop, r.renewLoop, r.flushLoop, r.scrubLoop, r.importLoop}
	if r.mirror != nil {
		loops = append(loops, r.mirrorLoop)
	}
	if r.mq != nil {
		loops = append(loops, r.mq.run)
	}
	for _, f := range loops {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); f(r.bg) }()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	r.log.Info("relay listening", "addr", l.Addr().String(), "hub", r.o.Hub, "fleet", redact(r.o.Mirror.URL))
	var err error
	select {
	case err = <-errc:
		err = fmt.Errorf("relay: serve: %w", err)
	case <-ctx.Done():
		r.stop()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
		err = srv.Shutdown(sctx)
		cancel()
	}
	r.cancel()
	r.wg.Wait()
	if ferr := r.devs.flush(); ferr != nil && err == nil {
		err = ferr
	}
	r.log.Info("relay stopped")
	return err
}

func (r *Relay) stop() { r.stopOnce.Do(func() { close(r.stopping) }) }

// Close releases what New opened when Run was never called.
func (r *Relay) Close() { r.cancel() }

// forwardLoop sends held reports to the hub: per device in seq order, up
// to eight devices at once; after a failure to reach the hub it backs off.
func (r *Relay) forwardLoop(ctx context.Context) {
	b := backoff.New(time.Second, time.Minute, 0.2)
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		wait := time.Duration(0)
		if !r.drain(ctx) {
			wait = b.Next()
		} else {
			b.Reset()
		}
		if wait > 0 {
			if backoff.Wait(ctx, wait) != nil {
				return
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-r.out.wake:
		case <-tick.C:
		}
	}
}

// drain forwards what is held; false when the hub could not be reached.
func (r *Relay) drain(ctx context.Context) bool {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := true
	for _, dev := range r.out.devices() {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if !r.drainDevice(ctx, dev) {
				mu.Lock()
				ok = false
				mu.Unlock()
				cancel() // the hub is away: the others would fail too
			}
		}()
	}
	wg.Wait()
	return ok
}

func (r *Relay) drainDevice(ctx context.Context, dev string) bool {
	for ctx.Err() == nil {
		seq, body, found, err := r.out.head(dev)
		if err != nil {
			r.log.Error("read held report", "device", dev, "err", err)
			return false
		}
		if !found {
			return true
		}
		cert := r.devs.cert(dev)
		if cert == nil {
			r.log.Error("held reports of a device whose certificate is lost: dropped", "device", dev)
			r.out.done(dev, seq)
			continue
		}
		var ack api.StatusAck
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = r.up.do(cctx, "POST", "/v1/status", cert, rawJSON(body), &ack)
		cancel()
		var ae *api.Error
		switch {
		case err == nil:
			res := "stored"
			if ack.Duplicate {
				res = "duplicate"
			}
			r.m.forwarded.WithLabelValues(res).Inc()
		case retryable(err):
			if ctx.Err() == nil {
				r.log.Info("hub unreachable; reports stay held", "device", dev, "err", err)
			}
			return false
		case errors.As(err, &ae):
			// Refused for good (revoked, invalid): the hub never takes it.
			r.m.forwarded.WithLabelValues("refused").Inc()
			r.log.Warn("hub refused a held report: dropped", "device", dev, "seq", seq, "reason", ae.Reason, "err", ae.Message)
			if ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden {
				r.devs.refuse(dev, ae)
			}
		default:
			r.log.Error("forward report", "device", dev, "seq", seq, "err", err)
			return false
		}
		if err := r.out.done(dev, seq); err != nil {
			r.log.Error("remove forwarded report", "device", dev, "err", err)
			return false
		}
	}
	return true
}

// rawJSON sends bytes already encoded.
type rawJSON []byte

func (j rawJSON) MarshalJSON() ([]byte, error) { return j, nil }

// pokeLoop long-polls the hub's poke stream and passes each poke on to the
// devices, after bringing the mirror up to date so they fetch the new commit.
func (r *Relay) pokeLoop(ctx context.Context) {
	b := backoff.New(time.Second, time.Minute, 0.2)
	for ctx.Err() == nil {
		p, err := r.up.pokes(ctx, r.pokes.hubCursor(), r.o.PollWait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.Debug("poke stream", "err", err)
			if backoff.Wait(ctx, b.Next()) != nil {
				return
			}
			continue
		}
		b.Reset()
		if len(p.Pokes) > 0 && r.mirror != nil {
			r.syncMirror(ctx, false)
		}
		if err := r.pokes.add(p.Cursor, p.Pokes); err != nil {
			r.log.Error("keep poke cursor", "err", err)
		}
		r.m.pokes.Add(float64(len(p.Pokes)))
	}
}

// mirrorLoop fetches the fleet repo at start and every interval; a new
// commit found so is announced to the devices with a poke of the relay's own.
func (r *Relay) mirrorLoop(ctx context.Context) {
	for {
		r.syncMirror(ctx, true)
		if backoff.Wait(ctx, backoff.Jitter(r.o.Mirror.Interval, 0.1, nil)) != nil {
			return
		}
	}
}

// syncMirror fetches upstream into the mirror and reindexes the artifacts
// on a new commit; pokeOnNew also pokes the devices then.
func (r *Relay) syncMirror(ctx context.Context, pokeOnNew bool) {
	before := r.mirror.status().commit
	if err := r.mirror.sync(ctx); err != nil {
		r.m.mirrorFetches.WithLabelValues("failed").Inc()
		if ctx.Err() == nil {
			r.log.Warn("fleet repo mirror not updated; serving the last commit", "err", err)
		}
		return
	}
	r.m.mirrorFetches.WithLabelValues("ok").Inc()
	after := r.mirror.status().commit
	if after == before {
		return
	}
	r.log.Info("fleet repo mirror updated", "commit", after)
	r.reindex()
	if pokeOnNew && before != "" {
		if err := r.pokes.localPokeAll(after, api.ReasonRelayMirror, r.o.Now()); err != nil {
			r.log.Error("poke devices", "err", err)
		}
	}
}

// reindex learns the artifacts the mirror's followed branch names: every
// release (and its delta's index and chunk store), and every app image tar
// fetched by URL of the devices it knows.
func (r *Relay) reindex() { r.index(r.devs.ids()) }

// firstAtCommit reports whether device id has not had its images indexed at
// the mirror's current commit yet, and marks it: a device asking for what
// the fleet does not name costs one render per commit, no more.
func (r *Relay) firstAtCommit(id string) bool {
	commit := r.mirror.status().commit
	r.indexedMu.Lock()
	defer r.indexedMu.Unlock()
	if r.indexed == nil || len(r.indexed) > 100_000 {
		r.indexed = map[string]string{}
	}
	if r.indexed[id] == commit {
		return false
	}
	r.indexed[id] = commit
	return true
}

// index learns the releases (with their deltas' indexes and chunk stores)
// and the image tars of devices ids at the mirror's head.
func (r *Relay) index(ids []string) {
	fsys, commit, err := gitfs.OpenBare(r.mirror.dir(), "refs/heads/"+r.mirror.o.Branch)
	if err != nil {
		if _, serr := os.Stat(r.mirror.dir()); serr == nil {
			r.log.Warn("read the mirror's fleet repo", "err", err)
		}
		return
	}
	fl, err := spec.Load(fsys)
	if fl == nil {
		r.log.Warn("fleet repo does not load; its artifacts are not known", "commit", commit, "err", err)
		return
	}
	var as []artifact
	web := func(u string) bool { return len(u) > 7 && (u[:7] == "http://" || (len(u) > 8 && u[:8] == "https://")) }
	var stores []string
	for _, name := range fl.ReleaseNames() {
		rel := fl.Release(name)
		if rel != nil && web(rel.URL) {
			as = append(as, artifact{URL: rel.URL, SHA256: rel.SHA256, Size: rel.Size})
		}
		if rel != nil && rel.Delta != nil {
			if web(rel.Delta.Index) {
				as = append(as, artifact{URL: rel.Delta.Index, SHA256: rel.Delta.SHA256})
			}
			if web(rel.Delta.Store) {
				stores = append(stores, rel.Delta.Store)
			}
		}
	}
	// Images only for the devices this relay serves: rendering the whole
	// fleet would hold up the pokes waiting on this index.
	for _, id := range ids {
		dev, err := fl.Render(id)
		if err != nil {
			r.log.Debug("device does not render; its images are not indexed", "device", id, "err", err)
			continue
		}
		for _, app := range dev.Apps {
			if src := app.Image.Source; src != nil && web(src.URL) {
				as = append(as, artifact{URL: src.URL, SHA256: src.SHA256})
			}
		}
	}
	r.cache.learn(as)
	r.cache.learnStores(stores)
	r.log.Debug("artifacts indexed", "commit", commit, "count", len(as), "chunk_stores", len(stores))
}

// Status is the relay's report of its health.
func (r *Relay) Status() *api.RelayStatus {
	now := r.o.Now()
	s := &api.RelayStatus{APIVersion: api.Version, RelayID: r.id.ID(), Time: now.UTC(), Version: r.o.Version, Started: r.started.UTC(),
		Devices: r.devs.active(now.Add(-time.Hour)), Backlog: r.out.backlog()}
	s.Cache.Bytes, s.Cache.Items = r.cache.use()
	s.Cache.Limit, s.Cache.UpstreamBytes, s.Cache.ServedBytes = r.o.CacheLimit, r.cache.upstream.Load(), r.cache.served.Load()
	if r.mirror != nil {
		ms := r.mirror.status()
		s.Mirror = api.RelayMirror{Commit: ms.commit, Fetched: ms.fetched.UTC(), Error: trimErr(ms.err)}
		if ms.fetched.IsZero() {
			s.Mirror.Fetched = time.Time{}
		}
	}
	if r.mq != nil {
		s.MQTT = &api.RelayMQTTLink{Broker: redact(r.o.MQTT.Broker), Connected: r.mq.connected()}
	}
	return s
}

func (r *Relay) statusLoop(ctx context.Context) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := r.up.do(cctx, "POST", "/v1/relay/status", nil, r.Status(), nil)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.log.Debug("relay status not delivered", "err", err)
		}
		if backoff.Wait(ctx, r.o.StatusInterval) != nil {
			return
		}
	}
}

// renewLoop renews the relay's certificate once past its renewal time.
func (r *Relay) renewLoop(ctx context.Context) {
	b := backoff.New(time.Minute, time.Hour, 0.2)
	for {
		_, c := r.id.current()
		next := min(max(time.Until(c.RenewAfter), time.Second), 10*time.Minute)
		if !r.o.Now().Before(c.RenewAfter) {
			nc, err := r.up.renew(ctx)
			if err == nil {
				err = writeCert(r.o.StateDir, nc)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				r.log.Warn("relay certificate renewal failed; retrying", "err", err)
				next = b.Next()
			} else {
				b.Reset()
				r.log.Info("relay certificate renewed", "not_after", nc.NotAfter)
				next = min(max(time.Until(nc.RenewAfter), time.Minute), 10*time.Minute)
			}
		}
		if backoff.Wait(ctx, next) != nil {
			return
		}
	}
}

func (r *Relay) flushLoop(ctx context.Context) {
	for backoff.Wait(ctx, 10*time.Second) == nil {
		if err := r.devs.flush(); err != nil {
			r.log.Warn("keep device records", "err", err)
		}
	}
}

func (r *Relay) scrubLoop(ctx context.Context) {
	for backoff.Wait(ctx, r.o.ScrubInterval) == nil {
		r.cache.scrub()
	}
}
