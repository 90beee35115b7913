// Package pprofhttp serves Go's profiler (net/http/pprof) for Shoal's
// daemons, on loopback addresses only: a profile shows memory contents and
// a CPU profile slows the process, so it is never offered to the network.
// The agent and the hub import it.
package pprofhttp

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// Loopback reports whether a listen address (host:port) binds a loopback
// address only: 127.0.0.0/8, ::1 or localhost.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Register adds /debug/pprof/ and its profiles to mux.
func Register(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// Serve serves the profiler alone on l until ctx ends, then shuts down.
func Serve(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	Register(mux)
	// WriteTimeout is left unset: a CPU profile or trace runs for as long as
	// its ?seconds= asks.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
