package main

import (
	"context"
	"errors"
	"math"
	"strconv"
	"sync"
	"testing"
	"time"
)

// countObserver counts what the pipeline reports.
type countObserver struct {
	mu        sync.Mutex
	processed int
	dropped   map[string]int
	closed    int
}

func (o *countObserver) Processed(time.Duration) { o.mu.Lock(); o.processed++; o.mu.Unlock() }
func (o *countObserver) Dropped(r string)        { o.mu.Lock(); o.dropped[r]++; o.mu.Unlock() }
func (o *countObserver) WindowClosed()           { o.mu.Lock(); o.closed++; o.mu.Unlock() }

// fakeClock is a settable clock; the pipeline reads it for arrivals,
// windows and heartbeats.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

var t0 = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

func testConfig() Config {
	return Config{Min: -40, Max: 125, Window: 10 * time.Second, Validators: 2, Shards: 3, Queue: 16, MaxSensors: 4}
}

// TestPipeline feeds readings through the real pipeline (every stage, its
// channels and goroutines) and checks the windows and the drops.
func TestPipeline(t *testing.T) {
	at := func(s string, v float64, sec int) Reading {
		return Reading{Sensor: s, Value: v, Time: t0.Add(time.Duration(sec) * time.Second)}
	}
	w := func(startSec, count int, mean, lo, hi float64) *Window {
		return &Window{Start: t0.Add(time.Duration(startSec) * time.Second), End: t0.Add(time.Duration(startSec+10) * time.Second), Count: count, Mean: mean, Min: lo, Max: hi}
	}
	cases := []struct {
		name     string
		readings []Reading
		want     map[string]SensorAggregate
		dropped  map[string]int
	}{
		{"one window averaged", []Reading{at("a", 20, 1), at("a", 22, 2), at("a", 27, 9)},
			map[string]SensorAggregate{"a": {Current: w(0, 3, 23, 20, 27)}}, nil},
		{"sensors kept apart", []Reading{at("a", 1, 1), at("b", 100, 1), at("a", 3, 2)},
			map[string]SensorAggregate{"a": {Current: w(0, 2, 2, 1, 3)}, "b": {Current: w(0, 1, 100, 100, 100)}}, nil},
		{"out of range dropped, bounds kept", []Reading{at("a", -40, 1), at("a", 125, 1), at("a", -40.1, 1), at("a", 125.5, 1), at("a", math.NaN(), 1)},
			map[string]SensorAggregate{"a": {Current: w(0, 2, 42.5, -40, 125)}}, map[string]int{ReasonOutOfRange: 3}},
		{"next window closes the last", []Reading{at("a", 10, 1), at("a", 20, 5), at("a", 30, 12)},
			map[string]SensorAggregate{"a": {Current: w(10, 1, 30, 30, 30), Last: w(0, 2, 15, 10, 20)}}, nil},
		{"a reading for a closed window is late", []Reading{at("a", 10, 1), at("a", 30, 12), at("a", 99, 3)},
			map[string]SensorAggregate{"a": {Current: w(10, 1, 30, 30, 30), Last: w(0, 1, 10, 10, 10)}}, map[string]int{ReasonLate: 1}},
		{"a sensor clock far ahead is refused", []Reading{at("a", 10, 1), at("a", 20, 60)},
			map[string]SensorAggregate{"a": {Current: w(0, 1, 10, 10, 10)}}, map[string]int{ReasonFuture: 1}},
		{"no time: the arrival's", []Reading{{Sensor: "a", Value: 5}},
			map[string]SensorAggregate{"a": {Current: w(0, 1, 5, 5, 5)}}, nil},
		{"sensors beyond the bound dropped", []Reading{at("a", 1, 1), at("b", 1, 1), at("c", 1, 1), at("d", 1, 1), at("e", 1, 1), at("a", 3, 2)},
			map[string]SensorAggregate{"a": {Current: w(0, 2, 2, 1, 3)}, "b": {Current: w(0, 1, 1, 1, 1)}, "c": {Current: w(0, 1, 1, 1, 1)}, "d": {Current: w(0, 1, 1, 1, 1)}},
			map[string]int{ReasonTooMany: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The aggregator's clock stays at 0:09: readings up to a
			// window ahead of it are taken, none is closed by time.
			clk := &fakeClock{t: t0.Add(9 * time.Second)}
			obs := &countObserver{dropped: map[string]int{}}
			cfg := testConfig()
			cfg.Shards = 1 // one shard keeps readings of one sensor in order, as a sensor sends them
			p, err := NewPipeline(cfg, obs, clk.now)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range tc.readings {
				if err := p.Submit(t.Context(), r); err != nil {
					t.Fatal(err)
				}
				// One at a time, so that "late" is decided in order.
				waitUntil(t, func() bool { return p.QueueLen() == 0 && obs.settled() == countOf(tc.readings, r) })
			}
			if err := p.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
			got := p.Sensors("")
			if len(got) != len(tc.want) {
				t.Fatalf("sensors %v, want %v", keys(got), keys(tc.want))
			}
			for name, want := range tc.want {
				if !sameAggregate(got[name], want) {
					t.Errorf("%s: got %s, want %s", name, show(got[name]), show(want))
				}
			}
			for reason, n := range tc.dropped {
				if obs.dropped[reason] != n {
					t.Errorf("dropped[%s] = %d, want %d (%v)", reason, obs.dropped[reason], n, obs.dropped)
				}
			}
		})
	}
}

