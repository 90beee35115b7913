package provision

import (
	"context"
	"os"
	"time"
)

// WatchOptions configure Watch.
type WatchOptions struct {
	Dir      string        // the stick's mount path (agent config bundle_dir)
	Interval time.Duration // how often to look; 0 means 5 s
	Apply    ApplyOptions
	// OnApply gets the results of every pass that found a new bundle; the
	// agent triggers a pass and copies them into status.
	OnApply func([]*Result, error)
}

// Watch looks in o.Dir every Interval and applies the bundles there that are
// new for this device, until ctx ends. A missing or empty directory (no
// stick) is no error. It returns ctx's error.
func Watch(ctx context.Context, o WatchOptions) error {
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		if fi, err := os.Stat(o.Dir); err == nil && fi.IsDir() {
			rs, err := ApplyPath(ctx, o.Dir, o.Apply)
			if (len(rs) > 0 || err != nil) && o.OnApply != nil {
				o.OnApply(rs, err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
