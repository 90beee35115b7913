package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoalfleet/shoal/internal/pprofhttp"
)

// Handler serves /metrics, /healthz and, when pprof is on and the listen
// address is loopback, /debug/pprof/.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", a.healthz)
	if a.cfg.Pprof && pprofhttp.Loopback(a.cfg.MetricsAddr) {
		pprofhttp.Register(mux)
	}
	return mux
}

// healthz answers 200 while the loop is alive (idle, or in a pass younger
// than the pass limit), with the device state; 503 otherwise.
func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	st := a.State()
	body := map[string]any{
		"applied": st.Applied.Commit, "converged": st.Converged, "passes": st.Passes,
		"outboxDepth": a.outbox.Depth(),
	}
	if st.LastPass != nil {
		body["state"] = st.LastPass.Status.State
	}
	code := http.StatusOK
	if !a.alive() {
		code = http.StatusServiceUnavailable
		body["error"] = "a pass has run past its limit"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// Serve listens on the config's metrics address and serves Handler until ctx
// is done. An empty address serves nothing and returns at once.
func (a *Agent) Serve(ctx context.Context) error {
	if a.cfg.MetricsAddr == "" {
		return nil
	}
	if a.cfg.Pprof && !pprofhttp.Loopback(a.cfg.MetricsAddr) {
		a.log.Warn("pprof is only served on a loopback metrics_addr; not serving it", "addr", a.cfg.MetricsAddr)
	}
	l, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err = srv.Serve(l)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
