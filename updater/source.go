package updater

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/shoalfleet/shoal/updater/delta"
)

// compression of an image stream, recognised by its magic bytes.
type compression string

const (
	compNone compression = ""
	compGzip compression = "gzip"
	compZstd compression = "zstd"
)

func sniff(head []byte) compression {
	switch {
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return compZstd
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return compGzip
	}
	return compNone
}

// redact strips credentials and the query from a URL before it reaches a log or an error.
func redact(raw string) string { return delta.Redact(raw) }

// openRaw opens the image at loc (http(s)://, file://, or a path, relative
// ones under baseDir) at byte offset off. It returns the offset it could honour
// (off, or 0 when an HTTP server ignores the Range request) and the number of
// bytes the stream will yield from there, or -1 when the source does not say.
func openRaw(ctx context.Context, client *http.Client, loc, baseDir string, off int64) (io.ReadCloser, int64, int64, error) {
	if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("image %s: %w", redact(loc), err)
		}
		if off > 0 {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
		}
		resp, err := client.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // the url.Error repeats the unredacted URL
			}
			return nil, 0, 0, fmt.Errorf("image %s: %w", redact(loc), err)
		}
		switch {
		case resp.StatusCode == http.StatusPartialContent && off > 0:
			var start int64
			if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil || start != off {
				resp.Body.Close()
				return nil, 0, 0, fmt.Errorf("image %s: Content-Range %q does not start at %d", redact(loc), resp.Header.Get("Content-Range"), off)
			}
			return resp.Body, off, resp.ContentLength, nil
		case resp.StatusCode == http.StatusOK:
			return resp.Body, 0, resp.ContentLength, nil
		default:
			resp.Body.Close()
			return nil, 0, 0, fmt.Errorf("image %s: HTTP %s", redact(loc), resp.Status)
		}
	}
	path := strings.TrimPrefix(loc, "file://")
	if !filepath.IsAbs(path) && baseDir != "" {
		path = filepath.Join(baseDir, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("image: %w", err)
	}
	if off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			return nil, 0, 0, fmt.Errorf("image %s: seek %d: %w", path, off, err)
		}
	}
	length := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		length = fi.Size() - off
	}
	return f, off, length, nil
}

// decompressed wraps a raw stream read from offset 0, decompressing it when
// its first bytes say so.
type decompressed struct {
	io.Reader
	closers []func()
	comp    compression
}

func (d *decompressed) Close() error {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	return nil
}

func newDecompressed(raw io.ReadCloser) (*decompressed, error) {
	br := bufio.NewReaderSize(raw, 64<<10)
	head, _ := br.Peek(4)
	d := &decompressed{closers: []func(){func() { raw.Close() }}, comp: sniff(head)}
	switch d.comp {
	case compZstd:
		// Bounded memory on a small device: one decoder goroutine, low-memory
		// buffers, and a window no larger than zstd's default levels use.
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(16<<20))
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("zstd: %w", err)
		}
		d.Reader = zr
		d.closers = append(d.closers, zr.Close)
	case compGzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("gzip: %w", err)
		}
		d.Reader = zr
		d.closers = append(d.closers, func() { zr.Close() })
	default:
		d.Reader = br
	}
	return d, nil
}
