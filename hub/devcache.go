package hub

import (
	"context"
	"sync"
	"time"

	"github.com/shoalfleet/shoal/hub/store"
)

// devCache keeps recently read devices for the mutual-TLS check, which
// otherwise reads the database on every request. Every change that matters
// to authentication (enrolment, revocation, renewal, AK registration) drops
// the entry:
//
//   - On SQLite this process is the only hub, and it drops the entry itself
//     the moment it makes the change.
//   - On PostgreSQL several hubs share the database, so the store announces
//     each such change to every hub (LISTEN/NOTIFY, see deviceWatcher) and
//     each hub drops the entry when told. The cache is used only while that
//     announcement channel is connected: before it is, and from the moment it
//     fails until it is back and the cache emptied, every check reads the
//     database.
//
// Status ingest does not depend on the cache for safety: the statement that
// stores a report checks revocation in the database.
type devCache struct {
	ttl time.Duration
	now func() time.Time
	mu  sync.Mutex
	m   map[string]cachedDevice
	// gen moves on at every drop and reset. A read from the database is
	// cached only if gen did not move while it ran: otherwise a change may
	// have been announced (and its drop found nothing to drop) between the
	// read and the caching, and the read may be stale.
	gen uint64
	// live is false while announcements of changes may be missed; the
	// cache then reads through and keeps nothing.
	live bool
}

type cachedDevice struct {
	d  store.Device
	at time.Time
}

const devCacheMax = 200_000

// newDevCache returns a cache; live says whether it may keep entries from
// the start (SQLite) or only once the change feed is connected (PostgreSQL).
func newDevCache(ttl time.Duration, now func() time.Time, live bool) *devCache {
	return &devCache{ttl: ttl, now: now, m: map[string]cachedDevice{}, live: live}
}

func (c *devCache) get(ctx context.Context, st store.Store, id string) (store.Device, error) {
	if c == nil {
		return st.Device(ctx, id)
	}
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[id]
	live, gen := c.live, c.gen
	c.mu.Unlock()
	if ok && live && now.Sub(e.at) < c.ttl {
		return e.d, nil
	}
	d, err := st.Device(ctx, id)
	if err != nil || !live {
		return d, err
	}
	c.mu.Lock()
	if c.live && c.gen == gen {
		if len(c.m) >= devCacheMax {
			clear(c.m)
		}
		c.m[id] = cachedDevice{d, now}
	}
	c.mu.Unlock()
	return d, nil
}

func (c *devCache) drop(id string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.m, id)
	c.gen++
	c.mu.Unlock()
}

// setLive empties the cache and says whether it may keep entries from now on.
func (c *devCache) setLive(live bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	clear(c.m)
	c.gen++
	c.live = live
	c.mu.Unlock()
}

// deviceWatcher is implemented by stores that several hubs share
// (PostgreSQL): WatchDevices calls ready once it receives every later
// announcement, then changed with the ID of each device whose enrolment,
// revocation, certificate or AK any hub changes, until ctx ends or the
// connection fails (it returns the error then).
type deviceWatcher interface {
	WatchDevices(ctx context.Context, ready func(), changed func(id string)) error
}

// watchDevices keeps the cache in step with changes made by every hub on the
// shared database, reconnecting with a pause after a failure. While it is not
// connected the cache is bypassed.
func (h *Hub) watchDevices(ctx context.Context, w deviceWatcher) {
	for {
		err := w.WatchDevices(ctx, func() { h.devs.setLive(true) }, h.devs.drop)
		h.devs.setLive(false)
		if ctx.Err() != nil {
			return
		}
		h.log.Warn("device change feed failed; reading devices from the database until it is back", "err", err)
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
