// Command sensor-aggregator is the example fleet's edge workload: sensors
// send readings over HTTP (POST /readings, JSON) or UDP (one "SENSOR VALUE
// [UNIX_MILLIS]" a line); a pipeline of buffered channels drops values out
// of range and keeps a window average per sensor; GET /aggregates serves
// the results. /metrics has a histogram of processing time and a counter of
// dropped readings by reason; /healthz says whether the pipeline turns.
//
// It is built static into a FROM-scratch image (see Dockerfile): there is
// no shell there, so `sensor-aggregator --health` is the image's healthcheck.
// SIGTERM stops the inputs, lets every queued reading through and saves the
// windows to --state, which the next start reads back.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command line.
type options struct {
	listen, udp, state, logLevel string
	udpBuffer                    int
	cfg                          Config
	health                       bool
	healthTimeout                time.Duration
	drain                        time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("sensor-aggregator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	fs.StringVar(&o.listen, "listen", ":8080", "HTTP address: POST /readings, GET /aggregates, /metrics, /healthz")
	fs.StringVar(&o.udp, "udp", ":9999", "UDP address for line readings (\"\" = no UDP input)")
	fs.IntVar(&o.udpBuffer, "udp-buffer", 4<<20, "bytes of UDP receive buffer to ask the kernel for")
	// The bounds and the window also come from the environment, so that a
	// fleet can set them per device without repeating the command line.
	var err error
	if o.cfg.Min, err = envFloat("SENSOR_MIN", -40); err != nil {
		return nil, err
	}
	if o.cfg.Max, err = envFloat("SENSOR_MAX", 125); err != nil {
		return nil, err
	}
	if o.cfg.Window, err = envDuration("WINDOW", 10*time.Second); err != nil {
		return nil, err
	}
	fs.Float64Var(&o.cfg.Min, "min", o.cfg.Min, "lowest valid reading; lower ones are dropped (default from $SENSOR_MIN)")
	fs.Float64Var(&o.cfg.Max, "max", o.cfg.Max, "highest valid reading; higher ones are dropped (default from $SENSOR_MAX)")
	fs.DurationVar(&o.cfg.Window, "window", o.cfg.Window, "length of the tumbling window each average covers (default from $WINDOW)")
	fs.IntVar(&o.cfg.Validators, "validators", 2, "goroutines that check readings")
	fs.IntVar(&o.cfg.Shards, "shards", runtime.GOMAXPROCS(0), "goroutines that aggregate, each owning a share of the sensors")
	fs.IntVar(&o.cfg.Queue, "queue", 4096, "readings each channel buffers")
	fs.IntVar(&o.cfg.MaxSensors, "max-sensors", 100000, "sensors tracked at most")
	fs.StringVar(&o.state, "state", "", "file the windows are saved to on shutdown and read from at start (\"\" = none)")
	fs.StringVar(&o.logLevel, "log-level", envOr("LOG_LEVEL", "info"), "debug, info, warn or error (default from $LOG_LEVEL)")
	fs.DurationVar(&o.drain, "drain", 10*time.Second, "on SIGTERM, how long in-flight requests and queued readings may take")
	fs.BoolVar(&o.health, "health", false, "probe the running aggregator's /healthz (at --listen on loopback) and exit 0 if healthy, 1 if not")
	fs.DurationVar(&o.healthTimeout, "health-timeout", 3*time.Second, "how long --health waits")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return o, nil
}

func envFloat(k string, def float64) (float64, error) {
	v := os.Getenv(k)
	if v == "" {
		return def, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, fmt.Errorf("$%s=%q: not a number", k, v)
	}
	return f, nil
}

func envDuration(k string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(k)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("$%s=%q: not a duration like 10s", k, v)
	}
	return d, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: exit code 0 on a clean stop, 1 on a
// failure, 2 on bad flags.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "sensor-aggregator:", err)
		return 2
	}
	if o.health {
		if err := probe(o.listen, o.healthTimeout); err != nil {
			fmt.Fprintln(stderr, "unhealthy:", err)
			return 1
		}
		return 0
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(stderr, "sensor-aggregator: -log-level %q: want debug, info, warn or error\n", o.logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := serve(ctx, o, log, nil); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	return 0
}

// serve runs the aggregator until ctx ends, then shuts down gracefully.
// ready, if not nil, gets the bound HTTP and UDP addresses once serving.
func serve(ctx context.Context, o *options, log *slog.Logger, ready func(httpAddr, udpAddr string)) error {
	m := newMetrics()
	p, err := NewPipeline(o.cfg, m, nil)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	m.watch(p)
	if o.state != "" {
		saved, err := loadState(o.state)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			log.Warn("saved windows not read; starting empty", "file", o.state, "err", err)
		default:
			p.Restore(saved)
			log.Info("saved windows restored", "file", o.state, "sensors", len(saved))
		}
	}

	hl, err := net.Listen("tcp", o.listen)
	if err != nil {
		p.Close(context.Background())
		return fmt.Errorf("listen %s: %w", o.listen, err)
	}
	var uc net.PacketConn
	if o.udp != "" {
		if uc, err = net.ListenPacket("udp", o.udp); err != nil {
			hl.Close()
			p.Close(context.Background())
			return fmt.Errorf("listen udp %s: %w", o.udp, err)
		}
		// A burst of datagrams beyond the socket's buffer is lost in the
		// kernel before the pipeline sees it; ask for room (the kernel
		// caps it at net.core.rmem_max).
		if c, ok := uc.(*net.UDPConn); ok {
			if err := c.SetReadBuffer(o.udpBuffer); err != nil {
				log.Warn("udp receive buffer", "bytes", o.udpBuffer, "err", err)
			}
		}
	}
	srv := &http.Server{Handler: handler(p, m, o.cfg.Window, log), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Serve(hl) }()
	udpDone := make(chan struct{})
	udpAddr := ""
	if uc != nil {
		udpAddr = uc.LocalAddr().String()
		go func() {
			defer close(udpDone)
			readUDP(uc, p, m, log)
		}()
	} else {
		close(udpDone)
	}
	log.Info("serving", "http", hl.Addr().String(), "udp", udpAddr, "window", o.cfg.Window, "min", o.cfg.Min, "max", o.cfg.Max, "shards", o.cfg.Shards)
	if ready != nil {
		ready(hl.Addr().String(), udpAddr)
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-httpDone:
	}
	log.Info("shutting down: inputs closed, draining the queue")
	dctx, cancel := context.WithTimeout(context.Background(), o.drain)
	defer cancel()
	// In-flight requests finish (their readings queued), then UDP stops,
	// then the queue drains through both stages.
	var errs []error
	if serveErr == nil {
		if err := srv.Shutdown(dctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
	} else if !errors.Is(serveErr, http.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("http: %w", serveErr))
	}
	if uc != nil {
		uc.Close()
	}
	<-udpDone
	if err := p.Close(dctx); err != nil {
		errs = append(errs, fmt.Errorf("drain: %w", err))
	}
	if o.state != "" {
		if err := saveState(o.state, p.Sensors("")); err != nil {
			errs = append(errs, err)
		} else {
			log.Info("windows saved", "file", o.state, "sensors", p.SensorCount())
		}
	}
	return errors.Join(errs...)
}

// readUDP feeds datagrams to the pipeline until the socket is closed.
func readUDP(c net.PacketConn, p *Pipeline, m *metrics, log *slog.Logger) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Warn("udp read", "err", err)
				m.Dropped(ReasonMalformed)
				continue
			}
			return
		}
		rs, bad := ParseLines(buf[:n])
		for _, err := range bad {
			m.Dropped(ReasonMalformed)
			log.Debug("malformed udp reading", "from", from.String(), "err", err)
		}
		for _, r := range rs {
			m.received.Inc()
			if err := p.Offer(r); errors.Is(err, ErrStopped) {
				return
			}
		}
	}
}

// probe is --health: GET /healthz of the aggregator listening at listen.
func probe(listen string, timeout time.Duration) error {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", listen, err)
	}
	c := http.Client{Timeout: timeout}
	resp, err := c.Get("http://" + net.JoinHostPort("127.0.0.1", port) + "/healthz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
