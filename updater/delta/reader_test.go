package delta

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// edit returns a copy of img with a few regions changed, one inserted and one
// removed: what a package upgrade does to a file system image, roughly.
func edit(img []byte) []byte {
	out := append([]byte(nil), img[:len(img)/5]...)
	out = append(out, testImage(99, 40<<10)...) // inserted
	out = append(out, img[len(img)/5:len(img)/2]...)
	out = append(out, img[len(img)/2+70<<10:]...) // removed
	copy(out[len(out)*3/4:], testImage(98, 30<<10))
	return out
}

type fixture struct {
	old, img []byte
	x        *Index
	store    string
	seed     Seed
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{old: testImage(3, 4<<20)}
	f.img = edit(f.old)
	f.store = filepath.Join(t.TempDir(), "store")
	res, err := Make(context.Background(), bytes.NewReader(f.img), f.store, MakeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.x = res.Index
	sx, err := IndexSeed(context.Background(), bytes.NewReader(f.old), int64(len(f.old)), f.x)
	if err != nil {
		t.Fatal(err)
	}
	f.seed = Seed{Name: "old", R: bytes.NewReader(f.old), Index: sx}
	return f
}

func (f *fixture) assemble(t testing.TB, from int64, target io.ReaderAt, o FetchOptions) ([]byte, *Plan, Stats, error) {
	t.Helper()
	p, err := NewPlan(context.Background(), f.x, from, []Seed{f.seed}, target)
	if err != nil {
		t.Fatal(err)
	}
	if o.Stores == nil {
		o.Stores = []Store{DirStore(f.store)}
	}
	r, err := NewReader(context.Background(), p, []Seed{f.seed}, target, o)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out, err := io.ReadAll(r)
	return out, p, r.Stats(), err
}

func TestAssembleFromSeedAndStore(t *testing.T) {
	f := newFixture(t)
	out, p, st, err := f.assemble(t, 0, nil, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, f.img) {
		t.Fatalf("assembled %d bytes that differ from the image's %d", len(out), len(f.img))
	}
	if p.Fetch.Bytes == 0 || p.Fetch.Bytes > int64(len(f.img))/4 {
		t.Fatalf("plan fetches %d of %d bytes; want some, and much less than all", p.Fetch.Bytes, len(f.img))
	}
	if st.Fetched != p.Fetch {
		t.Fatalf("fetched %+v, planned %+v", st.Fetched, p.Fetch)
	}
	if got := p.Seeded.Bytes + p.Fetch.Bytes + p.Repeat.Bytes + p.InPlace.Bytes; got != int64(len(f.img)) {
		t.Fatalf("plan covers %d bytes of %d", got, len(f.img))
	}
	t.Logf("fetch %d chunks / %d bytes, seed %d / %d, repeats %d, of %d bytes", p.Fetch.Chunks, p.Fetch.Bytes, p.Seeded.Chunks, p.Seeded.Bytes, p.Repeat.Chunks, len(f.img))
}

func TestAssembleResumesMidChunkAndFindsChunksInPlace(t *testing.T) {
	f := newFixture(t)
	// A target holding the first 60% of the image: a power cut's leftovers.
	part := append([]byte(nil), f.img[:len(f.img)*6/10]...)
	from := int64(len(f.img) / 3) // the last checkpoint, mid-chunk
	out, p, st, err := f.assemble(t, from, bytes.NewReader(part), FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, f.img[from:]) {
		t.Fatalf("resumed assembly differs from the image after %d", from)
	}
	if p.InPlace.Chunks == 0 {
		t.Fatal("no chunk found in place")
	}
	full, _, _, err := f.assemble(t, 0, nil, FetchOptions{})
	if err != nil || !bytes.Equal(full, f.img) {
		t.Fatal(err)
	}
	if st.Fetched.Bytes >= p.Fetch.Bytes+p.InPlace.Bytes && p.InPlace.Bytes > 0 {
		t.Fatalf("resume fetched %d bytes", st.Fetched.Bytes)
	}
}

// flakyStore serves chunk bytes with one byte flipped, for the first bad
// requests of each chunk.
type flakyStore struct {
	Store
	mu   sync.Mutex
	bad  int
	seen map[ID]int
}

func (s *flakyStore) Chunk(ctx context.Context, id ID) ([]byte, error) {
	b, err := s.Store.Chunk(ctx, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[id]++; s.seen[id] <= s.bad {
		b = append([]byte(nil), b...)
		b[len(b)/2] ^= 0x40
	}
	return b, nil
}

func TestCorruptChunkIsRefusedAndFetchedAgain(t *testing.T) {
	f := newFixture(t)
	fs := &flakyStore{Store: DirStore(f.store), bad: 1, seen: map[ID]int{}}
	var refused []error
	var mu sync.Mutex
	out, p, st, err := f.assemble(t, 0, nil, FetchOptions{Stores: []Store{fs}, OnBad: func(c Chunk, s Store, err error) {
		mu.Lock()
		refused = append(refused, err)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, f.img) {
		t.Fatal("assembled image differs")
	}
	if st.Refused != p.Fetch.Chunks || len(refused) != p.Fetch.Chunks || !errors.Is(refused[0], ErrChunk) {
		t.Fatalf("refused %d chunks (%v), want each of the %d fetched once", st.Refused, refused, p.Fetch.Chunks)
	}
}

func TestStoreThatKeepsServingBadDataFails(t *testing.T) {
	f := newFixture(t)
	fs := &flakyStore{Store: DirStore(f.store), bad: 1 << 30, seen: map[ID]int{}}
	_, _, _, err := f.assemble(t, 0, nil, FetchOptions{Stores: []Store{fs}})
	if !errors.Is(err, ErrChunk) {
		t.Fatalf("err = %v, want ErrChunk", err)
	}
	// A second store with good data saves the install.
	out, _, _, err := f.assemble(t, 0, nil, FetchOptions{Stores: []Store{fs, DirStore(f.store)}})
	if err != nil || !bytes.Equal(out, f.img) {
		t.Fatalf("with a good second store: %v", err)
	}
}

func TestMissingChunk(t *testing.T) {
	f := newFixture(t)
	_, _, _, err := f.assemble(t, 0, nil, FetchOptions{Stores: []Store{DirStore(t.TempDir())}})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestHTTPStore(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.StripPrefix("/chunks", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		http.FileServer(http.Dir(f.store)).ServeHTTP(w, r)
	})))
	defer srv.Close()
	out, p, st, err := f.assemble(t, 0, nil, FetchOptions{Stores: []Store{&HTTPStore{URL: srv.URL + "/chunks/"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, f.img) {
		t.Fatal("assembled image differs")
	}
	if n != p.Fetch.Chunks || st.FetchedStored == 0 {
		t.Fatalf("%d requests for %d chunks to fetch", n, p.Fetch.Chunks)
	}
	_, err = (&HTTPStore{URL: srv.URL + "/nowhere"}).Chunk(context.Background(), f.x.Chunks[0].ID)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing chunk over HTTP: %v", err)
	}
}

// TestReadsCasyncStore: an index and store made by casync make assemble here.
func TestReadsCasyncStore(t *testing.T) {
	for _, digest := range []string{"sha256", "sha512-256"} {
		t.Run(digest, func(t *testing.T) {
			img := testImage(4, 3<<20)
			dir := t.TempDir()
			path := filepath.Join(dir, "image")
			if err := os.WriteFile(path, img, 0o644); err != nil {
				t.Fatal(err)
			}
			casync(t, "make", "--digest="+digest, "--store="+filepath.Join(dir, "store"), filepath.Join(dir, "image.caibx"), path)
			b, err := os.ReadFile(filepath.Join(dir, "image.caibx"))
			if err != nil {
				t.Fatal(err)
			}
			x, err := ParseIndex(b)
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewPlan(context.Background(), x, 0, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			r, err := NewReader(context.Background(), p, nil, nil, FetchOptions{Stores: []Store{DirStore(filepath.Join(dir, "store"))}})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			out, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, img) {
				t.Fatal("image from casync's store differs")
			}
		})
	}
}

// TestSeedChangedSinceItsIndex: a seed whose bytes no longer match its
// (kept) index costs a fetch per changed chunk, never a wrong image.
func TestSeedChangedSinceItsIndex(t *testing.T) {
	f := newFixture(t)
	changed := append([]byte(nil), f.old...)
	for i := 0; i < len(changed); i += 300 << 10 {
		changed[i] ^= 0xff
	}
	f.seed.R = bytes.NewReader(changed)
	out, _, st, err := f.assemble(t, 0, nil, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, f.img) || st.SeedMisses == 0 || st.Fetched.Chunks <= st.SeedMisses {
		t.Fatalf("image right: %v; %d seed misses, %d chunks fetched", bytes.Equal(out, f.img), st.SeedMisses, st.Fetched.Chunks)
	}
}
