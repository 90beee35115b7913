package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the agent's Prometheus series, on a registry of its own.
type metrics struct {
	reg         *prometheus.Registry
	passSeconds prometheus.Histogram
	passes      *prometheus.CounterVec
	lastSuccess prometheus.Gauge
	commit      *prometheus.GaugeVec
	errors      *prometheus.CounterVec
	outboxDepth prometheus.Gauge
	outboxDrops prometheus.Counter
	drops       uint64 // outboxDrops' value: the outbox's own count, which persists
	holding     prometheus.Gauge
	grants      *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shoal_agent_pass_duration_seconds",
			Help:    "Time one agent pass took: fetch, render, stages, status.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_agent_passes_total",
			Help: "Passes by resulting device state (converged, degraded, stalled, waiting).",
		}, []string{"state"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_agent_last_success_timestamp_seconds",
			Help: "Unix time of the last pass that ended converged.",
		}),
		commit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shoal_agent_commit_info",
			Help: "1 for the applied commit and spec hash.",
		}, []string{"commit", "spec_hash"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_agent_errors_total",
			Help: "Errors by pass stage: fetch, render, a stage's name, state, outbox, deliver.",
		}, []string{"stage"}),
		outboxDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_agent_outbox_depth",
			Help: "Status reports queued for the hub.",
		}),
		outboxDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_agent_outbox_dropped_total",
			Help: "Status reports dropped because the outbox was full, over the agent's life (kept across restarts).",
		}),
		holding: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_agent_rollout_holding",
			Help: "1 while the agent holds a newer commit back, waiting for the hub's grant (see its status: reason and wave).",
		}),
		grants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_agent_rollout_grant_requests_total",
			Help: "Rollout grant requests by outcome: granted, waiting, refused, invalid (forged or replayed), unreachable.",
		}, []string{"outcome"}),
	}
	m.reg.MustRegister(m.passSeconds, m.passes, m.lastSuccess, m.commit, m.errors, m.outboxDepth, m.outboxDrops, m.holding, m.grants,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// setDropped moves the dropped-reports counter up to the outbox's count.
func (m *metrics) setDropped(n uint64) {
	if n > m.drops {
		m.outboxDrops.Add(float64(n - m.drops))
		m.drops = n
	}
}

func (m *metrics) setCommit(commit, hash string) {
	m.commit.Reset()
	if commit != "" {
		m.commit.WithLabelValues(commit, hash).Set(1)
	}
}
