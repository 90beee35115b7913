package main

import (
	"context"
	"errors"
	"hash/maphash"
	"math"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Reading is one sensor value. Time is when the sensor took it; a zero Time
// means "when it arrived".
type Reading struct {
	Sensor string    `json:"sensor"`
	Value  float64   `json:"value"`
	Time   time.Time `json:"time,omitzero"`

	arrived time.Time // when a producer accepted it: processing time starts here
}

// Window is the aggregate of one sensor's readings over [Start, End).
type Window struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Count int       `json:"count"`
	Mean  float64   `json:"mean"`
	Min   float64   `json:"min"`
	Max   float64   `json:"max"`
	sum   float64
}

func (w *Window) add(v float64) {
	if w.Count == 0 || v < w.Min {
		w.Min = v
	}
	if w.Count == 0 || v > w.Max {
		w.Max = v
	}
	w.Count++
	w.sum += v
	w.Mean = w.sum / float64(w.Count)
}

// SensorAggregate is what the pipeline knows of one sensor: the window being
// filled and the last one closed.
type SensorAggregate struct {
	Current *Window `json:"current,omitempty"`
	Last    *Window `json:"last,omitempty"`
}

// Drop reasons, the "reason" label of the error counter.
const (
	ReasonOutOfRange = "out-of-range"
	ReasonLate       = "late"
	ReasonQueueFull  = "queue-full"
	ReasonMalformed  = "malformed"
	ReasonTooMany    = "too-many-sensors"
	ReasonFuture     = "future"
)

// ErrQueueFull is returned by Offer when the input queue has no room.
var ErrQueueFull = errors.New("input queue full")

// ErrStopped is returned by Submit and Offer once the pipeline is closing.
var ErrStopped = errors.New("pipeline stopped")

// Config sizes and bounds the pipeline.
type Config struct {
	Min, Max   float64       // readings outside [Min, Max] are dropped
	Window     time.Duration // tumbling window length
	Validators int           // goroutines checking readings (stage 1)
	Shards     int           // goroutines aggregating, each owning a share of the sensors (stage 2)
	Queue      int           // capacity of the input channel and of each shard's channel
	MaxSensors int           // sensors tracked at most; readings of new ones beyond it are dropped
}

// Observer receives what the pipeline does, for metrics. Every method may be
// called from several goroutines at once.
type Observer interface {
	Processed(d time.Duration) // one reading aggregated, d after it arrived
	Dropped(reason string)     // one reading dropped
	WindowClosed()
}

type nopObserver struct{}

func (nopObserver) Processed(time.Duration) {}
func (nopObserver) Dropped(string)          {}
func (nopObserver) WindowClosed()           {}

// Pipeline is a producer–consumer pipeline over buffered channels:
// producers (HTTP, UDP) put readings on the input channel; validators drop
// out-of-range values and route each reading to the shard that owns its
// sensor; each shard keeps its sensors' windows. A shard is the only writer
// of its sensors, so a reading takes no lock but the shard's own, which the
// readers of results share.
type Pipeline struct {
	cfg  Config
	obs  Observer
	now  func() time.Time
	in   chan Reading
	seed maphash.Seed

	shards  []*shard
	sensors atomic.Int64

	// closing: producers stop; in is closed once the last one left.
	mu        sync.RWMutex
	closing   bool
	producers sync.WaitGroup

	validators sync.WaitGroup
	done       chan struct{}
}

type shard struct {
	in        chan Reading
	heartbeat atomic.Int64 // unix nanos of the shard loop's last turn

	mu      sync.RWMutex
	sensors map[string]*SensorAggregate
}

