package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// Chunks of the casync chunk stores that releases name (a delta's store:
// STORE/<4 hex>/<64 hex>.cacnk) are cached like any artifact, by the sha256
// of the stored file, under cache/sha256/. The fleet repo cannot say that
// digest (a chunk is named by the digest of its uncompressed bytes), so a
// chunk is checked when it is fetched: decompressed, its SHA-256 or
// SHA-512/256 must be its name. cache/chunks/<id> is a symlink to the file's
// digest, so a restarted relay still finds the chunks it holds. Devices check
// every chunk again.

// chunkPathRE is a chunk's path inside its store.
var chunkPathRE = regexp.MustCompile(`^([0-9a-f]{4})/([0-9a-f]{64})\.cacnk$`)

// maxChunkFile bounds a chunk file the relay fetches: casync's largest chunk
// is 128 MiB before compression; real ones are a few hundred KiB.
const maxChunkFile = 130 << 20

func (c *cache) chunkDir() string { return filepath.Join(c.dir, "chunks") }

// learnStores adds the chunk stores a fleet repo commit names (URL prefixes).
func (c *cache) learnStores(stores []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stores == nil {
		c.stores = map[string]bool{}
	}
	for _, s := range stores {
		c.stores[strings.TrimSuffix(s, "/")+"/"] = true
	}
}

// lookupChunk reports whether u is a chunk of a known store, and returns it
// as an artifact: with the stored file's digest when the relay holds it,
// else with none (fetchChunk gets it).
func (c *cache) lookupChunk(u string) (artifact, string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var id string
	for s := range c.stores {
		if rest, ok := strings.CutPrefix(u, s); ok {
			if m := chunkPathRE.FindStringSubmatch(rest); m != nil && m[2][:4] == m[1] {
				id = m[2]
				break
			}
		}
	}
	if id == "" {
		return artifact{}, "", false
	}
	if a, ok := c.byURL[u]; ok && c.items[a.SHA256] != nil {
		return a, id, true
	}
	if sha, err := os.Readlink(filepath.Join(c.chunkDir(), id)); err == nil && hexRE.MatchString(sha) && c.items[sha] != nil {
		a := artifact{URL: u, SHA256: sha, Size: c.items[sha].size}
		c.byURL[u] = a
		return a, id, true
	}
	return artifact{URL: u}, id, true
}

// fetchChunk fetches chunk id from u into the cache, once however many
// devices ask at the same time, and returns it as an artifact.
func (c *cache) fetchChunk(ctx context.Context, u, id string) (artifact, error) {
	key := "chunk:" + id
	c.mu.Lock()
	fl := c.flights[key]
	if fl == nil {
		fl = &flight{done: make(chan struct{})}
		c.flights[key] = fl
		c.m.cacheRequests.WithLabelValues("miss").Inc()
		go func() {
			err := c.downloadChunk(u, id)
			c.mu.Lock()
			delete(c.flights, key)
			fl.err = err
			c.mu.Unlock()
			close(fl.done)
			if err != nil {
				c.log.Warn("chunk fetch failed", "url", redact(u), "err", err)
			}
		}()
	} else {
		c.m.cacheRequests.WithLabelValues("wait").Inc()
	}
	c.mu.Unlock()
	select {
	case <-fl.done:
	case <-ctx.Done():
		return artifact{}, ctx.Err()
	}
	if fl.err != nil {
		return artifact{}, fl.err
	}
	c.mu.Lock()
	a, ok := c.byURL[u]
	c.mu.Unlock()
	if !ok {
		return artifact{}, fmt.Errorf("chunk %s: fetched but not cached", id[:12])
	}
	return a, nil
}

// downloadChunk fetches, checks and stores one chunk file.
func (c *cache) downloadChunk(u, id string) error {
	ctx, cancel := context.WithTimeout(c.bg, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", redact(u), err)
	}
	resp, err := c.origin.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", redact(u), unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s: HTTP %s", redact(u), resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxChunkFile+1))
	if err != nil {
		return fmt.Errorf("fetch %s: %w", redact(u), err)
	}
	c.upstream.Add(int64(len(b)))
	c.m.upstreamBytes.Add(float64(len(b)))
	if len(b) > maxChunkFile {
		return fmt.Errorf("fetch %s: %w: more than %d bytes", redact(u), errArtifactVerify, maxChunkFile)
	}
	if err := checkChunk(b, id); err != nil {
		c.m.tampered.Inc()
		return fmt.Errorf("fetch %s: %w: %v", redact(u), errArtifactVerify, err)
	}
	sum := sha256.Sum256(b)
	sha := hex.EncodeToString(sum[:])
	tmp, err := os.CreateTemp(c.tmpDir(), "chunk-*")
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	fi, err := tmp.Stat()
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), c.path(sha)); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(c.path(sha))); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	c.put(sha, int64(len(b)), idOf(fi))
	// The name to the file's digest: a temp symlink renamed over the old.
	if err := os.MkdirAll(c.chunkDir(), 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	link := filepath.Join(c.chunkDir(), id)
	tl := link + ".tmp"
	os.Remove(tl)
	if err := os.Symlink(sha, tl); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := os.Rename(tl, link); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := atomicfile.SyncDir(c.chunkDir()); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	c.mu.Lock()
	c.byURL[u] = artifact{URL: u, SHA256: sha, Size: int64(len(b))}
	c.mu.Unlock()
	return nil
}

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// chunkDecoder decompresses chunk files: output bounded as casync bounds a
// chunk, one goroutine, low memory; made on first use.
var chunkDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(128<<20))
})

// checkChunk reports whether stored, a zstd-compressed chunk file, holds
// bytes whose SHA-256 or SHA-512/256 (casync's two digests) is id.
func checkChunk(stored []byte, id string) error {
	if !bytes.HasPrefix(stored, zstdMagic) {
		return fmt.Errorf("chunk %s: not zstd", id[:12])
	}
	zd, err := chunkDecoder()
	if err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	data, err := zd.DecodeAll(stored, nil)
	if err != nil {
		return fmt.Errorf("chunk %s: %v", id[:12], err)
	}
	s256, s512 := sha256.Sum256(data), sha512.Sum512_256(data)
	if hex.EncodeToString(s256[:]) != id && hex.EncodeToString(s512[:]) != id {
		return fmt.Errorf("chunk %s: its bytes have another digest", id[:12])
	}
	return nil
}
