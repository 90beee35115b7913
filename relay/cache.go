package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// cache keeps artifacts (OS releases, image tars) by their sha256 under
// cache/sha256/<hex>: fetched once from their origin, verified whole before
// they are stored, served with Range requests so devices resume.
//
// Nothing half-written is ever served: a download goes to cache/tmp/, is
// hashed as it arrives, fsynced, and renamed into place only when its sha256
// matches; cache/tmp/ is emptied at start, so a download cut by a crash is
// simply fetched again.
//
// Tampering is caught on open: each stored file's identity (inode, size,
// mtime, ctime) is remembered from the moment its hash was last checked,
// and a file whose identity moved is hashed again before a byte of it is
// served (a mismatch is logged, counted, removed and fetched again). That
// costs one fstat per request; the full hash (about a second per GiB on the
// relay's CPU) is paid only after a change. Any write through the
// filesystem moves ctime, which no user-space call can set back; what a
// disk corrupts under the filesystem is caught by the scrub, which hashes
// every stored file again every ScrubInterval. Files found at start are
// hashed before their first serve.
//
// A size limit with least-recently-used eviction; a file being fetched or
// served is pinned and never evicted.
type cache struct {
	dir    string
	limit  int64
	origin *http.Client
	log    *slog.Logger
	bg     context.Context // downloads outlive the request that started them

	mu      sync.Mutex
	items   map[string]*cacheItem
	bytes   int64
	flights map[string]*flight
	byURL   map[string]artifact
	byHash  map[string]artifact
	stores  map[string]bool // casync chunk stores releases name (chunks.go)

	upstream, served atomic.Int64
	m                *relayMetrics
}

type cacheItem struct {
	size     int64
	lastUse  time.Time
	pins     int
	verified fileID // zero until hashed
}

type fileID struct {
	ino          uint64
	size         int64
	mtime, ctime int64
}

func idOf(fi os.FileInfo) fileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	return fileID{ino: st.Ino, size: fi.Size(), mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

// artifact is what the fleet repo says of one: where it comes from, its size and digest.
type artifact struct {
	URL    string
	SHA256 string
	Size   int64 // 0 when the fleet repo does not say
}

type flight struct {
	done chan struct{}
	err  error
}

var hexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// errArtifactVerify: fetched or stored bytes do not match the sha256.
var errArtifactVerify = errors.New("artifact does not match its sha256")

func openCache(bg context.Context, dir string, limit int64, origin *http.Client, log *slog.Logger, m *relayMetrics) (*cache, error) {
	c := &cache{dir: dir, limit: limit, origin: origin, log: log, bg: bg, m: m,
		items: map[string]*cacheItem{}, flights: map[string]*flight{}, byURL: map[string]artifact{}, byHash: map[string]artifact{}}
	for _, d := range []string{c.tmpDir(), filepath.Join(dir, "sha256")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	// Whatever a crash left half-fetched goes.
	ents, err := os.ReadDir(c.tmpDir())
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	for _, e := range ents {
		os.Remove(filepath.Join(c.tmpDir(), e.Name()))
	}
	ents, err = os.ReadDir(filepath.Join(dir, "sha256"))
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !hexRE.MatchString(e.Name()) || !fi.Mode().IsRegular() {
			continue
		}
		c.items[e.Name()] = &cacheItem{size: fi.Size(), lastUse: fi.ModTime()}
		c.bytes += fi.Size()
	}
	c.gauge()
	return c, nil
}

func (c *cache) tmpDir() string         { return filepath.Join(c.dir, "tmp") }
func (c *cache) path(sha string) string { return filepath.Join(c.dir, "sha256", sha) }

func (c *cache) gauge() {
	if c.m != nil {
		c.m.cacheBytes.Set(float64(c.bytes))
		c.m.cacheItems.Set(float64(len(c.items)))
	}
}

// learn adds what a fleet repo commit names to the index. Entries of older
// commits stay: devices part way through a rollout still fetch them.
func (c *cache) learn(as []artifact) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range as {
		if !hexRE.MatchString(a.SHA256) {
			continue
		}
		if a.URL != "" {
			c.byURL[a.URL] = a
		}
		if prev, ok := c.byHash[a.SHA256]; !ok || prev.URL == "" {
			c.byHash[a.SHA256] = a
		}
	}
}

