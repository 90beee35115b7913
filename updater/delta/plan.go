package delta

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Seed is data the device already has, with an index of its chunks: the
// active slot, cut with the target index's chunk sizes.
type Seed struct {
	Name  string // for logs: "slot a"
	R     io.ReaderAt
	Index *Index
	// Cut says the index was cut from R's bytes by this process (IndexSeed),
	// so its chunks need not be hashed again when they are read; a seed
	// index kept from earlier is checked chunk by chunk. Either way the
	// image's whole digest is checked after the assembly.
	Cut bool
}

// IndexSeed cuts the first size bytes of r as casync would with x's chunk
// sizes and digest, and returns their index: a seed for images indexed like x.
func IndexSeed(ctx context.Context, r io.ReaderAt, size int64, like *Index) (*Index, error) {
	seed := &Index{Flags: like.Flags, Params: like.Params}
	var off int64
	err := Split(io.NewSectionReader(r, 0, size), like.Params, func(b []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		seed.Chunks = append(seed.Chunks, Chunk{Start: off, Size: int64(len(b)), ID: seed.Sum(b)})
		off += int64(len(b))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return seed, nil
}

// Source says where the assembly takes a chunk from.
type Source uint8

// Sources, cheapest first.
const (
	InPlace   Source = iota // already at its place in the target
	FromSeed                // copied from a seed
	FromStore               // fetched from a chunk store
	Repeat                  // fetched earlier in this assembly; kept in memory
)

// Tally counts chunks and their (uncompressed) bytes.
type Tally struct {
	Chunks int   `json:"chunks"`
	Bytes  int64 `json:"bytes"`
}

func (t *Tally) add(c Chunk) { t.Chunks++; t.Bytes += c.Size }

type loc struct {
	src  Source
	seed int   // which seed, for FromSeed
	off  int64 // where in the seed
}

// Plan says where each chunk of an image comes from, from a given offset on
// (a resumed install starts after what it has written and checked).
type Plan struct {
	Index *Index
	From  int64
	// Tallies of the chunks from From on. Fetch counts each chunk ID once;
	// Repeat counts further copies of a fetched chunk.
	InPlace, Seeded, Fetch, Repeat Tally
	first                          int   // the chunk holding From
	locs                           []loc // one per chunk from first
	uses                           map[ID]int
}

// Bytes is the part of the image the plan covers: from From to the end.
func (p *Plan) Bytes() int64 { return p.Index.Size() - p.From }

// NewPlan plans the assembly of x from offset from (0, or where a resumed
// install goes on). A chunk comes from the target itself if it is already in
// place there (target may be nil), else from a seed that has it, else from a
// store. Chunks in place are read and checked here; seed chunks are checked
// when they are read.
func NewPlan(ctx context.Context, x *Index, from int64, seeds []Seed, target io.ReaderAt) (*Plan, error) {
	if from < 0 || from > x.Size() {
		return nil, fmt.Errorf("plan: offset %d outside the image's %d bytes", from, x.Size())
	}
	p := &Plan{Index: x, From: from, uses: map[ID]int{}}
	p.first = len(x.Chunks)
	for i, c := range x.Chunks {
		if c.End() > from {
			p.first = i
			break
		}
	}
	type at struct {
		seed int
		off  int64
	}
	have := map[ID]at{}
	for si, s := range seeds {
		if s.Index == nil || s.Index.Flags&FlagSHA512256 != x.Flags&FlagSHA512256 {
			continue // IDs under another digest match nothing
		}
		for _, c := range s.Index.Chunks {
			if _, ok := have[c.ID]; !ok {
				have[c.ID] = at{si, c.Start}
			}
		}
	}
	var buf []byte
	fetched := map[ID]bool{}
	p.locs = make([]loc, len(x.Chunks)-p.first)
	for i, c := range x.Chunks[p.first:] {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if a, ok := have[c.ID]; ok {
			p.locs[i] = loc{src: FromSeed, seed: a.seed, off: a.off}
			p.Seeded.add(c)
			continue
		}
		if target != nil {
			if cap(buf) < int(c.Size) {
				buf = make([]byte, x.Params.Max)
			}
			b := buf[:c.Size]
			if n, err := target.ReadAt(b, c.Start); n == len(b) && x.Sum(b) == c.ID {
				p.locs[i] = loc{src: InPlace}
				p.InPlace.add(c)
				continue
			} else if err != nil && !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("plan: read target at %d: %w", c.Start, err)
			}
		}
		if fetched[c.ID] {
			p.locs[i] = loc{src: Repeat}
			p.Repeat.add(c)
		} else {
			fetched[c.ID] = true
			p.locs[i] = loc{src: FromStore}
			p.Fetch.add(c)
		}
		p.uses[c.ID]++
	}
	return p, nil
}
