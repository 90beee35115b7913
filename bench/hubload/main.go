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

	"github.com/jackc/pgx/v5"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/bench/internal/sample"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/pgtest"
	"github.com/shoalfleet/shoal/internal/proccpu"
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
	setups   string
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
	fs.BoolVar(&c.baseline, "baseline", true, "also measure the bare mutual-TLS baseline (with the first setup's clients)")
	fs.StringVar(&c.setups, "setups", "", "measure several setups back to back, e.g. sqlite,postgres:2,postgres-socket:2 (db[:hubs]; postgres-socket: hubs reach PostgreSQL over its Unix socket, postgres: over TCP loopback); overrides -db and -hubs")
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
		stop := profileOnSignal(fmt.Sprintf("%s.%d", p, os.Getpid()))
		defer stop()
	}
	ready(l)
	return h.Run(ctx, l)
}

// profileOnSignal writes a CPU profile to path from SIGUSR1 to SIGUSR2 (or
// the returned stop), which the load role sends around the measured phase,
// so enrolment and TLS handshakes do not drown the steady state.
func profileOnSignal(path string) (stop func()) {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var f *os.File
		end := func() {
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
				f = nil
			}
		}
		defer end()
		for {
			select {
			case <-done:
				return
			case s := <-sig:
				if s == syscall.SIGUSR2 {
					end()
					continue
				}
				if f != nil {
					continue
				}
				var err error
				if f, err = os.Create(path); err != nil {
					fmt.Fprintln(os.Stderr, "hubload: cpu profile:", err)
					continue
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					fmt.Fprintln(os.Stderr, "hubload: cpu profile:", err)
					f.Close()
					f = nil
				}
			}
		}
	}()
	return func() { signal.Stop(sig); close(done); wg.Wait() }
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

// proc is a child process serving on addr.
type proc struct {
	addr string
	cmd  *exec.Cmd
}

func (p *proc) stop() { p.cmd.Process.Signal(syscall.SIGTERM); p.cmd.Wait() }

// child starts this binary in a serving role and returns it once it serves.
func child(ctx context.Context, args ...string) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
			go io.Copy(io.Discard, out)
			p.addr = addr
			return p, nil
		}
	}
	p.stop()
	return nil, fmt.Errorf("child %v exited before it was ready", args)
}

type device struct {
	key  *ecdsa.PrivateKey
	cert *api.Certificate
	cl   *client.Client
	seq  atomic.Uint64
}

// setup is one database and hub count to measure.
type setup struct {
	db     string
	hubs   int
	socket bool // PostgreSQL over its Unix socket rather than TCP loopback
}

func (s setup) String() string {
	db := s.db
	if s.socket {
		db += " (Unix socket)"
	}
	if s.hubs == 1 {
		return db + ", 1 hub"
	}
	return fmt.Sprintf("%s, %d hubs", db, s.hubs)
}

