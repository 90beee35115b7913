// Command metrics-exporter is the example fleet's host metrics exporter: it
// serves the host's CPU time, load, memory, root filesystem and network
// counters in Prometheus' text format on /metrics, read at each scrape from
// the host's /proc under --rootfs (the host's / bind-mounted read-only into
// its container, at /host). /healthz answers 200 while the host's /proc is
// readable; `metrics-exporter --health` probes it, for the FROM-scratch
// image's healthcheck (no shell there). SIGTERM stops it gracefully.
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
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type options struct {
	listen, rootfs string
	health         bool
	healthTimeout  time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("metrics-exporter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	fs.StringVar(&o.listen, "listen", ":9100", "HTTP address: /metrics and /healthz")
	fs.StringVar(&o.rootfs, "rootfs", "/", "where the host's root is mounted (its /proc is read under it)")
	fs.BoolVar(&o.health, "health", false, "probe the running exporter's /healthz (at --listen on loopback) and exit 0 if healthy, 1 if not")
	fs.DurationVar(&o.healthTimeout, "health-timeout", 3*time.Second, "how long --health waits")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return o, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: 0 on a clean stop, 1 on a failure, 2 on bad flags.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if o.health {
		if err := probe(o.listen, o.healthTimeout); err != nil {
			fmt.Fprintln(stderr, "unhealthy:", err)
			return 1
		}
		return 0
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := serve(ctx, o, log, nil); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	return 0
}

// serve runs the exporter until ctx ends; ready, if set, gets the address.
func serve(ctx context.Context, o *options, log *slog.Logger, ready func(addr string)) error {
	stat := filepath.Join(o.rootfs, "proc", "stat")
	if _, err := os.Stat(stat); err != nil {
		return fmt.Errorf("--rootfs %s: %w (mount the host's / there, read-only)", o.rootfs, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newHostCollector(o.rootfs))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if _, err := os.ReadFile(stat); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	log.Info("serving", "addr", l.Addr().String(), "rootfs", o.rootfs)
	if ready != nil {
		ready(l.Addr().String())
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

// probe is --health: GET /healthz of the exporter listening at listen.
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
