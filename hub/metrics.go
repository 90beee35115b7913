package hub

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reports       *prometheus.CounterVec
	ingestLatency prometheus.Histogram
	dbLatency     *prometheus.HistogramVec
	enrolments    *prometheus.CounterVec
	renewals      prometheus.Counter
	attestations  *prometheus.CounterVec
	pokes         *prometheus.CounterVec
	polls         prometheus.Gauge
	authFailures  *prometheus.CounterVec
	devices       *deviceCollector
}

func newMetrics(h *Hub) *metrics {
	return &metrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_hub_reports_total", Help: "Status reports received, by result (stored, duplicate, rejected).",
		}, []string{"result"}),
		ingestLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "shoal_hub_ingest_seconds", Help: "Time to decode, validate and store one status report.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		dbLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_hub_db_seconds", Help: "Database call latency, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"op"}),
		enrolments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_hub_enrolments_total", Help: "Enrolment attempts, by result.",
		}, []string{"result"}),
		renewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_hub_cert_renewals_total", Help: "Device certificates renewed.",
		}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_hub_attestations_total", Help: "Attestations, by result (ok, failed, nonce-invalid, ak-mismatch).",
		}, []string{"result"}),
		pokes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_hub_pokes_total", Help: "Pokes made on this hub, by reason.",
		}, []string{"reason"}),
		polls: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_hub_long_polls", Help: "Devices long-polling this hub now.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_hub_auth_failures_total", Help: "Refused requests, by cause.",
		}, []string{"cause"}),
		devices: &deviceCollector{h: h, desc: prometheus.NewDesc("shoal_hub_devices",
			"Enrolled, unrevoked devices by their latest reported state (\"none\" = never reported).", []string{"state"}, nil)},
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.reports, m.ingestLatency, m.dbLatency, m.enrolments, m.renewals, m.attestations, m.pokes, m.polls, m.authFailures, m.devices}
}

// deviceCollector counts devices by state from the store at scrape time.
type deviceCollector struct {
	h    *Hub
	desc *prometheus.Desc
}

func (c *deviceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *deviceCollector) Collect(ch chan<- prometheus.Metric) {
	// Collect has no context; bound the query instead.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.h.st.CountByState(ctx)
	if err != nil {
		c.h.log.Warn("metrics: count devices", "err", err)
		return
	}
	for st, n := range counts {
		if st == "" {
			st = "none"
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), st)
	}
}
