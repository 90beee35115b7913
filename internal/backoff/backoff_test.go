package backoff

import (
	"context"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	tests := []struct {
		name   string
		min    time.Duration
		max    time.Duration
		jitter float64
		rand   float64
		want   []time.Duration
	}{
		{"doubles to cap", time.Second, 5 * time.Second, 0, 0,
			[]time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}},
		{"full jitter at max draw", time.Second, 8 * time.Second, 0.5, 0.999999999,
			[]time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second}},
		{"max below min", 2 * time.Second, time.Second, 0, 0, []time.Duration{2 * time.Second, 2 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New(tt.min, tt.max, tt.jitter)
			b.rand = func() float64 { return tt.rand }
			for i, w := range tt.want {
				got := b.Next()
				if d := got - w; d > time.Millisecond || d < -time.Millisecond {
					t.Fatalf("attempt %d: %v, want %v", i, got, w)
				}
			}
			b.Reset()
			if b.Failures() != 0 {
				t.Fatal("Reset did not clear failures")
			}
		})
	}
}

func TestJitterBounds(t *testing.T) {
	b := New(100*time.Millisecond, time.Second, 0.3)
	seen := map[time.Duration]bool{}
	for range 200 {
		b.Reset()
		d := b.Next()
		if d > 100*time.Millisecond || d < 70*time.Millisecond {
			t.Fatalf("delay %v outside [70ms, 100ms]", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("only %d distinct delays in 200 draws: jitter is not random", len(seen))
	}
}

func TestWaitCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Wait(ctx, time.Hour); err != context.Canceled {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
	if err := Wait(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
}
