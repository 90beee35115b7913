package delta

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// MakeOptions configure Make.
type MakeOptions struct {
	Params Params // zero: DefaultParams
	// SHA512256 makes SHA-512/256 chunk IDs (casync's default digest)
	// instead of SHA-256.
	SHA512256 bool
	// Workers compress chunks in parallel; zero: the number of CPUs.
	Workers int
	// Level is the zstd level; zero: zstd's default (3), as casync uses.
	Level zstd.EncoderLevel
}

// MakeResult is what Make wrote.
type MakeResult struct {
	Index  *Index
	SHA256 [32]byte // of the whole image
	New    int      // chunks written to the store
	Reused int      // chunks the store had already (checked)
	Stored int64    // bytes of the new .cacnk files
}

// Make cuts the image read from r into chunks, writes each one the store
// directory lacks as a zstd-compressed .cacnk file, and returns the index.
// A chunk file already in the store is checked and replaced if it is bad.
// Chunk files are written atomically and the store's file system is synced
// before Make returns, so an index written afterwards never names a chunk a
// crash lost.
func Make(ctx context.Context, r io.Reader, store string, o MakeOptions) (*MakeResult, error) {
	if o.Params == (Params{}) {
		o.Params = DefaultParams
	}
	if err := o.Params.check(); err != nil {
		return nil, err
	}
	if o.Workers <= 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.Level == 0 {
		o.Level = zstd.SpeedDefault
	}
	x := &Index{Flags: FlagsBlob, Params: o.Params}
	if o.SHA512256 {
		x.Flags |= FlagSHA512256
	}
	if err := os.MkdirAll(store, 0o755); err != nil {
		return nil, fmt.Errorf("store %s: %w", store, err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(o.Level), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	defer enc.Close()
	dec, err := NewDecoder(x)
	if err != nil {
		return nil, err
	}
	defer dec.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type job struct {
		c    Chunk
		data []byte
	}
	jobs := make(chan job, o.Workers)
	res := &MakeResult{Index: x}
	var (
		mu   sync.Mutex
		werr error
		wg   sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if werr == nil {
			werr = err
			cancel()
		}
		mu.Unlock()
	}
	for range o.Workers {
		wg.Go(func() {
			var out, scratch []byte
			for j := range jobs {
				if ctx.Err() == nil {
					n, stored, err := storeChunk(store, dec, enc, j.c, j.data, &out, &scratch)
					mu.Lock()
					if n {
						res.New++
						res.Stored += stored
					} else {
						res.Reused++
					}
					mu.Unlock()
					if err != nil {
						fail(err)
					}
				}
			}
		})
	}
	h := sha256.New()
	seen := map[ID]bool{}
	var off int64
	err = Split(io.TeeReader(r, h), o.Params, func(b []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := Chunk{Start: off, Size: int64(len(b)), ID: x.Sum(b)}
		off += c.Size
		x.Chunks = append(x.Chunks, c)
		if seen[c.ID] {
			return nil
		}
		seen[c.ID] = true
		select {
		case jobs <- job{c, append([]byte(nil), b...)}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(jobs)
	wg.Wait()
	if werr != nil {
		return nil, werr
	}
	if err != nil {
		return nil, fmt.Errorf("read image: %w", err)
	}
	if len(x.Chunks) == 0 {
		return nil, errors.New("image is empty")
	}
	copy(res.SHA256[:], h.Sum(nil))
	if err := syncFS(store); err != nil {
		return nil, err
	}
	return res, nil
}

// storeChunk writes chunk c (its bytes in data) into the store unless a good
// copy is there already; it reports whether it wrote one and its size.
func storeChunk(store string, dec *Decoder, enc *zstd.Encoder, c Chunk, data []byte, out, scratch *[]byte) (bool, int64, error) {
	path := filepath.Join(store, filepath.FromSlash(ChunkPath(c.ID)))
	if have, err := os.ReadFile(path); err == nil {
		if _, err := dec.Decode(c, have, *scratch); err == nil {
			return false, 0, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, 0, fmt.Errorf("store %s: %w", store, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, 0, fmt.Errorf("store %s: %w", store, err)
	}
	*out = enc.EncodeAll(data, (*out)[:0])
	// Temp file and rename, so a reader never sees half a chunk; the
	// store's file system is synced once at the end, not per chunk.
	f, err := os.CreateTemp(filepath.Dir(path), ".cacnk-*")
	if err != nil {
		return false, 0, fmt.Errorf("store %s: %w", store, err)
	}
	_, err = f.Write(*out)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return false, 0, fmt.Errorf("store %s: chunk %s: %w", store, c.ID, err)
	}
	return true, int64(len(*out)), nil
}

// syncFS flushes the file system holding dir (syncfs(2)): one call for every
// chunk file, instead of thousands of fsyncs.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("store %s: syncfs: %w", dir, err)
	}
	return nil
}
