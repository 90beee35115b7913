package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxBody bounds a POST /readings body.
const maxBody = 1 << 20

// submitWait is how long a POST waits for room in a full queue before it
// answers 503.
const submitWait = 2 * time.Second

// metrics are the aggregator's Prometheus metrics; it is the pipeline's Observer.
type metrics struct {
	reg       *prometheus.Registry
	processed prometheus.Histogram
	errors    *prometheus.CounterVec
	received  prometheus.Counter
	windows   prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		processed: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sensor_aggregator_processing_seconds",
			Help: "Time from a reading's arrival to its aggregation into its sensor's window.",
			// 50 µs to about 1.6 s: the target is under 50 ms at the 99th percentile.
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sensor_aggregator_errors_total",
			Help: "Readings dropped, by reason: out-of-range, late, future, malformed, queue-full, too-many-sensors.",
		}, []string{"reason"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sensor_aggregator_readings_received_total",
			Help: "Well-formed readings received over HTTP or UDP.",
		}),
		windows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sensor_aggregator_windows_closed_total",
			Help: "Sensor windows closed (their averages final).",
		}),
	}
	for _, r := range []string{ReasonOutOfRange, ReasonLate, ReasonFuture, ReasonMalformed, ReasonQueueFull, ReasonTooMany} {
		m.errors.WithLabelValues(r)
	}
	m.reg.MustRegister(m.processed, m.errors, m.received, m.windows,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watch adds the gauges read from the pipeline at scrape time.
func (m *metrics) watch(p *Pipeline) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sensor_aggregator_queue_length", Help: "Readings waiting in the input queue."},
			func() float64 { return float64(p.QueueLen()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sensor_aggregator_sensors", Help: "Sensors with a window."},
			func() float64 { return float64(p.SensorCount()) }),
	)
}

func (m *metrics) Processed(d time.Duration) { m.processed.Observe(d.Seconds()) }
func (m *metrics) Dropped(reason string)     { m.errors.WithLabelValues(reason).Inc() }
func (m *metrics) WindowClosed()             { m.windows.Inc() }

// handler serves the aggregator's HTTP API.
func handler(p *Pipeline, m *metrics, window time.Duration, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /readings", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			m.Dropped(ReasonMalformed)
			httpError(w, http.StatusRequestEntityTooLarge, "body: "+err.Error())
			return
		}
		rs, bad, err := ParseJSON(body)
		if err != nil {
			m.Dropped(ReasonMalformed)
			httpError(w, http.StatusBadRequest, err.Error())
			return
		}
		for range bad {
			m.Dropped(ReasonMalformed)
		}
		res := struct {
			Accepted int      `json:"accepted"`
			Rejected []string `json:"rejected,omitempty"`
		}{}
		for _, e := range bad {
			res.Rejected = append(res.Rejected, e.Error())
		}
		ctx, cancel := context.WithTimeout(r.Context(), submitWait)
		defer cancel()
		for _, rd := range rs {
			m.received.Inc()
			if err := p.Submit(ctx, rd); err != nil {
				code := http.StatusServiceUnavailable
				w.Header().Set("Retry-After", "1")
				if errors.Is(err, ErrStopped) {
					err = errors.New("shutting down")
				}
				log.Debug("readings refused", "accepted", res.Accepted, "of", len(rs), "err", err)
				httpError(w, code, err.Error())
				return
			}
			res.Accepted++
		}
		status := http.StatusAccepted
		if len(res.Rejected) > 0 && res.Accepted == 0 {
			status = http.StatusBadRequest
		}
		writeJSON(w, status, res)
	})
	mux.HandleFunc("GET /aggregates", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, struct {
			Window  string                     `json:"window"`
			Sensors map[string]SensorAggregate `json:"sensors"`
		}{window.String(), p.Sensors(r.URL.Query().Get("prefix"))})
	})
	mux.HandleFunc("GET /aggregates/{sensor}", func(w http.ResponseWriter, r *http.Request) {
		a, ok := p.Sensor(r.PathValue("sensor"))
		if !ok {
			httpError(w, http.StatusNotFound, "no readings from sensor "+r.PathValue("sensor"))
			return
		}
		writeJSON(w, http.StatusOK, a)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		// A shard loop turns at least every second (or a quarter window).
		if err := p.Healthy(10 * time.Second); err != nil {
			httpError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func httpError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, struct {
		Error string `json:"error"`
	}{msg})
}
