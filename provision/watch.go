package provision

import (
	"context"
	"errors"
	"os"
	"time"
)

// WatchOptions configure Watch.
type WatchOptions struct {
	Dir      string        // the stick's mount path (agent config provision.watch)
	Interval time.Duration // how often to look; 0 means 5 s
	Apply    ApplyOptions
	// OnApply gets the results of every look that applied or refused a
	// bundle; the agent triggers a pass and reports them.
	OnApply func([]*Result, error)
}

// seenFile identifies a bundle file Watch has already handled: a file that
// stays on the stick is not applied, nor refused with a receipt, again.
type seenFile struct {
	path string
	size int64
	mod  time.Time
}

// Watch looks in o.Dir every Interval and applies the bundles there that are
// new for this device, oldest first, until ctx ends. A missing or empty
// directory (no stick) is no error; a bundle is tried once per process
// unless the file changes. It returns ctx's error.
func Watch(ctx context.Context, o WatchOptions) error {
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	seen := map[seenFile]bool{}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		rs, err := watchOnce(ctx, o, seen)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if (len(rs) > 0 || err != nil) && o.OnApply != nil {
			o.OnApply(rs, err)
		}
		t.Reset(o.Interval)
	}
}

func watchOnce(ctx context.Context, o WatchOptions, seen map[seenFile]bool) ([]*Result, error) {
	if fi, err := os.Stat(o.Dir); err != nil || !fi.IsDir() {
		return nil, nil
	}
	ps, err := Bundles(o.Dir)
	if err != nil {
		return nil, err
	}
	var out []*Result
	var errs []error
	for _, p := range ps {
		fi, err := os.Stat(p)
		if err != nil {
			continue // the stick went away
		}
		k := seenFile{p, fi.Size(), fi.ModTime()}
		if seen[k] {
			continue
		}
		if old, err := notNewer(p, o.Apply.StateDir); err != nil {
			return out, err
		} else if old {
			seen[k] = true
			continue
		}
		r, err := Apply(ctx, p, o.Apply)
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		seen[k] = true
		if errors.Is(err, ErrWrongDevice) {
			continue
		}
		out = append(out, r)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}
