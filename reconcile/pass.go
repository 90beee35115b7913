package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/shoalfleet/shoal/internal/backoff"
	"github.com/shoalfleet/shoal/spec"
)

// Reconcile runs one pass for dev: observe (retrying Engine failures with
// backoff), plan, apply. The error wraps ErrEngine when the Engine stayed
// unreachable (retry later), or joins the apps' failures; the Result is
// non-nil whenever the Engine could be observed.
func (r *Reconciler) Reconcile(ctx context.Context, dev *spec.Device) (*Result, error) {
	return r.ReconcileRepo(ctx, dev, r.o.RepoRoot)
}

// ReconcileRepo is Reconcile with image tar paths resolved in repo, the fleet
// repo tree at the commit being applied (the agent's Target.FS).
func (r *Reconciler) ReconcileRepo(ctx context.Context, dev *spec.Device, repo fs.FS) (res *Result, err error) {
	start := r.o.Now()
	defer func() {
		r.metrics.duration.Observe(r.o.Now().Sub(start).Seconds())
		result := "ok"
		switch {
		case errors.Is(err, ErrEngine):
			result = "engine-error"
		case res != nil && res.Held:
			result = "held"
		case err != nil:
			result = "failed"
		}
		r.metrics.passes.WithLabelValues(result).Inc()
	}()
	obs, err := r.observeRetry(ctx, dev)
	if err != nil {
		return nil, err
	}
	p := r.Plan(dev, obs)
	res = r.apply(ctx, dev, p, repo)
	return res, res.Err()
}

// DryRun observes and plans without writing anything: what `shoal plan` shows.
func (r *Reconciler) DryRun(ctx context.Context, dev *spec.Device) (*Plan, error) {
	obs, err := r.Observe(ctx, dev)
	if err != nil {
		return nil, err
	}
	return r.Plan(dev, obs), nil
}

// observeRetry retries Engine failures with capped exponential backoff.
func (r *Reconciler) observeRetry(ctx context.Context, dev *spec.Device) (*Observed, error) {
	b := backoff.New(r.o.RetryInitial, r.o.RetryMax, 0.2)
	for {
		obs, err := r.Observe(ctx, dev)
		if err == nil {
			return obs, nil
		}
		if !errors.Is(err, ErrEngine) || b.Failures()+1 >= r.o.RetryAttempts {
			return nil, fmt.Errorf("observe after %d attempt(s): %w", b.Failures()+1, err)
		}
		d := b.Next()
		r.log.Warn("docker engine error; retrying", "err", err, "in", d)
		if werr := backoff.Wait(ctx, d); werr != nil {
			return nil, fmt.Errorf("observe: %w (gave up: %w)", err, werr)
		}
	}
}

// Watch calls trigger, debounced, when a container of this reconciler's is
// stopped, removed, killed, paused, renamed or updated outside a pass. It
// reconnects with backoff when the Engine goes away (and triggers once on
// reconnect, since events may have been missed), and returns when ctx is done.
func (r *Reconciler) Watch(ctx context.Context, trigger func()) error {
	f := filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelManagedBy+"="+managedByValue),
		filters.Arg("label", LabelPrefix+"="+r.o.Prefix),
	)
	for _, a := range []events.Action{events.ActionDie, events.ActionStop, events.ActionDestroy, events.ActionKill,
		events.ActionPause, events.ActionRename, events.ActionUpdate, events.ActionOOM, events.ActionHealthStatusUnhealthy} {
		f.Add("event", string(a))
	}
	b := backoff.New(r.o.RetryInitial, r.o.RetryMax, 0.2)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	reconnected := false
	for {
		ectx, cancel := context.WithCancel(ctx)
		msgs, errs := r.eng.Events(ectx, events.ListOptions{Filters: f})
		if reconnected {
			timer.Reset(r.o.Debounce)
		}
	recv:
		for {
			select {
			case <-ctx.Done():
				cancel()
				return ctx.Err()
			case m := <-msgs:
				b.Reset()
				r.log.Debug("docker event", "action", m.Action, "app", m.Actor.Attributes[LabelApp])
				timer.Reset(r.o.Debounce)
			case <-timer.C:
				trigger()
			case err := <-errs:
				cancel()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				d := b.Next()
				r.log.Warn("docker events stream ended; reconnecting", "err", err, "in", d)
				if werr := waitOrFire(ctx, d, timer, trigger); werr != nil {
					return werr
				}
				reconnected = true
				break recv
			}
		}
	}
}

// waitOrFire waits d while still delivering a pending debounced trigger.
func waitOrFire(ctx context.Context, d time.Duration, timer *time.Timer, trigger func()) error {
	w := time.NewTimer(d)
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			trigger()
		case <-w.C:
			return nil
		}
	}
}
