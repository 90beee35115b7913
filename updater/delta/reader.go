package delta

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// FetchOptions configure how a Reader fetches the chunks its plan lacks.
type FetchOptions struct {
	// Stores are tried in order for each chunk: one that lacks it (or keeps
	// serving it bad) passes it on to the next.
	Stores []Store
	// Parallel fetches run ahead of the reader; zero: 4. A link with a long
	// round trip needs several in flight.
	Parallel int
	// Attempts per store for a chunk that arrives bad; zero: 3.
	Attempts int
	// RepeatCache bounds the bytes of fetched chunks kept in memory because
	// the image repeats them later; zero: 8 MiB. A repeat past the bound is
	// fetched again.
	RepeatCache int64
	// OnFetch is called (from several goroutines) after each chunk fetched
	// and checked, with the bytes the store sent.
	OnFetch func(c Chunk, stored int)
	// OnBad is called (from several goroutines) for each chunk refused.
	OnBad func(c Chunk, s Store, err error)
}

// Stats are what a Reader did so far.
type Stats struct {
	Fetched       Tally // chunks fetched and checked (uncompressed bytes)
	FetchedStored int64 // bytes the stores sent for them
	Refused       int   // chunks refused as bad
	SeedMisses    int   // seed chunks that did not match and were fetched instead
}

// Reader yields the image a plan describes, from the plan's offset to its
// end, each chunk checked against its ID before a byte of it is returned.
type Reader struct {
	p      *Plan
	seeds  []Seed
	target io.ReaderAt
	o      FetchOptions
	dec    *Decoder

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	order  chan *pending

	i      int    // next chunk (relative to p.first)
	cur    []byte // rest of the current chunk
	buf    []byte // chunk buffer for seed and in-place reads
	prevID ID     // the chunk before, and its bytes: runs of one chunk (zeros) are read once
	prev   []byte
	repeat map[ID][]byte
	cached int64
	left   map[ID]int // uses of a fetched ID still ahead
	err    error

	mu    sync.Mutex
	stats Stats
}

type pending struct {
	c    Chunk
	done chan fetched
}

type fetched struct {
	data []byte
	err  error
}

// NewReader starts assembling the image of plan p. Seeds must be the ones
// the plan was made with; target is where the image is being written (for
// chunks already in place). Close stops its fetches.
func NewReader(ctx context.Context, p *Plan, seeds []Seed, target io.ReaderAt, o FetchOptions) (*Reader, error) {
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.Attempts <= 0 {
		o.Attempts = 3
	}
	if o.RepeatCache <= 0 {
		o.RepeatCache = 8 << 20
	}
	dec, err := NewDecoder(p.Index)
	if err != nil {
		return nil, err
	}
	r := &Reader{p: p, seeds: seeds, target: target, o: o, dec: dec, repeat: map[ID][]byte{}, left: map[ID]int{}}
	for id, n := range p.uses {
		r.left[id] = n
	}
	r.ctx, r.cancel = context.WithCancel(ctx)
	// order holds the fetches in image order; its capacity is how far ahead
	// of the reader they may run.
	r.order = make(chan *pending, 2*o.Parallel)
	jobs := make(chan *pending)
	r.wg.Go(func() {
		defer close(r.order)
		defer close(jobs)
		for i, l := range p.locs {
			if l.src != FromStore {
				continue
			}
			pd := &pending{c: p.Index.Chunks[p.first+i], done: make(chan fetched, 1)}
			select {
			case r.order <- pd:
			case <-r.ctx.Done():
				return
			}
			select {
			case jobs <- pd:
			case <-r.ctx.Done():
				return
			}
		}
	})
	for range o.Parallel {
		r.wg.Go(func() {
			for pd := range jobs {
				data, err := r.fetch(r.ctx, pd.c)
				pd.done <- fetched{data, err}
			}
		})
	}
	return r, nil
}

// Stats returns what the reader did so far; safe to call while it reads.
func (r *Reader) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Close stops the fetches and waits for them.
func (r *Reader) Close() error {
	r.cancel()
	r.wg.Wait()
	r.dec.Close()
	return nil
}

