package updater

import (
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/schollz/progressbar/v3"
)

type metrics struct {
	phase     *prometheus.GaugeVec
	done      prometheus.Gauge
	total     prometheus.Gauge
	rate      prometheus.Gauge
	eta       prometheus.Gauge
	installs  *prometheus.CounterVec
	commits   prometheus.Counter
	rollbacks prometheus.Counter

	deltaPlan    *prometheus.GaugeVec
	deltaFullDL  prometheus.Gauge
	deltaFetched prometheus.Counter
	deltaRefused prometheus.Counter
	deltaFull    *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shoal_update_phase", Help: "1 for the A/B update state machine's current phase.",
		}, []string{"phase"}),
		done:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "shoal_update_download_bytes", Help: "Bytes of the image written and hashed so far."}),
		total: prometheus.NewGauge(prometheus.GaugeOpts{Name: "shoal_update_download_size_bytes", Help: "Size of the image being installed."}),
		rate:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "shoal_update_download_rate_bytes_per_second", Help: "Install throughput of the current attempt."}),
		eta:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "shoal_update_download_eta_seconds", Help: "Estimated seconds until the image is written, at the current rate."}),
		installs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_update_installs_total", Help: "Install attempts that finished, by result.",
		}, []string{"result"}),
		commits:   prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_update_commits_total", Help: "Trial boots committed."}),
		rollbacks: prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_update_rollbacks_total", Help: "Trial boots rolled back, by the gate, the operator or the bootloader."}),
		deltaPlan: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shoal_update_delta_plan_bytes",
			Help: "Bytes of the image a delta install plans to take from each source: fetch (chunks to download, uncompressed), seed (the active slot), in_place (already in the target slot).",
		}, []string{"source"}),
		deltaFullDL: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_update_delta_full_download_bytes", Help: "Bytes the full image download of the release being installed takes: what a delta install is compared with.",
		}),
		deltaFetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_update_delta_fetched_bytes_total", Help: "Bytes downloaded for installs of releases with a delta, as sent (compressed chunks, or the full image after a fallback).",
		}),
		deltaRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_update_delta_chunks_refused_total", Help: "Chunks refused because their bytes did not match their ID; each is fetched again.",
		}),
		deltaFull: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_update_delta_full_downloads_total", Help: "Installs of a release with a delta that downloaded the full image instead, by reason.",
		}, []string{"reason"}),
	}
}

// setDelta shows an install's delta plan.
func (m *metrics) setDelta(d *DeltaStatus) {
	fetch := d.Fetch
	if d.Mode == ModeFull {
		fetch = 0
	}
	m.deltaPlan.WithLabelValues("fetch").Set(float64(fetch))
	m.deltaPlan.WithLabelValues("seed").Set(float64(d.Seeded))
	m.deltaPlan.WithLabelValues("in_place").Set(float64(d.InPlace))
	m.deltaFullDL.Set(float64(d.Full))
}

func (m *metrics) setPhase(p Phase) {
	for _, q := range []Phase{PhaseIdle, PhaseDownloading, PhaseInstalled, PhaseRebooting, PhaseTrial, PhaseCommitted, PhaseRolledBack} {
		v := 0.0
		if q == p {
			v = 1
		}
		m.phase.WithLabelValues(string(q)).Set(v)
	}
}

// Collectors returns the updater's metrics for the agent's registry.
func (u *Updater) Collectors() []prometheus.Collector {
	m := u.m
	return []prometheus.Collector{m.phase, m.done, m.total, m.rate, m.eta, m.installs, m.commits, m.rollbacks,
		m.deltaPlan, m.deltaFullDL, m.deltaFetched, m.deltaRefused, m.deltaFull}
}

// Progress of the install in flight.
type Progress struct {
	Bytes int64         `json:"bytes"`
	Total int64         `json:"total"`
	Rate  float64       `json:"rate"` // bytes per second this attempt
	ETA   time.Duration `json:"eta"`
}

type progress struct {
	mu      sync.Mutex
	started time.Time
	from    int64
	cur     Progress
	active  bool
	bar     *progressbar.ProgressBar
}

func (p *progress) start(now time.Time, from, total int64, term io.Writer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.started, p.from, p.active = now, from, true
	p.cur = Progress{Bytes: from, Total: total}
	p.bar = nil
	if term != nil {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(term), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription("installing"), progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true), progressbar.OptionClearOnFinish())
		_ = p.bar.Set64(from)
	}
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active = false
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

func (p *progress) snapshot(persisted, total int64) *Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.active {
		return &Progress{Bytes: persisted, Total: total}
	}
	c := p.cur
	return &c
}

func (u *Updater) onProgress(done, total int64) {
	p := &u.prog
	p.mu.Lock()
	el := u.o.Now().Sub(p.started).Seconds()
	p.cur.Bytes, p.cur.Total = done, total
	if el > 0 {
		p.cur.Rate = float64(done-p.from) / el
		if p.cur.Rate > 0 {
			p.cur.ETA = time.Duration(float64(total-done) / p.cur.Rate * float64(time.Second))
		}
	}
	if p.bar != nil {
		_ = p.bar.Set64(done)
	}
	c := p.cur
	p.mu.Unlock()
	u.m.done.Set(float64(c.Bytes))
	u.m.total.Set(float64(c.Total))
	u.m.rate.Set(c.Rate)
	u.m.eta.Set(c.ETA.Seconds())
}
