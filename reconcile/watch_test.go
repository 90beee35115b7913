package reconcile

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
)

// eventsEngine hands Watch channels the test feeds; each Events call is a new subscription.
type eventsEngine struct {
	Engine
	subs chan chan events.Message
	errs chan chan error
}

func (f *eventsEngine) Events(ctx context.Context, _ events.ListOptions) (<-chan events.Message, <-chan error) {
	m, e := make(chan events.Message), make(chan error, 1)
	f.subs <- m
	f.errs <- e
	return m, e
}

// TestWatchDebounceAndReconnect: a burst of events gives one trigger; a broken
// stream is re-subscribed and triggers once, since events may have been missed.
func TestWatchDebounceAndReconnect(t *testing.T) {
	eng := &eventsEngine{subs: make(chan chan events.Message, 4), errs: make(chan chan error, 4)}
	r, err := New(eng, Options{Debounce: 50 * time.Millisecond, RetryInitial: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	fired := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Watch(ctx, func() { n.Add(1); fired <- struct{}{} })
	}()
	msgs, errs := <-eng.subs, <-eng.errs
	for range 5 {
		msgs <- events.Message{Action: events.ActionStop}
	}
	waitFire(t, fired)
	// One more event after the burst settled: a second trigger, so the burst gave exactly one.
	msgs <- events.Message{Action: events.ActionDie}
	waitFire(t, fired)
	if got := n.Load(); got != 2 {
		t.Fatalf("%d triggers for a burst and a single event, want 2", got)
	}
	errs <- errors.New("daemon restarted")
	<-eng.subs
	<-eng.errs
	waitFire(t, fired)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Watch returned %v, want context.Canceled", err)
	}
}

func waitFire(t *testing.T, fired <-chan struct{}) {
	t.Helper()
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("no trigger")
	}
}
