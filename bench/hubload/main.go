// Command hubload is the hub's load generator. It starts one or more hub
// processes (this binary again, in the hub role) on SQLite or a throwaway
// PostgreSQL, enrols a fleet of simulated devices through the real
// enrolment API, opens one mutual-TLS keep-alive connection per device, and
// then posts status reports as fast as -workers concurrent senders can for
// -duration. It prints reports per second and latency percentiles as a
// markdown table row, plus a baseline: the same clients against a bare
// mutual-TLS server that decodes and validates each report and stores
// nothing, measured in the same run.
//
//	go run ./bench/hubload -devices 10000 -db sqlite
//	go run ./bench/hubload -devices 10000 -db postgres -hubs 2
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/pgtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hubload:", err)
		os.Exit(1)
	}
}

type config struct {
	role     string
	devices  int
	workers  int
	duration time.Duration
	db       string
	hubs     int
	dbURL    string
	listen   string
	baseline bool
}

func run(ctx context.Context, args []string) error {
	var c config
	fs := flag.NewFlagSet("hubload", flag.ContinueOnError)
	fs.StringVar(&c.role, "role", "load", "load | hub | noop (hub and noop are started by load)")
	fs.IntVar(&c.devices, "devices", 10000, "simulated enrolled devices, one mutual-TLS connection each")
	fs.IntVar(&c.workers, "workers", 64, "concurrent senders")
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "measured phase")
	fs.StringVar(&c.db, "db", "sqlite", "sqlite | postgres")
	fs.IntVar(&c.hubs, "hubs", 1, "hub processes (more than one needs postgres)")
	fs.StringVar(&c.dbURL, "db-url", "", "database URL (hub role)")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:0", "listen address (hub and noop roles)")
	fs.BoolVar(&c.baseline, "baseline", true, "also measure the bare mutual-TLS baseline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch c.role {
	case "hub":
		return serveHub(ctx, c)
	case "noop":
		return serveNoop(ctx, c)
	case "load":
		return load(ctx, c)
	}
	return fmt.Errorf("unknown role %q", c.role)
}

// ready tells the parent the address a child serves on.
func ready(l net.Listener) { fmt.Printf("READY %s\n", l.Addr()) }

