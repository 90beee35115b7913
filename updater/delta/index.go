package delta

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
)

// The blob index format, as casync's caformat.h defines it. All numbers are
// little-endian 64-bit.
//
//	index header  size=48, type=formatIndex, feature flags, chunk size min, avg, max
//	table header  size=2^64-1, type=formatTable
//	items         (offset of the chunk's end, 32-byte chunk ID), one per chunk
//	table tail    0, 0, offset of the index header's end (48), table size, formatTail
//
// The table size counts the table header, the items and the tail: 16+40n+40.
const (
	formatIndex = 0x96824d9c7b129ff9
	formatTable = 0xe75b9e112f17417d
	formatTail  = 0x4b4f050e5549ecd1

	headerSize = 48
	tableHead  = 16
	itemSize   = 40 // the tail has the same size

	// FlagSHA512256 marks an index whose chunk IDs are SHA-512/256 digests
	// (casync's default); without it they are SHA-256.
	FlagSHA512256 = 0x2000000000000000
	// FlagsBlob are the feature flags `casync make` writes into a blob index
	// (CA_FORMAT_EXCLUDE_NODUMP|CA_FORMAT_EXCLUDE_FILE): Make writes the same,
	// so the two tools' indexes are byte-for-byte equal.
	FlagsBlob = 0x9000000000000000

	// chunkLimitMax is casync's largest allowed chunk (CA_CHUNK_SIZE_LIMIT_MAX).
	chunkLimitMax = 128 << 20
	// MaxIndexSize bounds an index file a device will read: 256 MiB holds
	// 6.7 million chunks, a 400 GiB image at casync's default sizes.
	MaxIndexSize = 256 << 20
)

// ErrFormat is an index or chunk that is not in casync's format.
var ErrFormat = errors.New("not a casync blob index")

// ID is a chunk's ID: the digest of its uncompressed bytes.
type ID [32]byte

// String is the ID in lower-case hex, as store paths spell it.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID reads a chunk ID in hex.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("chunk id %q: want %d hex digits", s, 2*len(id))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return id, nil
}

// Chunk is one entry of an index: Size bytes of the blob from Start.
type Chunk struct {
	Start int64
	Size  int64
	ID    ID
}

// End is the offset just past the chunk.
func (c Chunk) End() int64 { return c.Start + c.Size }

// Index is a parsed blob index (.caibx).
type Index struct {
	Flags  uint64
	Params Params
	Chunks []Chunk
}

// Size is the length of the blob the index describes.
func (x *Index) Size() int64 {
	if len(x.Chunks) == 0 {
		return 0
	}
	return x.Chunks[len(x.Chunks)-1].End()
}

// Sum returns the chunk ID of b under the index's digest.
func (x *Index) Sum(b []byte) ID {
	if x.Flags&FlagSHA512256 != 0 {
		return sha512.Sum512_256(b)
	}
	return sha256.Sum256(b)
}

// Digest names the index's chunk digest: "sha256" or "sha512-256".
func (x *Index) Digest() string {
	if x.Flags&FlagSHA512256 != 0 {
		return "sha512-256"
	}
	return "sha256"
}

