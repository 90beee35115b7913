package reconcile

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestDryRunWritesNothing: what `shoal plan` runs observes the real Engine and
// plans, with zero write calls and nothing created.
func TestDryRunWritesNothing(t *testing.T) {
	e := newEnv(t, nil)
	wc := &writeCounter{Engine: e.cli}
	r, err := New(wc, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	dev := e.device(e.plainApp("web"), e.webApp("api", freePort(t), "1"))
	p, err := r.DryRun(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	if wc.n.Load() != 0 {
		t.Errorf("dry run made %d write calls", wc.n.Load())
	}
	if !hasAction(p, KindNetwork, "", "network missing") || !hasAction(p, KindCreate, "web", "new app") || !hasAction(p, KindCreate, "api", "new app") {
		t.Errorf("plan:\n%s", p)
	}
	if id, _ := e.inspect("web"); id != "" {
		t.Errorf("dry run created a container")
	}
	if _, err := json.Marshal(p); err != nil {
		t.Errorf("plan does not marshal: %v", err)
	}
}

// TestMetricsAndSummary: a pass counts itself and its actions on the given registry.
func TestMetricsAndSummary(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e := newEnv(t, func(o *Options) { o.Registerer = reg })
	dev := e.device(e.plainApp("a"), e.plainApp("b"))
	res := e.mustReconcile(dev)
	if !res.Converged() || res.Summary() != "2 apps: 2 created" {
		t.Errorf("converged %v, summary %q", res.Converged(), res.Summary())
	}
	got := gather(t, reg)
	for name, want := range map[string]float64{
		`shoal_reconcile_passes_total{result="ok"}`:    1,
		`shoal_reconcile_actions_total{kind="create"}`: 2,
		`shoal_reconcile_pass_duration_seconds_count`:  1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v (all: %v)", name, got[name], want, got)
		}
	}
}

// gather flattens a registry into "name{label=value}" -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := mf.GetName()
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}
