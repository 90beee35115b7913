package reconcile

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the shoal_reconcile_* series; registered only when Options.Registerer is set.
type metrics struct {
	passes    *prometheus.CounterVec
	actions   *prometheus.CounterVec
	rollbacks prometheus.Counter
	drift     prometheus.Counter
	duration  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_reconcile_passes_total", Help: "Reconcile passes by result (ok, failed, held, engine-error).",
		}, []string{"result"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_reconcile_actions_total", Help: "Actions applied, by kind.",
		}, []string{"kind"}),
		rollbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_reconcile_rollbacks_total", Help: "App rollouts rolled back because the new version was not healthy in time.",
		}),
		drift: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_reconcile_drift_total", Help: "Containers found changed outside Shoal (stopped, removed, altered).",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "shoal_reconcile_pass_duration_seconds", Help: "Wall time of one reconcile pass.",
			Buckets: []float64{.01, .05, .1, .5, 1, 5, 15, 60, 300},
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.passes, m.actions, m.rollbacks, m.drift, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register reconcile metrics: %w", err)
		}
	}
	return m, nil
}