func parseSetups(c config) ([]setup, error) {
	if c.setups == "" {
		return []setup{{db: c.db, hubs: c.hubs}}, nil
	}
	var out []setup
	for _, f := range strings.Split(c.setups, ",") {
		db, n, ok := strings.Cut(strings.TrimSpace(f), ":")
		s := setup{db: db, hubs: 1}
		if db == "postgres-socket" {
			s.db, s.socket = "postgres", true
		}
		if ok {
			if _, err := fmt.Sscanf(n, "%d", &s.hubs); err != nil || s.hubs < 1 {
				return nil, fmt.Errorf("-setups %q: hub count %q", f, n)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// outcome is one setup's figures.
type outcome struct {
	setup
	res       result
	enrolRate float64
	// CPU time per report in the measured phase, by process group.
	cpuLoad, cpuHubs, cpuDB time.Duration
	// PostgreSQL transactions committed per report (each a round trip).
	xactPerReport float64
}

func load(ctx context.Context, c config) error {
	setups, err := parseSetups(c)
	if err != nil {
		return err
	}
	var pg *pgtest.Server
	for _, s := range setups {
		switch {
		case s.db != "sqlite" && s.db != "postgres":
			return fmt.Errorf("-db %q: sqlite or postgres", s.db)
		case s.hubs > 1 && s.db != "postgres":
			return errors.New("several hubs need -db postgres")
		case s.db == "postgres" && pg == nil:
			// Durable, with asynchronous commit: the same promise as
			// SQLite's WAL with synchronous=NORMAL (a crash may lose the
			// last commits, never corrupt).
			pg, err = pgtest.Start(ctx, pgtest.Options{Durable: true, Settings: []string{"synchronous_commit=off", "shared_buffers=256MB"}})
			if err != nil {
				return err
			}
			defer pg.Stop()
		}
	}
	tmp, err := os.MkdirTemp("", "hubload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	var outs []outcome
	var base *result
	for i, s := range setups {
		o, b, err := runSetup(ctx, c, s, pg, filepath.Join(tmp, fmt.Sprintf("hub%d.db", i)), c.baseline && i == 0)
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		outs = append(outs, o)
		if b != nil {
			base = b
		}
	}

	// One "status ingest" row per setup and the "baseline" row below are
	// what bench/all.sh reads; the table after them has the detail.
	for _, o := range outs {
		fmt.Printf("| status ingest, %d devices, %s | %.0f reports/s | p50 %s | p99 %s | p99.9 %s | errors %d |\n",
			c.devices, o.setup, o.res.rate, o.res.p50, o.res.p99, o.res.p999, o.res.errors)
	}
	fmt.Printf("\n| setup (%d devices, %d senders, %v) | reports/s | p50 | p99 | p99.9 | errors | enrolments/s | CPU µs/report: load / hubs / db | db transactions/report |\n|---|---|---|---|---|---|---|---|---|\n",
		c.devices, c.workers, c.duration)
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond)) }
	for _, o := range outs {
		xact := "—"
		if o.db == "postgres" {
			xact = fmt.Sprintf("%.2f", o.xactPerReport)
		}
		fmt.Printf("| %s | %.0f | %s | %s | %s | %d | %.0f | %s / %s / %s | %s |\n", o.setup, o.res.rate, o.res.p50, o.res.p99, o.res.p999, o.res.errors,
			o.enrolRate, us(o.cpuLoad), us(o.cpuHubs), us(o.cpuDB), xact)
	}
	if base != nil {
		fmt.Printf("| baseline: bare mutual-TLS decode+validate, no storage | %.0f | %s | %s | %s | %d | — | — | — |\n",
			base.rate, base.p50, base.p99, base.p999, base.errors)
	}
	fmt.Println()
	for _, o := range outs {
		line := fmt.Sprintf("ratio %s:", o.setup)
		if o != outs[0] {
			line += fmt.Sprintf(" %.2f × %s's reports/s, p99 ×%.2f;", o.res.rate/outs[0].res.rate, outs[0].setup, float64(o.res.p99)/float64(outs[0].res.p99))
		}
		if base != nil {
			line += fmt.Sprintf(" %.2f × baseline reports/s, p99 ×%.2f", o.res.rate/base.rate, float64(o.res.p99)/float64(base.p99))
		}
		fmt.Println(line)
	}
	return nil
}

// runSetup starts s's hubs on a fresh database, enrols the fleet, measures,
// and (when baseline is set) measures the bare server with the same clients.
func runSetup(ctx context.Context, c config, s setup, pg *pgtest.Server, sqlitePath string, baseline bool) (outcome, *result, error) {
	o := outcome{setup: s}
	dbURL := "sqlite://" + sqlitePath
	if s.db == "postgres" {
		var err error
		if dbURL, err = pg.CreateDB(ctx); err != nil {
			return o, nil, err
		}
		if s.socket {
			dbURL = pg.OverSocket(dbURL)
		}
	}
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		return o, nil, err
	}
	defer st.Close()

	var urls []string
	var hubs []*proc
	for range s.hubs {
		p, err := child(ctx, "-role", "hub", "-db-url", dbURL)
		if err != nil {
			return o, nil, err
		}
		defer p.stop()
		hubs = append(hubs, p)
		urls = append(urls, "https://"+p.addr)
	}
	ca, err := st.CA(ctx)
	if err != nil {
		return o, nil, err
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
		return o, nil, err
	}
	o.enrolRate = float64(c.devices) / time.Since(t0).Seconds()
	fmt.Fprintf(os.Stderr, "%s: enrolled %d devices in %v (%.0f/s)\n", s, c.devices, time.Since(t0).Round(time.Millisecond), o.enrolRate)

	// Account CPU time and database transactions over the measured phase.
	var cpu0 [3]time.Duration
	var xact0 int64
	pids := func() (load, hub, db []int) {
		load = []int{os.Getpid()}
		for _, h := range hubs {
			hub = append(hub, h.cmd.Process.Pid)
		}
		if s.db == "postgres" {
			db, _ = pg.PIDs()
		}
		return load, hub, db
	}
	around := func(begin bool) {
		sig := syscall.SIGUSR2
		if begin {
			sig = syscall.SIGUSR1
		}
		for _, h := range hubs {
			h.cmd.Process.Signal(sig)
		}
		l, h, d := pids()
		cpu := [3]time.Duration{proccpu.Time(l...), proccpu.Time(h...), proccpu.Time(d...)}
		xact := committed(ctx, dbURL)
		if begin {
			cpu0, xact0 = cpu, xact
			return
		}
		o.cpuLoad, o.cpuHubs, o.cpuDB = cpu[0]-cpu0[0], cpu[1]-cpu0[1], cpu[2]-cpu0[2]
		xact0 = xact - xact0
	}
	o.res, err = measure(ctx, c, devs, urls, around)
	if err != nil {
		return o, nil, err
	}
	n := time.Duration(o.res.count)
	o.cpuLoad, o.cpuHubs, o.cpuDB = o.cpuLoad/n, o.cpuHubs/n, o.cpuDB/n
	o.xactPerReport = float64(xact0) / float64(o.res.count)
	fmt.Fprintf(os.Stderr, "%s: %.0f reports/s, p50 %s, p99 %s, p99.9 %s, errors %d\n", s, o.res.rate, o.res.p50, o.res.p99, o.res.p999, o.res.errors)

	var base *result
	if baseline {
		for _, d := range devs {
			d.cl.CloseIdleConnections()
		}
		p, err := child(ctx, "-role", "noop", "-db-url", dbURL)
		if err != nil {
			return o, nil, err
		}
		defer p.stop()
		b, err := measure(ctx, c, devs, []string{"https://" + p.addr}, func(bool) {})
		if err != nil {
			return o, nil, err
		}
		base = &b
		fmt.Fprintf(os.Stderr, "baseline: %.0f reports/s, p50 %s, p99 %s\n", b.rate, b.p50, b.p99)
	}
	for _, d := range devs {
		d.cl.CloseIdleConnections()
	}
	// Check the database holds what was acknowledged.
	for _, i := range []int{0, c.devices / 2, c.devices - 1} {
		d, err := st.Device(ctx, fmt.Sprintf("dev-%05d", i))
		if err != nil {
			return o, nil, err
		}
		if d.LatestSeq < 1 {
			return o, nil, fmt.Errorf("device %s: latest seq %d in the database", d.ID, d.LatestSeq)
		}
	}
	return o, base, nil
}

// committed returns PostgreSQL's count of committed transactions in the
// current database (0 for SQLite). The statistics are flushed at most once a
// second per backend, so the count over a 20 s phase is close, not exact.
func committed(ctx context.Context, dbURL string) int64 {
	if !strings.HasPrefix(dbURL, "postgres") {
		return 0
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0
	}
	defer conn.Close(ctx)
	var n int64
	conn.QueryRow(ctx, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").Scan(&n)
	return n
}

type result struct {
	count          int
	rate           float64
	p50, p99, p999 time.Duration
	errors         int64
}

// measure connects every device (one TLS connection each, kept alive),
// then sends reports from c.workers senders for c.duration.
// around is called just before and just after the measured phase.
func measure(ctx context.Context, c config, devs []*device, urls []string, around func(begin bool)) (result, error) {
	for i, d := range devs {
		cl, err := client.New(client.Options{Hub: urls[i%len(urls)], Key: d.key, Cert: d.cert})
		if err != nil {
			return result{}, err
		}
		d.cl = cl
	}
	send := func(d *device) error {
		seq := d.seq.Add(1)
		s := sample.Status("hubload", seq)
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
	around(true)
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
	around(false)
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
	return result{count: len(all), rate: float64(len(all)) / el.Seconds(), p50: pct(0.50), p99: pct(0.99), p999: pct(0.999), errors: errs.Load()}, nil
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