func serveHub(ctx context.Context, c config) error {
	st, err := store.Open(ctx, c.dbURL)
	if err != nil {
		return err
	}
	defer st.Close()
	level := slog.LevelWarn
	if os.Getenv("HUBLOAD_DEBUG") != "" {
		level = slog.LevelDebug
	}
	h, err := hub.New(ctx, hub.Options{Store: st, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	if p := os.Getenv("HUBLOAD_CPUPROFILE"); p != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", p, os.Getpid()))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ready(l)
	return h.Run(ctx, l)
}

// serveNoop is the baseline: TLS 1.3 with client certificates, JSON decode
// and validation of each report, an acknowledgement, and no storage.
func serveNoop(ctx context.Context, c config) error {
	st, err := store.Open(ctx, c.dbURL)
	if err != nil {
		return err
	}
	// Borrow the hub's server certificate and CA from a hub built on the same store.
	h, err := hub.New(ctx, hub.Options{Store: st})
	if err != nil {
		return err
	}
	tc := h.TLSConfig()
	st.Close()
	srv := &http.Server{TLSConfig: tc, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no cert", http.StatusUnauthorized)
			return
		}
		var s api.Status
		if err := json.NewDecoder(io.LimitReader(r.Body, api.MaxStatusBytes)).Decode(&s); err != nil || s.Validate() != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&api.StatusAck{APIVersion: api.Version, Seq: s.Seq, Latest: s.Seq})
	})}
	l, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	ready(l)
	go func() { <-ctx.Done(); srv.Shutdown(context.WithoutCancel(ctx)) }()
	if err := srv.ServeTLS(l, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// child starts this binary in a serving role and returns its address and a stop function.
func child(ctx context.Context, args ...string) (string, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
			go io.Copy(io.Discard, out)
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("child %v exited before it was ready", args)
}

type device struct {
	key  *ecdsa.PrivateKey
	cert *api.Certificate
	cl   *client.Client
	seq  atomic.Uint64
}

func load(ctx context.Context, c config) error {
	if c.hubs > 1 && c.db != "postgres" {
		return errors.New("several hubs need -db postgres")
	}
	tmp, err := os.MkdirTemp("", "hubload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var dbURL string
	switch c.db {
	case "sqlite":
		dbURL = "sqlite://" + filepath.Join(tmp, "hub.db")
	case "postgres":
		// Durable, with asynchronous commit: the same promise as SQLite's
		// WAL with synchronous=NORMAL (a crash may lose the last commits,
		// never corrupt).
		pg, err := pgtest.Start(ctx, pgtest.Options{Durable: true, Settings: []string{"synchronous_commit=off", "shared_buffers=256MB"}})
		if err != nil {
			return err
		}
		defer pg.Stop()
		if dbURL, err = pg.CreateDB(ctx); err != nil {
			return err
		}
	default:
		return fmt.Errorf("-db %q: sqlite or postgres", c.db)
	}
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		return err
	}
	defer st.Close()

	var urls []string
	for range c.hubs {
		addr, stop, err := child(ctx, "-role", "hub", "-db-url", dbURL)
		if err != nil {
			return err
		}
		defer stop()
		urls = append(urls, "https://"+addr)
	}
	ca, err := st.CA(ctx)
	if err != nil {
		return err
	}
	fp := fingerprint(ca.CertPEM)

	// Enrol the fleet through the real API.
	t0 := time.Now()
	devs := make([]*device, c.devices)
	if err := parallel(ctx, 16, c.devices, func(i int) error {
		id := fmt.Sprintf("dev-%05d", i)
		tr, err := hub.CreateEnrolToken(ctx, st, id, time.Hour, time.Now())
		if err != nil {
			return err
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		cert, err := client.Enrol(ctx, urls[i%len(urls)], tr.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: fp})
		if err != nil {
			return fmt.Errorf("enrol %s: %w", id, err)
		}
		devs[i] = &device{key: key, cert: cert}
		return nil
	}); err != nil {
		return err
	}
	enrolRate := float64(c.devices) / time.Since(t0).Seconds()
	fmt.Fprintf(os.Stderr, "enrolled %d devices in %v (%.0f/s)\n", c.devices, time.Since(t0).Round(time.Millisecond), enrolRate)

	res, err := measure(ctx, c, devs, urls)
	if err != nil {
		return err
	}
	label := fmt.Sprintf("%s, %d hub(s)", c.db, c.hubs)
	fmt.Printf("| status ingest, %d devices, %s | %.0f reports/s | p50 %s | p99 %s | p99.9 %s | errors %d |\n",
		c.devices, label, res.rate, res.p50, res.p99, res.p999, res.errors)
	fmt.Printf("| enrolment (CSR, cert issue, token use), %s | %.0f enrolments/s |\n", label, enrolRate)
	if c.baseline {
		for _, d := range devs {
			d.cl.CloseIdleConnections()
		}
		addr, stop, err := child(ctx, "-role", "noop", "-db-url", dbURL)
		if err != nil {
			return err
		}
		defer stop()
		base, err := measure(ctx, c, devs, []string{"https://" + addr})
		if err != nil {
			return err
		}
		fmt.Printf("| baseline: bare mutual-TLS decode+validate, no storage | %.0f reports/s | p50 %s | p99 %s | p99.9 %s | errors %d |\n",
			base.rate, base.p50, base.p99, base.p999, base.errors)
		fmt.Printf("| ratio ours/baseline | %.2f | p99 x%.2f |\n", res.rate/base.rate, float64(res.p99)/float64(base.p99))
	}
	// Check the database holds what was acknowledged.
	for _, i := range []int{0, c.devices / 2, c.devices - 1} {
		d, err := st.Device(ctx, fmt.Sprintf("dev-%05d", i))
		if err != nil {
			return err
		}
		if d.LatestSeq < 1 {
			return fmt.Errorf("device %s: latest seq %d in the database", d.ID, d.LatestSeq)
		}
	}
	return nil
}

type result struct {
	rate           float64
	p50, p99, p999 time.Duration
	errors         int64
}

// measure connects every device (one TLS connection each, kept alive),
// then sends reports from c.workers senders for c.duration.
func measure(ctx context.Context, c config, devs []*device, urls []string) (result, error) {
	for i, d := range devs {
		cl, err := client.New(client.Options{Hub: urls[i%len(urls)], Key: d.key, Cert: d.cert})
		if err != nil {
			return result{}, err
		}
		d.cl = cl
	}
	send := func(d *device) error {
		seq := d.seq.Add(1)
		s := api.Status{APIVersion: api.Version, Seq: seq, Time: time.Now().UTC(), State: api.StateConverged, Agent: "hubload",
			Groups: []string{"edge", "berlin"},
			Commit: api.CommitStatus{Attempted: "3f2a9c1e0b7d4a6f8e5c2b1a0d9e8f7a6b5c4d3e", Applied: "3f2a9c1e0b7d4a6f8e5c2b1a0d9e8f7a6b5c4d3e", SpecHash: "sha256:9b1d"},
			Apps: []api.AppStatus{{Name: "web", Image: "registry.example/web:1.4.2", State: "running", Health: "healthy"},
				{Name: "metrics", Image: "registry.example/metrics:0.9", State: "running", Health: "healthy"}},
			Update: &api.UpdateStatus{State: "idle", Slot: "a", Version: "2026.11.0"},
			Clock:  &api.ClockStatus{Trusted: true, Skew: 3 * time.Millisecond},
		}
		return d.cl.Report(ctx, s)
	}
	// Connect everyone first (TLS handshakes are not the steady state).
	t0 := time.Now()
	if err := parallel(ctx, 64, len(devs), func(i int) error { return send(devs[i]) }); err != nil {
		return result{}, fmt.Errorf("connect: %w", err)
	}
	fmt.Fprintf(os.Stderr, "connected %d devices in %v\n", len(devs), time.Since(t0).Round(time.Millisecond))

	var next atomic.Int64
	var errs atomic.Int64
	lat := make([][]time.Duration, c.workers)
	mctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for mctx.Err() == nil {
				d := devs[int(next.Add(1))%len(devs)]
				t := time.Now()
				if err := send(d); err != nil {
					if mctx.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				lat[w] = append(lat[w], time.Since(t))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return result{}, errors.New("no report succeeded")
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration {
		return all[min(len(all)-1, int(p*float64(len(all))))].Round(10 * time.Microsecond)
	}
	return result{rate: float64(len(all)) / el.Seconds(), p50: pct(0.50), p99: pct(0.99), p999: pct(0.999), errors: errs.Load()}, nil
}

// parallel runs f(0..n-1) on k goroutines and returns the first error.
func parallel(ctx context.Context, k, n int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// fingerprint is the hex sha256 of a PEM certificate's DER, as the hub prints it.
func fingerprint(certPEM []byte) string {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return ""
	}
	sum := sha256.Sum256(b.Bytes)
	return hex.EncodeToString(sum[:])
}
