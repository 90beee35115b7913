package delta

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Errors by category, checked with errors.Is.
var (
	// ErrNotFound is a chunk the store does not have.
	ErrNotFound = errors.New("chunk not in store")
	// ErrChunk is a chunk whose bytes are not what its ID says: corrupt in
	// the store or on the way.
	ErrChunk = errors.New("chunk does not match its id")
)

// Store hands out a chunk's stored bytes (a .cacnk file: zstd-compressed).
// Implementations: DirStore, HTTPStore.
type Store interface {
	// Chunk returns the stored bytes of chunk id, or an error wrapping
	// ErrNotFound. Its bytes are checked by the caller.
	Chunk(ctx context.Context, id ID) ([]byte, error)
	// String names the store for logs and errors, without credentials.
	String() string
}

// ChunkPath is where a store keeps chunk id: casync's layout,
// <first four hex digits>/<hex id>.cacnk.
func ChunkPath(id ID) string {
	s := id.String()
	return s[:4] + "/" + s + ".cacnk"
}

// maxStored bounds a stored chunk of at most n bytes: zstd's worst case for
// incompressible data is a few bytes per 128 KiB block.
func maxStored(n uint64) int64 { return int64(n + n/64 + 4096) }

// DirStore is a chunk store in a local directory: a release directory, a
// USB stick, a relay's cache.
type DirStore string

// Chunk implements Store.
func (d DirStore) Chunk(ctx context.Context, id ID) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(string(d), filepath.FromSlash(ChunkPath(id))))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store %s: chunk %s: %w", d, id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", d, err)
	}
	return b, nil
}

func (d DirStore) String() string { return string(d) }

// HTTPStore is a chunk store served over HTTP(S): chunk id is at
// <URL>/<ChunkPath(id)>, as casync's HTTP protocol helper fetches it.
type HTTPStore struct {
	URL    string
	Client *http.Client // nil: http.DefaultClient
	// MaxChunk bounds a response body (a chunk's size before compression).
	MaxChunk uint64
}

// Chunk implements Store.
func (h *HTTPStore) Chunk(ctx context.Context, id ID) ([]byte, error) {
	c := h.Client
	if c == nil {
		c = http.DefaultClient
	}
	u := strings.TrimSuffix(h.URL, "/") + "/" + ChunkPath(id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", h, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // it repeats the URL, credentials and all
		}
		return nil, fmt.Errorf("store %s: chunk %s: %w", h, id, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return nil, fmt.Errorf("store %s: chunk %s: %w", h, id, ErrNotFound)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("store %s: chunk %s: HTTP %s", h, id, resp.Status)
	}
	limit := maxStored(max(h.MaxChunk, DefaultParams.Max))
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("store %s: chunk %s: %w", h, id, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("store %s: chunk %s: %w: more than %d bytes stored", h, id, ErrChunk, limit)
	}
	return b, nil
}

func (h *HTTPStore) String() string { return Redact(h.URL) }

// Redact strips credentials and the query from a URL for logs and errors.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return raw
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// Decoder decompresses and checks stored chunks of one index. It decodes a
// chunk into a buffer of the size the index gives and refuses more, so a bad
// store cannot make a device allocate more than its chunks need.
type Decoder struct {
	x  *Index
	zd *zstd.Decoder
}

// NewDecoder returns a Decoder for x's chunks. Close releases it.
func NewDecoder(x *Index) (*Decoder, error) {
	zd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(true),
		zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderMaxWindow(chunkLimitMax))
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return &Decoder{x: x, zd: zd}, nil
}

// Close releases the decoder.
func (d *Decoder) Close() { d.zd.Close() }

// Decode decompresses stored, the stored bytes of chunk c, into dst (reusing
// its capacity when it holds c) and checks that they have c's size and ID.
// Errors wrap ErrChunk.
func (d *Decoder) Decode(c Chunk, stored, dst []byte) ([]byte, error) {
	if int64(cap(dst)) < c.Size {
		dst = make([]byte, 0, c.Size)
	}
	dst = dst[:0:c.Size]
	var out []byte
	var err error
	switch {
	case bytes.HasPrefix(stored, zstdMagic):
		out, err = d.zd.DecodeAll(stored, dst[:0])
		if err == nil && int64(len(out)) != c.Size {
			err = fmt.Errorf("%d bytes, the index says %d", len(out), c.Size)
		}
	case bytes.HasPrefix(stored, []byte{0x1f, 0x8b}): // casync make --compression=gzip
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(stored)); err == nil {
			buf := bytes.NewBuffer(dst[:0])
			var n int64
			n, err = io.Copy(buf, io.LimitReader(zr, c.Size+1))
			out = buf.Bytes()
			if err == nil && n != c.Size {
				err = fmt.Errorf("%d bytes or more, the index says %d", n, c.Size)
			}
		}
	default:
		err = errors.New("not zstd or gzip (casync's xz is not supported)")
	}
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w: %v", c.ID, ErrChunk, err)
	}
	if got := d.x.Sum(out); got != c.ID {
		return nil, fmt.Errorf("chunk %s: %w: its %s is %s", c.ID, ErrChunk, d.x.Digest(), got)
	}
	return out, nil
}