// NewPipeline checks cfg and starts the pipeline's goroutines; Close stops them.
func NewPipeline(cfg Config, obs Observer, now func() time.Time) (*Pipeline, error) {
	switch {
	case cfg.Window <= 0:
		return nil, errors.New("window must be positive")
	case math.IsNaN(cfg.Min) || math.IsNaN(cfg.Max) || cfg.Min > cfg.Max:
		return nil, errors.New("min must not be above max")
	case cfg.Validators < 1 || cfg.Shards < 1 || cfg.Queue < 1 || cfg.MaxSensors < 1:
		return nil, errors.New("validators, shards, queue and max sensors must be at least 1")
	}
	if obs == nil {
		obs = nopObserver{}
	}
	if now == nil {
		now = time.Now
	}
	p := &Pipeline{cfg: cfg, obs: obs, now: now, in: make(chan Reading, cfg.Queue), seed: maphash.MakeSeed(), done: make(chan struct{})}
	var aggregators sync.WaitGroup
	for range cfg.Shards {
		s := &shard{in: make(chan Reading, cfg.Queue), sensors: map[string]*SensorAggregate{}}
		s.heartbeat.Store(now().UnixNano())
		p.shards = append(p.shards, s)
		aggregators.Add(1)
		go func() {
			defer aggregators.Done()
			p.aggregate(s)
		}()
	}
	for range cfg.Validators {
		p.validators.Add(1)
		go func() {
			defer p.validators.Done()
			p.validate()
		}()
	}
	go func() {
		p.validators.Wait()
		for _, s := range p.shards {
			close(s.in)
		}
		aggregators.Wait()
		close(p.done)
	}()
	return p, nil
}

// enter registers a producer call; false once the pipeline is closing.
func (p *Pipeline) enter() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closing {
		return false
	}
	p.producers.Add(1)
	return true
}

// Submit puts r on the input queue, waiting for room until ctx ends (the
// HTTP input: a slow pipeline slows its clients down rather than losing
// what they sent).
func (p *Pipeline) Submit(ctx context.Context, r Reading) error { return p.put(r, ctx.Done()) }

// Offer puts r on the input queue if there is room, else drops it (the UDP
// input: a datagram cannot be pushed back).
func (p *Pipeline) Offer(r Reading) error { return p.put(r, closed) }

// closed is a channel that is always ready: Offer does not wait.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// put queues r, waiting for room until done is closed.
func (p *Pipeline) put(r Reading, done <-chan struct{}) error {
	if !p.enter() {
		return ErrStopped
	}
	defer p.producers.Done()
	r.arrived = p.now()
	select {
	case p.in <- r:
		return nil
	default:
	}
	select {
	case p.in <- r:
		return nil
	case <-done:
	}
	p.obs.Dropped(ReasonQueueFull)
	return ErrQueueFull
}

// validate is stage 1: range check, then hand the reading to its shard.
func (p *Pipeline) validate() {
	for r := range p.in {
		if math.IsNaN(r.Value) || r.Value < p.cfg.Min || r.Value > p.cfg.Max {
			p.obs.Dropped(ReasonOutOfRange)
			continue
		}
		p.shardOf(r.Sensor).in <- r
	}
}

// shardOf is the shard that owns a sensor.
func (p *Pipeline) shardOf(sensor string) *shard {
	return p.shards[maphash.String(p.seed, sensor)%uint64(len(p.shards))]
}

// windowStart is the start of the tumbling window t falls in.
func (p *Pipeline) windowStart(t time.Time) time.Time { return t.Truncate(p.cfg.Window) }

// aggregate is stage 2 for one shard: add each reading to its sensor's
// window, and close windows whose end has passed even when no reading comes.
func (p *Pipeline) aggregate(s *shard) {
	tick := time.NewTicker(min(p.cfg.Window/4, time.Second))
	defer tick.Stop()
	for {
		select {
		case r, ok := <-s.in:
			if !ok {
				return
			}
			p.add(s, r)
		case <-tick.C:
			now := p.now()
			s.heartbeat.Store(now.UnixNano())
			p.closeDue(s, now)
		}
	}
}