// fetch gets chunk c from the first store that has it good.
func (r *Reader) fetch(ctx context.Context, c Chunk) ([]byte, error) {
	var bad error
	for _, s := range r.o.Stores {
		for attempt := 0; attempt < r.o.Attempts; attempt++ {
			stored, err := s.Chunk(ctx, c.ID)
			if errors.Is(err, ErrNotFound) {
				break
			}
			if err == nil {
				var data []byte
				if data, err = r.dec.Decode(c, stored, nil); err == nil {
					r.mu.Lock()
					r.stats.Fetched.add(c)
					r.stats.FetchedStored += int64(len(stored))
					r.mu.Unlock()
					if r.o.OnFetch != nil {
						r.o.OnFetch(c, len(stored))
					}
					return data, nil
				}
			}
			if !errors.Is(err, ErrChunk) {
				return nil, err // the network or the store: retried by a later pass
			}
			r.mu.Lock()
			r.stats.Refused++
			r.mu.Unlock()
			if r.o.OnBad != nil {
				r.o.OnBad(c, s, err)
			}
			bad = fmt.Errorf("store %s: %w", s, err)
		}
	}
	if bad != nil {
		return nil, fmt.Errorf("chunk %s (bytes %d-%d): every store serves it bad, %d attempts each: %w", c.ID, c.Start, c.End(), r.o.Attempts, bad)
	}
	return nil, fmt.Errorf("chunk %s (bytes %d-%d): no store has it: %w", c.ID, c.Start, c.End(), ErrNotFound)
}

// Read implements io.Reader.
func (r *Reader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if len(r.cur) == 0 {
			if r.err != nil {
				break
			}
			if r.i == len(r.p.locs) {
				r.err = io.EOF
				break
			}
			if err := r.next(); err != nil {
				r.err = err
				break
			}
		}
		m := copy(b[n:], r.cur)
		r.cur = r.cur[m:]
		n += m
	}
	if n > 0 {
		return n, nil
	}
	return 0, r.err
}

// next loads chunk r.i into r.cur, checked, skipping what lies before the
// plan's offset.
func (r *Reader) next() error {
	i := r.i
	l := r.p.locs[i]
	c := r.p.Index.Chunks[r.p.first+i]
	if cap(r.buf) < int(c.Size) {
		r.buf = make([]byte, r.p.Index.Params.Max)
	}
	var data []byte
	switch l.src {
	case InPlace:
		b := r.buf[:c.Size]
		if n, err := r.target.ReadAt(b, c.Start); n != len(b) {
			return fmt.Errorf("read target at %d: %w", c.Start, err)
		}
		if r.p.Index.Sum(b) != c.ID {
			return fmt.Errorf("chunk %s at %d changed in the target since the plan: %w", c.ID, c.Start, ErrChunk)
		}
		data = b
	case FromSeed:
		if r.prev != nil && c.ID == r.prevID && int64(len(r.prev)) == c.Size {
			data = r.prev // a run of the same chunk: zeros, mostly
			break
		}
		s := r.seeds[l.seed]
		b := r.buf[:c.Size]
		if n, err := s.R.ReadAt(b, l.off); n != len(b) {
			return fmt.Errorf("read seed %s at %d: %w", s.Name, l.off, err)
		}
		if s.Cut || r.p.Index.Sum(b) == c.ID {
			data = b
			break
		}
		// The seed is not what its index says (changed since it was cut):
		// fetch the chunk instead.
		r.mu.Lock()
		r.stats.SeedMisses++
		r.mu.Unlock()
		d, err := r.fetch(r.ctx, c)
		if err != nil {
			return err
		}
		data = d
	case FromStore:
		pd, ok := <-r.order
		if !ok {
			return r.ctx.Err()
		}
		var f fetched
		select {
		case f = <-pd.done:
		case <-r.ctx.Done():
			return r.ctx.Err()
		}
		if f.err != nil {
			return f.err
		}
		data = f.data
		r.keep(c.ID, data)
	case Repeat:
		if d, ok := r.repeat[c.ID]; ok {
			data = d
		} else {
			d, err := r.fetch(r.ctx, c)
			if err != nil {
				return err
			}
			data = d
			r.keep(c.ID, data)
		}
	}
	if l.src == FromStore || l.src == Repeat {
		if r.left[c.ID]--; r.left[c.ID] <= 0 {
			if d, ok := r.repeat[c.ID]; ok {
				r.cached -= int64(len(d))
				delete(r.repeat, c.ID)
			}
		}
	}
	r.prevID, r.prev = c.ID, data
	if skip := r.p.From - c.Start; skip > 0 {
		data = data[skip:]
	}
	r.cur = data
	r.i++
	return nil
}

// keep holds a fetched chunk that the image repeats later, within the cache's bound.
func (r *Reader) keep(id ID, data []byte) {
	if r.left[id] > 1 && r.cached+int64(len(data)) <= r.o.RepeatCache {
		if _, ok := r.repeat[id]; !ok {
			r.repeat[id] = data
			r.cached += int64(len(data))
		}
	}
}
