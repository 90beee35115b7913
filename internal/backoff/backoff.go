// Package backoff computes retry delays that grow exponentially, are capped,
// carry jitter so that a fleet does not retry in lockstep, and reset after a
// success.
//
// Any package with a retry loop may import it.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the delay state of one retry loop. The zero value is not usable; use New.
// It is not safe for concurrent use.
type Backoff struct {
	min, max time.Duration
	jitter   float64 // fraction of the delay randomised, in [0, 1]
	n        int
	rand     func() float64
}

// New returns a Backoff starting at min, doubling up to max, with the given jitter fraction.
func New(min, max time.Duration, jitter float64) *Backoff {
	if min <= 0 {
		min = time.Second
	}
	if max < min {
		max = min
	}
	if jitter < 0 {
		jitter = 0
	}
	if jitter > 1 {
		jitter = 1
	}
	return &Backoff{min: min, max: max, jitter: jitter, rand: rand.Float64}
}

// Next returns the delay before the next attempt and counts one failure.
func (b *Backoff) Next() time.Duration {
	d := b.min
	for i := 0; i < b.n && d < b.max; i++ {
		d *= 2
	}
	if d > b.max {
		d = b.max
	}
	b.n++
	return Jitter(d, b.jitter, b.rand)
}

// Failures returns how many failures have been counted since the last Reset.
func (b *Backoff) Failures() int { return b.n }

// Reset starts over at the minimum delay; call it after a success.
func (b *Backoff) Reset() { b.n = 0 }

// Jitter returns d shortened by up to frac of itself, at random (r returns [0,1)).
// Shortening keeps the cap a true upper bound.
func Jitter(d time.Duration, frac float64, r func() float64) time.Duration {
	if frac <= 0 || d <= 0 {
		return d
	}
	if r == nil {
		r = rand.Float64
	}
	return d - time.Duration(frac*r()*float64(d))
}

// Wait waits for d or until ctx is done, returning ctx.Err() in that case.
func Wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