func (c *cache) lookupURL(u string) (artifact, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.byURL[u]
	return a, ok
}

func (c *cache) lookupHash(sha string) (artifact, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a, ok := c.byHash[sha]; ok {
		return a, true
	}
	if _, ok := c.items[sha]; ok {
		return artifact{SHA256: sha}, true
	}
	return artifact{}, false
}

// open returns the verified file for a, fetching it first when needed, and
// a release func the caller calls when done serving (the file is pinned
// until then).
func (c *cache) open(ctx context.Context, a artifact) (*os.File, func(), error) {
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		it := c.items[a.SHA256]
		if it != nil {
			it.pins++
			it.lastUse = time.Now()
			c.mu.Unlock()
			f, err := c.openVerified(a.SHA256, it)
			if err == nil {
				release := sync.OnceFunc(func() { c.unpin(a.SHA256) })
				c.m.cacheRequests.WithLabelValues("hit").Inc()
				return f, release, nil
			}
			c.unpin(a.SHA256)
			if !errors.Is(err, errArtifactVerify) || attempt > 0 {
				return nil, nil, err
			}
			// Tampered or rotted: it was dropped; fetch it again.
			continue
		}
		fl := c.flights[a.SHA256]
		if fl == nil {
			if a.URL == "" {
				c.mu.Unlock()
				return nil, nil, fmt.Errorf("artifact %s: not cached and no origin known", a.SHA256[:12])
			}
			fl = &flight{done: make(chan struct{})}
			c.flights[a.SHA256] = fl
			c.m.cacheRequests.WithLabelValues("miss").Inc()
			go c.fetch(a, fl)
		} else {
			c.m.cacheRequests.WithLabelValues("wait").Inc()
		}
		c.mu.Unlock()
		select {
		case <-fl.done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		if fl.err != nil {
			return nil, nil, fl.err
		}
	}
}

func (c *cache) unpin(sha string) {
	c.mu.Lock()
	if it := c.items[sha]; it != nil && it.pins > 0 {
		it.pins--
	}
	c.mu.Unlock()
}

// openVerified opens a stored file, hashing it again if its identity moved
// since it was last hashed. A mismatch removes it.
func (c *cache) openVerified(sha string, it *cacheItem) (*os.File, error) {
	f, err := os.Open(c.path(sha))
	if err != nil {
		c.forget(sha)
		return nil, fmt.Errorf("%w: %s: %v", errArtifactVerify, sha[:12], err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	id := idOf(fi)
	c.mu.Lock()
	ok := it.verified == id
	c.mu.Unlock()
	if ok {
		return f, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cache: hash %s: %w", sha[:12], err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		f.Close()
		c.m.tampered.Inc()
		c.log.Error("cached artifact does not match its sha256: removed, never served", "sha256", sha, "got", got)
		c.forget(sha)
		return nil, fmt.Errorf("%w: stored %s hashes to %s", errArtifactVerify, sha[:12], got[:12])
	}
	c.mu.Lock()
	it.verified = id
	c.mu.Unlock()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// forget removes a stored file and its entry.
func (c *cache) forget(sha string) {
	c.mu.Lock()
	if it := c.items[sha]; it != nil {
		c.bytes -= it.size
		delete(c.items, sha)
	}
	c.gauge()
	c.mu.Unlock()
	os.Remove(c.path(sha))
}

// fetch downloads a into the cache: temp file, hashed on the way, fsync,
// rename, fsync the directory; then it evicts down to the limit.
func (c *cache) fetch(a artifact, fl *flight) {
	err := c.download(a)
	c.mu.Lock()
	delete(c.flights, a.SHA256)
	fl.err = err
	c.mu.Unlock()
	close(fl.done)
	if err != nil {
		c.log.Warn("artifact fetch failed", "url", redact(a.URL), "sha256", a.SHA256, "err", err)
	} else {
		c.log.Info("artifact cached", "url", redact(a.URL), "sha256", a.SHA256)
	}
}

func (c *cache) download(a artifact) error {
	ctx, cancel := context.WithTimeout(c.bg, 6*time.Hour)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL, nil)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", redact(a.URL), err)
	}
	resp, err := c.origin.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", redact(a.URL), unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s: HTTP %s", redact(a.URL), resp.Status)
	}
	if a.Size > 0 && resp.ContentLength >= 0 && resp.ContentLength != a.Size {
		return fmt.Errorf("fetch %s: %w: %d bytes, the fleet repo says %d", redact(a.URL), errArtifactVerify, resp.ContentLength, a.Size)
	}
	tmp, err := os.CreateTemp(c.tmpDir(), "fetch-*")
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	var body io.Reader = resp.Body
	if a.Size > 0 {
		body = io.LimitReader(resp.Body, a.Size+1)
	}
	n, err := io.CopyBuffer(io.MultiWriter(tmp, h, countWriter{&c.upstream, c.m.upstreamBytes}), body, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("fetch %s: %w", redact(a.URL), err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != a.SHA256 || (a.Size > 0 && n != a.Size) {
		c.m.tampered.Inc()
		return fmt.Errorf("fetch %s: %w: got %d bytes with sha256 %s, want %s", redact(a.URL), errArtifactVerify, n, got[:12], a.SHA256[:12])
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	fi, err := tmp.Stat()
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), c.path(a.SHA256)); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(c.path(a.SHA256))); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	// The rename keeps inode, size and times: the hash just taken holds.
	c.put(a.SHA256, n, idOf(fi))
	return nil
}