func (p *Pipeline) add(s *shard, r Reading) {
	t := r.Time
	if t.IsZero() {
		t = r.arrived
	} else if t.Sub(r.arrived) > p.cfg.Window {
		// A sensor clock far ahead would open a window that makes every
		// correct reading after it late.
		p.obs.Dropped(ReasonFuture)
		return
	}
	start := p.windowStart(t)
	s.mu.Lock()
	a := s.sensors[r.Sensor]
	if a == nil {
		if p.sensors.Add(1) > int64(p.cfg.MaxSensors) {
			p.sensors.Add(-1)
			s.mu.Unlock()
			p.obs.Dropped(ReasonTooMany)
			return
		}
		a = &SensorAggregate{}
		s.sensors[r.Sensor] = a
	}
	switch {
	case a.Current != nil && start.Equal(a.Current.Start):
	case a.Current != nil && start.Before(a.Current.Start), a.Current == nil && a.Last != nil && !start.After(a.Last.Start):
		// Its window is closed already: it would change a published average.
		s.mu.Unlock()
		p.obs.Dropped(ReasonLate)
		return
	default:
		if a.Current != nil {
			a.Last = a.Current
			p.obs.WindowClosed()
		}
		a.Current = &Window{Start: start, End: start.Add(p.cfg.Window)}
	}
	a.Current.add(r.Value)
	s.mu.Unlock()
	p.obs.Processed(p.now().Sub(r.arrived))
}

// closeDue closes every current window of s that ended before now.
func (p *Pipeline) closeDue(s *shard, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.sensors {
		if a.Current != nil && !now.Before(a.Current.End) {
			a.Last, a.Current = a.Current, nil
			p.obs.WindowClosed()
		}
	}
}

// Sensors returns a copy of every sensor's aggregate whose name starts with prefix.
func (p *Pipeline) Sensors(prefix string) map[string]SensorAggregate {
	out := map[string]SensorAggregate{}
	for _, s := range p.shards {
		s.mu.RLock()
		for name, a := range s.sensors {
			if len(name) >= len(prefix) && name[:len(prefix)] == prefix {
				out[name] = copyAggregate(a)
			}
		}
		s.mu.RUnlock()
	}
	return out
}

// Sensor returns one sensor's aggregate.
func (p *Pipeline) Sensor(name string) (SensorAggregate, bool) {
	s := p.shardOf(name)
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.sensors[name]
	if !ok {
		return SensorAggregate{}, false
	}
	return copyAggregate(a), true
}

func copyAggregate(a *SensorAggregate) SensorAggregate {
	var c SensorAggregate
	if a.Current != nil {
		w := *a.Current
		c.Current = &w
	}
	if a.Last != nil {
		w := *a.Last
		c.Last = &w
	}
	return c
}

// Restore puts windows saved by an earlier run back (the last closed ones;
// a current window is restored only if it has not ended yet).
func (p *Pipeline) Restore(saved map[string]SensorAggregate) {
	now := p.now()
	names := make([]string, 0, len(saved))
	for n := range saved {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if p.sensors.Load() >= int64(p.cfg.MaxSensors) {
			return
		}
		a := saved[name]
		if a.Current != nil {
			a.Current.sum = a.Current.Mean * float64(a.Current.Count)
			if !now.Before(a.Current.End) {
				a.Last, a.Current = a.Current, nil
			}
		}
		s := p.shardOf(name)
		s.mu.Lock()
		if _, ok := s.sensors[name]; !ok {
			p.sensors.Add(1)
		}
		s.sensors[name] = &a
		s.mu.Unlock()
	}
}

// Healthy reports an error when a shard's loop has not turned within stale
// (it is stuck), or the pipeline is closing.
func (p *Pipeline) Healthy(stale time.Duration) error {
	p.mu.RLock()
	closing := p.closing
	p.mu.RUnlock()
	if closing {
		return ErrStopped
	}
	now := p.now()
	for i, s := range p.shards {
		if age := now.Sub(time.Unix(0, s.heartbeat.Load())); age > stale {
			return errors.New("aggregator shard " + strconv.Itoa(i) + " stuck for " + age.Round(time.Millisecond).String())
		}
	}
	return nil
}

// QueueLen is how many readings wait in the input queue.
func (p *Pipeline) QueueLen() int { return len(p.in) }

// SensorCount is how many sensors the pipeline tracks.
func (p *Pipeline) SensorCount() int { return int(p.sensors.Load()) }

// Close stops taking readings, lets every queued one through and waits for
// the stages to end, or for ctx.
func (p *Pipeline) Close(ctx context.Context) error {
	p.mu.Lock()
	already := p.closing
	p.closing = true
	p.mu.Unlock()
	if !already {
		go func() {
			p.producers.Wait()
			close(p.in)
		}()
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
