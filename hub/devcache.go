package hub

import (
	"context"
	"sync"
	"time"

	"github.com/shoalfleet/shoal/hub/store"
)

// devCache keeps recently read devices for the mutual-TLS check, which
// otherwise reads the database on every request. It is used only on SQLite,
// where this process is the only hub: every change that matters to
// authentication (enrolment, revocation, renewal, AK registration) goes
// through this process and drops the entry at once. Several hubs on
// PostgreSQL read the database every time, so a revocation on one is seen by
// all at once.
type devCache struct {
	ttl time.Duration
	now func() time.Time
	mu  sync.Mutex
	m   map[string]cachedDevice
}

type cachedDevice struct {
	d  store.Device
	at time.Time
}

const devCacheMax = 200_000

func (c *devCache) get(ctx context.Context, st store.Store, id string) (store.Device, error) {
	if c == nil {
		return st.Device(ctx, id)
	}
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[id]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < c.ttl {
		return e.d, nil
	}
	d, err := st.Device(ctx, id)
	if err != nil {
		return d, err
	}
	c.mu.Lock()
	if len(c.m) >= devCacheMax {
		clear(c.m)
	}
	c.m[id] = cachedDevice{d, now}
	c.mu.Unlock()
	return d, nil
}

func (c *devCache) drop(id string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}