// put registers a verified file and evicts down to the limit.
func (c *cache) put(sha string, size int64, id fileID) {
	c.mu.Lock()
	if old := c.items[sha]; old != nil {
		c.bytes -= old.size
	}
	c.items[sha] = &cacheItem{size: size, lastUse: time.Now(), verified: id}
	c.bytes += size
	c.evictLocked(sha)
	c.gauge()
	c.mu.Unlock()
}

// evictLocked removes least recently used files, never a pinned one nor
// keep, until the cache fits its limit or nothing more may go.
func (c *cache) evictLocked(keep string) {
	if c.limit <= 0 || c.bytes <= c.limit {
		return
	}
	type cand struct {
		sha string
		at  time.Time
	}
	var cs []cand
	for sha, it := range c.items {
		if it.pins == 0 && sha != keep {
			cs = append(cs, cand{sha, it.lastUse})
		}
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].at.Before(cs[j].at) })
	for _, x := range cs {
		if c.bytes <= c.limit {
			break
		}
		c.bytes -= c.items[x.sha].size
		delete(c.items, x.sha)
		os.Remove(c.path(x.sha))
		c.m.evictions.Inc()
		c.log.Info("artifact evicted", "sha256", x.sha)
	}
}

// scrub hashes every stored file not in use again, dropping what no longer matches.
func (c *cache) scrub() {
	c.mu.Lock()
	shas := make([]string, 0, len(c.items))
	for sha := range c.items {
		shas = append(shas, sha)
	}
	c.mu.Unlock()
	for _, sha := range shas {
		if c.bg.Err() != nil {
			return
		}
		c.mu.Lock()
		it := c.items[sha]
		if it == nil || it.pins > 0 {
			c.mu.Unlock()
			continue
		}
		it.pins++
		it.verified = fileID{}
		c.mu.Unlock()
		if f, err := c.openVerified(sha, it); err == nil {
			f.Close()
		}
		c.unpin(sha)
	}
}

// use reports the cache's use for the relay's status.
func (c *cache) use() (bytes int64, items int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes, len(c.items)
}

// writeFetchErr answers a request whose artifact could not be had: the
// origin failed (502 upstream-unavailable) or what it sent did not match
// (artifact-verify-failed). A request the device gave up on gets nothing.
func writeFetchErr(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	reason := api.ReasonUpstreamUnavailable
	if errors.Is(err, errArtifactVerify) {
		reason = api.ReasonArtifactVerify
	}
	writeErr(w, http.StatusBadGateway, reason, err.Error())
}

// serve answers a device's request for a, with Range support.
func (c *cache) serve(w http.ResponseWriter, r *http.Request, a artifact) {
	f, release, err := c.open(r.Context(), a)
	if err != nil {
		writeFetchErr(w, r, err)
		return
	}
	defer release()
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "internal", "stat cached artifact")
		return
	}
	w.Header().Set("ETag", `"sha256:`+a.SHA256+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Shoal-Artifact-Size", strconv.FormatInt(fi.Size(), 10))
	http.ServeContent(countingResponse{w, &c.served, c.m.servedBytes}, r, "", fi.ModTime(), f)
}
