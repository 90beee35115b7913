package relay

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/api"
)

// relayMetrics are the relay's Prometheus metrics.
type relayMetrics struct {
	reports       *prometheus.CounterVec
	forwarded     *prometheus.CounterVec
	backlog       prometheus.GaugeFunc
	upstreamUp    prometheus.GaugeFunc
	requests      *prometheus.CounterVec
	cacheRequests *prometheus.CounterVec
	cacheBytes    prometheus.Gauge
	cacheItems    prometheus.Gauge
	upstreamBytes prometheus.Counter
	servedBytes   prometheus.Counter
	evictions     prometheus.Counter
	tampered      prometheus.Counter
	pokes         prometheus.Counter
	mirrorFetches *prometheus.CounterVec
	mqtt          *prometheus.CounterVec
	mqttUp        prometheus.Gauge
}

func newRelayMetrics(backlog, up func() float64) *relayMetrics {
	return &relayMetrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_relay_reports_total", Help: "Device status reports received, by result (stored, rejected).",
		}, []string{"result"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_relay_reports_forwarded_total", Help: "Held reports the hub answered, by result (stored, duplicate, refused).",
		}, []string{"result"}),
		backlog: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_relay_backlog_reports", Help: "Device reports held on disk for the hub.",
		}, backlog),
		upstreamUp: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_relay_upstream_up", Help: "1 while the hub answered the relay's last call, 0 after a failure to reach it.",
		}, up),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_relay_forwarded_requests_total", Help: "Device requests forwarded to the hub, by outcome (answered, unreachable).",
		}, []string{"outcome"}),
		cacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_relay_cache_requests_total", Help: "Artifact requests, by result (hit, miss, wait: joined a fetch under way).",
		}, []string{"result"}),
		cacheBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_relay_cache_bytes", Help: "Bytes of artifacts in the cache.",
		}),
		cacheItems: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_relay_cache_artifacts", Help: "Artifacts in the cache.",
		}),
		upstreamBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_relay_cache_fetched_bytes_total", Help: "Artifact bytes fetched from origins.",
		}),
		servedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_relay_cache_served_bytes_total", Help: "Artifact bytes served to devices.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_relay_cache_evictions_total", Help: "Artifacts evicted to keep the cache within its limit.",
		}),
		tampered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_relay_cache_verify_failures_total", Help: "Artifacts fetched or found on disk that did not match their sha256 (never served).",
		}),
		pokes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_relay_pokes_total", Help: "Pokes passed on to the relay's devices.",
		}),
		mirrorFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_relay_mirror_fetches_total", Help: "Fleet repo mirror fetches, by result (ok, failed).",
		}, []string{"result"}),
		mqtt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_relay_mqtt_messages_total", Help: "MQTT messages published, by kind (status, event) and result (ok, failed).",
		}, []string{"kind", "result"}),
		mqttUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_relay_mqtt_connected", Help: "1 while connected to the MQTT broker.",
		}),
	}
}

func (m *relayMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.reports, m.forwarded, m.backlog, m.upstreamUp, m.requests, m.cacheRequests, m.cacheBytes, m.cacheItems,
		m.upstreamBytes, m.servedBytes, m.evictions, m.tampered, m.pokes, m.mirrorFetches, m.mqtt, m.mqttUp}
}

// countWriter counts bytes written into a total and a counter.
type countWriter struct {
	n *atomic.Int64
	c prometheus.Counter
}

func (w countWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	w.c.Add(float64(len(p)))
	return len(p), nil
}

// countingResponse counts the body bytes of a response, keeping the
// ResponseWriter's ReadFrom so a file is still sent with sendfile where
// the connection allows it.
type countingResponse struct {
	http.ResponseWriter
	n *atomic.Int64
	c prometheus.Counter
}

func (w countingResponse) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	w.c.Add(float64(n))
	return n, err
}

func (w countingResponse) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	}
	w.n.Add(n)
	w.c.Add(float64(n))
	return n, err
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeErr answers with the API's error body, as the hub would.
func writeErr(w http.ResponseWriter, status int, reason, msg string) {
	writeJSON(w, status, &api.Error{APIVersion: api.Version, Status: status, Reason: reason, Message: msg})
}

// redact strips credentials and the query from a URL for logs and errors.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return s
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}

// unwrapURL drops the url.Error wrapper, which repeats the unredacted URL.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func basicAuth(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// trimErr shortens an error message for a status report.
func trimErr(s string) string {
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return strings.TrimSpace(s)
}