// ParseIndex reads a blob index. Errors name the byte offset and the field
// that is wrong, and wrap ErrFormat. Every chunk must be non-empty and no
// larger than the index's maximum, as casync requires.
func ParseIndex(b []byte) (*Index, error) {
	bad := func(off int, format string, args ...any) error {
		return fmt.Errorf("%w: byte %d: %s", ErrFormat, off, fmt.Sprintf(format, args...))
	}
	if len(b) > MaxIndexSize {
		return nil, bad(0, "index of %d bytes is larger than %d", len(b), MaxIndexSize)
	}
	if len(b) < headerSize+tableHead+itemSize {
		return nil, bad(0, "%d bytes is too short for an index", len(b))
	}
	le := binary.LittleEndian
	u := func(off int) uint64 { return le.Uint64(b[off:]) }
	if u(0) != headerSize {
		return nil, bad(0, "header size %d, want %d", u(0), headerSize)
	}
	if u(8) != formatIndex {
		return nil, bad(8, "header type %#x is not an index (%#x)", u(8), uint64(formatIndex))
	}
	x := &Index{Flags: u(16), Params: Params{Min: u(24), Avg: u(32), Max: u(40)}}
	if err := x.Params.check(); err != nil {
		return nil, bad(24, "%v", err)
	}
	if u(48) != math.MaxUint64 {
		return nil, bad(48, "table size %#x, want %#x", u(48), uint64(math.MaxUint64))
	}
	if u(56) != formatTable {
		return nil, bad(56, "table type %#x is not a table (%#x)", u(56), uint64(formatTable))
	}
	body := len(b) - headerSize - tableHead
	if body%itemSize != 0 {
		return nil, bad(headerSize+tableHead, "table of %d bytes is not a whole number of %d-byte items", body, itemSize)
	}
	n := body/itemSize - 1
	tail := len(b) - itemSize
	if u(tail) != 0 || u(tail+8) != 0 {
		return nil, bad(tail, "table tail does not start with zeros")
	}
	if u(tail+16) != headerSize {
		return nil, bad(tail+16, "table tail's index offset %d, want %d", u(tail+16), headerSize)
	}
	if want := uint64(tableHead + itemSize*n + itemSize); u(tail+24) != want {
		return nil, bad(tail+24, "table tail's size %d, want %d for %d chunks", u(tail+24), want, n)
	}
	if u(tail+32) != formatTail {
		return nil, bad(tail+32, "table tail marker %#x, want %#x", u(tail+32), uint64(formatTail))
	}
	if n == 0 {
		return nil, bad(headerSize+tableHead, "index lists no chunks")
	}
	x.Chunks = make([]Chunk, n)
	var prev uint64
	for i := range n {
		off := headerSize + tableHead + i*itemSize
		end := u(off)
		if end <= prev || end > math.MaxInt64 {
			return nil, bad(off, "chunk %d ends at %d, not after the previous end %d", i, end, prev)
		}
		if end-prev > x.Params.Max {
			return nil, bad(off, "chunk %d has %d bytes, more than the index's maximum %d", i, end-prev, x.Params.Max)
		}
		c := Chunk{Start: int64(prev), Size: int64(end - prev)}
		copy(c.ID[:], b[off+8:off+itemSize])
		x.Chunks[i] = c
		prev = end
	}
	return x, nil
}

// MarshalBinary writes the index in casync's format.
func (x *Index) MarshalBinary() ([]byte, error) {
	if err := x.Params.check(); err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	n := len(x.Chunks)
	b := make([]byte, headerSize+tableHead+itemSize*n+itemSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], headerSize)
	le.PutUint64(b[8:], formatIndex)
	le.PutUint64(b[16:], x.Flags)
	le.PutUint64(b[24:], x.Params.Min)
	le.PutUint64(b[32:], x.Params.Avg)
	le.PutUint64(b[40:], x.Params.Max)
	le.PutUint64(b[48:], math.MaxUint64)
	le.PutUint64(b[56:], formatTable)
	var prev int64
	for i, c := range x.Chunks {
		if c.Start != prev || c.Size <= 0 {
			return nil, fmt.Errorf("index: chunk %d at %d+%d does not follow the previous end %d", i, c.Start, c.Size, prev)
		}
		off := headerSize + tableHead + i*itemSize
		le.PutUint64(b[off:], uint64(c.End()))
		copy(b[off+8:], c.ID[:])
		prev = c.End()
	}
	tail := len(b) - itemSize
	le.PutUint64(b[tail+16:], headerSize)
	le.PutUint64(b[tail+24:], uint64(tableHead+itemSize*n+itemSize))
	le.PutUint64(b[tail+32:], formatTail)
	return b, nil
}