// settled is how many readings have been processed or dropped.
func (o *countObserver) settled() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := o.processed
	for _, d := range o.dropped {
		n += d
	}
	return n
}

// countOf is how many readings of rs come up to and including r.
func countOf(rs []Reading, r Reading) int {
	for i := range rs {
		if rs[i].Sensor == r.Sensor && rs[i].Time.Equal(r.Time) && (rs[i].Value == r.Value || math.IsNaN(r.Value) && math.IsNaN(rs[i].Value)) {
			return i + 1
		}
	}
	return -1
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		<-time.After(time.Millisecond)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func sameWindow(a, b *Window) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Start.Equal(b.Start) && a.End.Equal(b.End) && a.Count == b.Count && math.Abs(a.Mean-b.Mean) < 1e-9 && a.Min == b.Min && a.Max == b.Max
}

func sameAggregate(a, b SensorAggregate) bool {
	return sameWindow(a.Current, b.Current) && sameWindow(a.Last, b.Last)
}

func show(a SensorAggregate) string {
	f := func(w *Window) string {
		if w == nil {
			return "-"
		}
		return w.Start.Format("15:04:05") + " n=" + itoa(w.Count) + " mean=" + ftoa(w.Mean) + " [" + ftoa(w.Min) + "," + ftoa(w.Max) + "]"
	}
	return "{current " + f(a.Current) + ", last " + f(a.Last) + "}"
}

// TestPipelineClosesWindowsOnTime: a window ends when its time is up even
// if its sensor falls silent.
func TestPipelineClosesWindowsOnTime(t *testing.T) {
	clk := &fakeClock{t: t0.Add(time.Second)}
	obs := &countObserver{dropped: map[string]int{}}
	p, err := NewPipeline(testConfig(), obs, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if err := p.Submit(t.Context(), Reading{Sensor: "a", Value: 7}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { a, ok := p.Sensor("a"); return ok && a.Current != nil })
	clk.set(t0.Add(10 * time.Second))
	waitUntil(t, func() bool { a, _ := p.Sensor("a"); return a.Current == nil && a.Last != nil && a.Last.Count == 1 })
	if obs.closed != 1 {
		t.Errorf("windows closed %d, want 1", obs.closed)
	}
}

// TestPipelineBackpressure: a full queue makes Offer (UDP) drop and Submit
// (HTTP) wait, then give up when its context ends; Close drains what was
// queued, and refuses more.
func TestPipelineBackpressure(t *testing.T) {
	clk := &fakeClock{t: t0}
	obs := &countObserver{dropped: map[string]int{}}
	cfg := testConfig()
	cfg.Queue, cfg.Validators, cfg.Shards = 1, 1, 1
	p, err := NewPipeline(cfg, obs, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	// Hold the one shard: its lock is what the aggregator takes per reading.
	s := p.shards[0]
	s.mu.Lock()
	// One reading held in the shard, one in the shard's channel, one with the validator, one in the input queue.
	for i := range 4 {
		if err := p.Submit(t.Context(), Reading{Sensor: "a", Value: float64(i)}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, func() bool { return i == 3 || p.QueueLen() == 0 })
	}
	if err := p.Offer(Reading{Sensor: "a", Value: 9}); !errors.Is(err, ErrQueueFull) {
		t.Errorf("Offer on a full queue: %v, want ErrQueueFull", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	if err := p.Submit(ctx, Reading{Sensor: "a", Value: 9}); !errors.Is(err, ErrQueueFull) {
		t.Errorf("Submit on a full queue: %v, want ErrQueueFull after its context", err)
	}
	cancel()
	s.mu.Unlock()
	if err := p.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if a, _ := p.Sensor("a"); a.Current == nil || a.Current.Count != 4 {
		t.Errorf("after Close: %s, want the 4 queued readings aggregated", show(a))
	}
	if obs.dropped[ReasonQueueFull] != 2 {
		t.Errorf("queue-full drops %d, want 2", obs.dropped[ReasonQueueFull])
	}
	if err := p.Submit(t.Context(), Reading{Sensor: "a", Value: 1}); !errors.Is(err, ErrStopped) {
		t.Errorf("Submit after Close: %v, want ErrStopped", err)
	}
}

// TestPipelineHealthy: a stuck shard makes the pipeline unhealthy.
func TestPipelineHealthy(t *testing.T) {
	clk := &fakeClock{t: t0}
	p, err := NewPipeline(testConfig(), nil, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if err := p.Healthy(10 * time.Second); err != nil {
		t.Fatalf("fresh pipeline: %v", err)
	}
	p.shards[1].mu.Lock() // stuck: its loop cannot turn
	clk.set(t0.Add(time.Minute))
	waitUntil(t, func() bool { return p.Healthy(10*time.Second) != nil })
	p.shards[1].mu.Unlock()
	waitUntil(t, func() bool { return p.Healthy(10*time.Second) == nil })
}

func TestNewPipelineRefuses(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Config)
	}{
		{"no window", func(c *Config) { c.Window = 0 }},
		{"min above max", func(c *Config) { c.Min, c.Max = 10, 1 }},
		{"no shards", func(c *Config) { c.Shards = 0 }},
		{"no queue", func(c *Config) { c.Queue = 0 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.edit(&cfg)
			if _, err := NewPipeline(cfg, nil, nil); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func itoa(i int) string     { return strconv.Itoa(i) }
func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
