package delta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func casyncIndexes(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, name := range []string{"casync-sha256.caibx", "casync-sha512-256.caibx"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	return out
}

func TestParseCasyncIndex(t *testing.T) {
	for name, b := range casyncIndexes(t) {
		x, err := ParseIndex(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if x.Size() != 200000 || x.Params != (Params{4096, 16384, 65536}) {
			t.Fatalf("%s: size %d, params %v", name, x.Size(), x.Params)
		}
		if want := strings.Contains(name, "sha512"); (x.Digest() == "sha512-256") != want {
			t.Fatalf("%s: digest %s", name, x.Digest())
		}
		again, err := x.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("%s: does not marshal back to the same bytes: %v", name, err)
		}
	}
}

func TestParseIndexRefuses(t *testing.T) {
	good := casyncIndexes(t)["casync-sha256.caibx"]
	put := func(off int, v uint64) []byte {
		b := append([]byte(nil), good...)
		binary.LittleEndian.PutUint64(b[off:], v)
		return b
	}
	tail := len(good) - itemSize
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"header size", put(0, 40), "byte 0: header size 40"},
		{"not an index", put(8, 1), "byte 8: header type"},
		{"min above avg", put(24, 20000), "want min <= avg <= max"},
		{"zero max", put(40, 0), "each must be 1 to"},
		{"table size", put(48, 5), "byte 48: table size"},
		{"table type", put(56, 5), "byte 56: table type"},
		{"truncated", good[:len(good)-3], "not a whole number"},
		{"trailing bytes", append(append([]byte(nil), good...), make([]byte, 40)...), "index offset 0"},
		{"tail offset", put(tail+16, 64), "index offset 64"},
		{"tail size", put(tail+24, 64), "table tail's size 64"},
		{"tail marker", put(tail+32, 1), "tail marker"},
		{"offsets go back", put(headerSize+tableHead+itemSize, 10), "not after the previous end"},
		{"chunk above max", put(headerSize+tableHead, 70000), "more than the index's maximum"},
		{"offset beyond int64", put(len(good)-2*itemSize, math.MaxUint64), "not after the previous end"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseIndex(tc.b)
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrFormat with %q", err, tc.want)
			}
		})
	}
}

// FuzzParseIndex: no input makes the parser panic, and what it accepts
// marshals back to the same bytes.
func FuzzParseIndex(f *testing.F) {
	for _, b := range casyncIndexes(f) {
		f.Add(b)
		f.Add(b[:len(b)-itemSize])
	}
	x := &Index{Flags: FlagsBlob, Params: DefaultParams, Chunks: []Chunk{{Start: 0, Size: 1}}}
	b, _ := x.MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := ParseIndex(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error does not wrap ErrFormat: %v", err)
			}
			return
		}
		again, err := x.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted index does not marshal: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatal("accepted index marshals to other bytes")
		}
		if x.Size() <= 0 || len(x.Chunks) == 0 {
			t.Fatalf("accepted index of size %d", x.Size())
		}
	})
}

func TestParseParams(t *testing.T) {
	for in, want := range map[string]Params{
		"64K":              DefaultParams,
		"16K:64K:256K":     DefaultParams,
		"1000:2000:4000":   {1000, 2000, 4000},
		"1m":               {256 << 10, 1 << 20, 4 << 20},
		"16384:65536:1024": {},
		"x":                {},
		"1:2":              {},
	} {
		got, err := ParseParams(in)
		if (err == nil) != (want != Params{}) || got != want && err == nil {
			t.Errorf("ParseParams(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}
