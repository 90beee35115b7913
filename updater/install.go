package updater

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/shoalfleet/shoal/spec"
)

// checkpoint is a verified prefix of the slot: Offset bytes are written and
// fsynced, and Hash is the sha256 state over them, so a resumed install goes on
// from there without reading the prefix again.
type checkpoint struct {
	Offset int64  `json:"offset"`
	Hash   []byte `json:"hash,omitempty"` // sha256 state (encoding.BinaryMarshaler)
}

// writer streams an image into a slot. It is one install attempt.
type writer struct {
	slot     string
	rel      *spec.Release
	bufSize  int
	every    int64                   // bytes between checkpoints
	save     func(checkpoint) error  // persists a checkpoint
	fault    func(point string)      // test hook: a power cut may happen here
	progress func(done, total int64) // called after every buffer
}

// errTruncated is a stream that ended before the release's size: retry, resuming.
var errTruncated = errors.New("image stream ended early")

// write copies r (positioned at start.Offset of the uncompressed image) into
// the slot, hashing as it goes, checking chunk digests when the release has a
// manifest, and checkpointing every w.every bytes. After the last byte it
// compares the digest, fsyncs, drops the slot's pages from the cache and reads
// the slot back to verify what the medium holds.
func (w *writer) write(ctx context.Context, r io.Reader, start checkpoint) (err error) {
	f, err := os.OpenFile(w.slot, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open slot %s: %w", w.slot, err)
	}
	defer f.Close()

	h := sha256.New()
	if start.Offset > 0 {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(start.Hash); err != nil {
			return fmt.Errorf("resume at %d: hash state: %w", start.Offset, err)
		}
	}
	var chunkSize int64
	var ch hash.Hash
	if w.rel.Chunks != nil {
		chunkSize, ch = w.rel.Chunks.Size, sha256.New()
		if start.Offset%chunkSize != 0 {
			return fmt.Errorf("resume at %d: not a chunk boundary", start.Offset)
		}
	}
	off, last, saved := start.Offset, start, start.Offset
	size := w.rel.Size
	buf := make([]byte, w.bufSize)

	// On an error the prefix up to the last safe point is kept for a resume.
	defer func() {
		if err == nil || errors.Is(err, ErrVerify) {
			return
		}
		if f.Sync() == nil && last.Offset > saved {
			if serr := w.save(last); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}()

	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		want := int64(len(buf))
		if chunkSize > 0 {
			want = min(want, chunkSize-off%chunkSize) // never read across a chunk boundary
		}
		want = min(want, size-off)
		n, rerr := io.ReadFull(r, buf[:want])
		if n > 0 {
			p := buf[:n]
			h.Write(p)
			if ch != nil {
				ch.Write(p)
			}
			if _, err := f.WriteAt(p, off); err != nil {
				return fmt.Errorf("write slot %s at %d: %w", w.slot, off, err)
			}
			off += int64(n)
			if ch != nil && (off%chunkSize == 0 || off == size) {
				i := (off - 1) / chunkSize
				if got := hex.EncodeToString(ch.Sum(nil)); !strings.EqualFold(got, w.rel.Chunks.SHA256[i]) {
					return fmt.Errorf("%w: chunk %d (bytes %d-%d) has sha256 %s, manifest says %s", ErrVerify, i, i*chunkSize, off, got, w.rel.Chunks.SHA256[i])
				}
				ch.Reset()
			}
			safe := ch == nil || off%chunkSize == 0
			if safe {
				st, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
				cur := checkpoint{Offset: off, Hash: st}
				if off-saved >= w.every && off < size {
					if err := f.Sync(); err != nil {
						return fmt.Errorf("sync slot %s: %w", w.slot, err)
					}
					if err := w.save(cur); err != nil {
						return err
					}
					saved = off
					w.fault("slot-write")
				}
				last = cur
			}
			if w.progress != nil {
				w.progress(off, size)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			if off < size {
				return fmt.Errorf("%w at %d of %d bytes", errTruncated, off, size)
			}
		} else if rerr != nil {
			return fmt.Errorf("read image at %d: %w", off, rerr)
		}
	}
	// The image must end exactly at its size.
	var one [1]byte
	if n, _ := r.Read(one[:]); n > 0 {
		return fmt.Errorf("%w: image is longer than its size %d", ErrVerify, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, w.rel.SHA256) {
		return fmt.Errorf("%w: image sha256 %s, release says %s", ErrVerify, got, w.rel.SHA256)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync slot %s: %w", w.slot, err)
	}
	w.fault("slot-synced")
	return w.readBack(ctx, f, buf)
}

// readBack reads the slot's first Size bytes from the medium (its cached pages
// dropped first) and compares their sha256 with the release.
func (w *writer) readBack(ctx context.Context, f *os.File, buf []byte) error {
	_ = unix.Fadvise(int(f.Fd()), 0, w.rel.Size, unix.FADV_DONTNEED) // best effort: not every device supports it
	h := sha256.New()
	var off int64
	for off < w.rel.Size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(len(buf)), w.rel.Size-off)
		m, err := f.ReadAt(buf[:n], off)
		h.Write(buf[:m])
		off += int64(m)
		if err != nil && !(err == io.EOF && off == w.rel.Size) {
			return fmt.Errorf("%w: read back slot %s at %d: %v", ErrVerify, w.slot, off, err)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, w.rel.SHA256) {
		return fmt.Errorf("%w: slot %s reads back sha256 %s, release says %s", ErrVerify, w.slot, got, w.rel.SHA256)
	}
	return nil
}
