package hub

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/rollout"
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

	rolloutGrants   *prometheus.CounterVec
	rolloutRefused  *prometheus.CounterVec
	rolloutAdmitted prometheus.Counter
	rolloutReports  prometheus.Counter
	rolloutLeader   prometheus.Gauge
	rolloutStep     prometheus.Histogram
	rollout         *rolloutCollector
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
		rolloutGrants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_hub_rollout_grant_requests_total",
			Help: "Grant requests answered by this hub, by result (granted, granted-again, waiting, refused, no-rollout, bad-request).",
		}, []string{"result"}),
		rolloutRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_hub_rollout_refusals_total",
			Help: "Devices refused and recorded, by reason (not-target: asked for another commit; ungranted: reported a commit never granted).",
		}, []string{"reason"}),
		rolloutAdmitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_hub_rollout_admitted_total", Help: "Devices the rollout controller on this hub admitted (and poked).",
		}),
		rolloutReports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_hub_rollout_reports_total", Help: "Latest reports the rollout controller on this hub read and judged.",
		}),
		rolloutLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_hub_rollout_leader", Help: "1 while this hub holds the rollout lease and decides rollouts.",
		}),
		rolloutStep: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "shoal_hub_rollout_step_seconds", Help: "Time of one rollout controller step.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		rollout: newRolloutCollector(h),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.reports, m.ingestLatency, m.dbLatency, m.enrolments, m.renewals, m.attestations, m.pokes, m.polls, m.authFailures, m.devices,
		m.rolloutGrants, m.rolloutRefused, m.rolloutAdmitted, m.rolloutReports, m.rolloutLeader, m.rolloutStep, m.rollout}
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

// rolloutCollector reports the current rollout from the store at scrape time.
type rolloutCollector struct {
	h                            *Hub
	status, devices, gates, bake *prometheus.Desc
}

func newRolloutCollector(h *Hub) *rolloutCollector {
	return &rolloutCollector{h: h,
		status: prometheus.NewDesc("shoal_hub_rollout_status",
			"1 for the status of the newest rollout (running, paused, halted, aborted, done, superseded).", []string{"commit", "status"}, nil),
		devices: prometheus.NewDesc("shoal_hub_rollout_wave_devices",
			"Devices of each wave of the newest rollout, by verdict (healthy, failed, pending).", []string{"track", "wave", "verdict"}, nil),
		gates: prometheus.NewDesc("shoal_hub_rollout_gate_failures",
			"Devices of the newest rollout that failed each health gate.", []string{"gate"}, nil),
		bake: prometheus.NewDesc("shoal_hub_rollout_bake_remaining_seconds",
			"Bake time left of each baking wave of the newest rollout.", []string{"track", "wave"}, nil),
	}
}

func (c *rolloutCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.status
	ch <- c.devices
	ch <- c.gates
	ch <- c.bake
}

func (c *rolloutCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := c.h.RolloutView(ctx, "", false)
	if err != nil {
		return // no rollout yet, or the store is down (the health check says so)
	}
	ch <- prometheus.MustNewConstMetric(c.status, prometheus.GaugeValue, 1, v.Commit, v.Status)
	for _, g := range rollout.Gates {
		ch <- prometheus.MustNewConstMetric(c.gates, prometheus.GaugeValue, float64(v.Counts.FailedGates[g]), g)
	}
	for _, t := range v.Tracks {
		for _, w := range t.Waves {
			for verdict, n := range map[string]int{"healthy": w.Counts.Healthy, "failed": w.Counts.Failed, "pending": w.Counts.Pending} {
				ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, float64(n), t.Name, w.Name, verdict)
			}
			if w.State == "baking" {
				ch <- prometheus.MustNewConstMetric(c.bake, prometheus.GaugeValue, w.BakeLeft.Seconds(), t.Name, w.Name)
			}
		}
	}
}
