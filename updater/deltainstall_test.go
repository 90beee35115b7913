package updater

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater/delta"
)

// testParams cut a test image of about a megabyte into some sixty chunks.
var testParams = delta.Params{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}

// upgrade returns old with a region rewritten and a few bytes inserted: a
// small upgrade, as a delta sees it.
func upgrade(t testing.TB, old []byte) []byte {
	n := len(old)
	out := append([]byte(nil), old[:n/3]...)
	out = append(out, randBytes(t, 3000)...)
	out = append(out, old[n/3:]...)
	copy(out[n*2/3:], randBytes(t, 20<<10))
	return out
}

// setFactory puts img into slot a as the running OS.
func (d *device) setFactory(img []byte) {
	writeFile(d.t, d.slots[SlotA], img)
	d.known = [][]byte{img}
	d.oldSHA = sha(img)
}

// deltaRelease makes a signed release of img with a chunk index and a chunk
// store (Make, in d's directory), and returns it and the store's directory.
func (d *device) deltaRelease(version string, img []byte) (*spec.Release, string) {
	t := d.t
	t.Helper()
	rel := d.release(version, img)
	store := filepath.Join(d.dir, "store-"+version)
	res, err := delta.Make(context.Background(), bytes.NewReader(img), store, delta.MakeOptions{Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	b, err := res.Index.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	idx := filepath.Join(d.dir, "image-"+version+".caibx")
	writeFile(t, idx, b)
	rel.Delta = &spec.Delta{Index: idx, SHA256: sha(b), Store: store}
	d.sign(rel)
	return rel, store
}

// chunkServer serves a chunk store over HTTP, counting chunk requests. Its
// fail hook may answer a request instead (return true when it did).
type chunkServer struct {
	*httptest.Server
	n    atomic.Int64
	mu   sync.Mutex
	fail func(w http.ResponseWriter, r *http.Request, n int64) bool
}

func newChunkServer(t testing.TB, dir string) *chunkServer {
	s := &chunkServer{}
	files := http.FileServer(http.Dir(dir))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.n.Add(1)
		s.mu.Lock()
		fail := s.fail
		s.mu.Unlock()
		if fail != nil && fail(w, r, n) {
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *chunkServer) setFail(f func(w http.ResponseWriter, r *http.Request, n int64) bool) {
	s.mu.Lock()
	s.fail = f
	s.mu.Unlock()
}

// corrupt serves the chunk with one byte flipped.
func corrupt(dir string) func(w http.ResponseWriter, r *http.Request, n int64) bool {
	return func(w http.ResponseWriter, r *http.Request, _ int64) bool {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(r.URL.Path)))
		if err != nil {
			return false
		}
		b[len(b)/2] ^= 1
		w.Write(b)
		return true
	}
}

type deltaCase struct {
	d     *device
	old   []byte
	img   []byte
	rel   *spec.Release
	store string
	srv   *chunkServer
}

// newDeltaCase: a device running old, a release img = upgrade(old) with a
// delta whose store is served over HTTP.
func newDeltaCase(t *testing.T) *deltaCase {
	c := &deltaCase{d: newDevice(t, "grub"), old: randBytes(t, 1<<20)}
	c.d.setFactory(c.old)
	c.img = upgrade(t, c.old)
	c.rel, c.store = c.d.deltaRelease("1.1.0", c.img)
	c.srv = newChunkServer(t, c.store)
	c.rel.Delta.Store = c.srv.URL + "/"
	c.d.sign(c.rel)
	return c
}

func (c *deltaCase) slotB() []byte { return fileBytes(c.d.t, c.d.slots[SlotB]) }

func TestDeltaInstall(t *testing.T) {
	c := newDeltaCase(t)
	u := c.d.updater()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(u.Collectors()...)
	env := c.d.readVars()
	ctx := context.Background()

	// The first step plans and says what it will fetch, before fetching.
	st, err := u.Step(ctx, c.rel, spec.UpdatePolicy{}, pass)
	if err != nil {
		t.Fatal(err)
	}
	dl := st.Delta
	if st.Phase != PhaseDownloading || dl == nil || dl.Mode != ModeDelta {
		t.Fatalf("after the first step: phase %s, delta %+v", st.Phase, dl)
	}
	if dl.Fetch <= 0 || dl.Fetch > int64(len(c.img))/5 || dl.Seeded+dl.Fetch < int64(len(c.img))*9/10 || dl.Full != int64(len(c.img)) {
		t.Fatalf("plan %+v for a %d-byte image", dl, len(c.img))
	}
	if n := c.srv.n.Load(); n != 0 {
		t.Fatalf("%d chunk requests before the plan was reported", n)
	}
	if got := testutil.ToFloat64(u.m.deltaPlan.WithLabelValues("fetch")); got != float64(dl.Fetch) {
		t.Fatalf("plan metric fetch = %v, want %d", got, dl.Fetch)
	}
	if !maps.Equal(env, c.d.readVars()) {
		t.Fatal("the env changed before the install")
	}

	st, err = u.Step(ctx, c.rel, spec.UpdatePolicy{}, pass)
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != PhaseRebooting || !bytes.Equal(c.slotB()[:len(c.img)], c.img) {
		t.Fatalf("phase %s; slot b holds the image: %v", st.Phase, bytes.Equal(c.slotB()[:len(c.img)], c.img))
	}
	if n := c.srv.n.Load(); n != int64(dl.Chunks) {
		t.Fatalf("%d chunk requests, planned %d", n, dl.Chunks)
	}
	if st.Delta.Fetched <= 0 || st.Delta.Fetched > dl.Fetch+int64(dl.Chunks)*64 {
		t.Fatalf("fetched %d bytes (compressed), planned %d uncompressed", st.Delta.Fetched, dl.Fetch)
	}
	if got := testutil.ToFloat64(u.m.deltaFetched); got != float64(st.Delta.Fetched) {
		t.Fatalf("fetched metric %v, status %d", got, st.Delta.Fetched)
	}
	t.Logf("fetched %d of %d bytes (%.1f%% saved)", st.Delta.Fetched, len(c.img), 100*st.Delta.Saved())

	// The slot's index is kept as the next update's seed index.
	if ms, _ := filepath.Glob(filepath.Join(c.d.dir, "state", "delta", "seed-b-*.caibx")); len(ms) != 1 {
		t.Fatalf("seed index of slot b: %v", ms)
	}
	promtoolCheck(t, reg)
}

// promtoolCheck lints the registry's metrics with Prometheus's own tool.
func promtoolCheck(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	bin := testenv.LookPath(t, "promtool", "prometheus")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestDeltaForgedIndex: an index in a valid format whose sha256 is not the
// signed one is refused before any chunk is fetched; the env is untouched.
func TestDeltaForgedIndex(t *testing.T) {
	c := newDeltaCase(t)
	other, _ := c.d.deltaRelease("9.9.9", upgrade(t, c.img))
	forged := fileBytes(t, other.Delta.Index)
	writeFile(t, c.rel.Delta.Index, forged)
	if _, err := delta.ParseIndex(forged); err != nil {
		t.Fatalf("the forged index should be valid: %v", err)
	}
	env := c.d.readVars()
	u := c.d.updater()
	st, err := u.Install(context.Background(), c.rel, spec.UpdatePolicy{})
	if !errors.Is(err, ErrDeltaIndex) || st.Reason != ReasonDeltaIndex {
		t.Fatalf("err = %v, reason %q", err, st.Reason)
	}
	if n := c.srv.n.Load(); n != 0 {
		t.Fatalf("%d chunk requests for a forged index", n)
	}
	if !maps.Equal(env, c.d.readVars()) || len(c.slotB()) != 0 {
		t.Fatal("a forged index changed the env or the slot")
	}
}

// TestDeltaCorruptChunk: a chunk served with a byte flipped is refused and
// fetched again; the install completes.
func TestDeltaCorruptChunk(t *testing.T) {
	c := newDeltaCase(t)
	var once sync.Map
	bad := corrupt(c.store)
	c.srv.setFail(func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if _, seen := once.LoadOrStore(r.URL.Path, true); !seen {
			return bad(w, r, n)
		}
		return false
	})
	u := c.d.updater()
	st, err := u.Install(context.Background(), c.rel, spec.UpdatePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != PhaseRebooting || !bytes.Equal(c.slotB()[:len(c.img)], c.img) {
		t.Fatalf("phase %s", st.Phase)
	}
	if st.Delta.Refused != st.Delta.Chunks || testutil.ToFloat64(u.m.deltaRefused) != float64(st.Delta.Chunks) {
		t.Fatalf("refused %d chunks, fetched %d", st.Delta.Refused, st.Delta.Chunks)
	}
}

// TestDeltaStoreServesBadData: a store that keeps serving bad chunks fails
// the install with a clear reason, and the env is untouched.
func TestDeltaStoreServesBadData(t *testing.T) {
	c := newDeltaCase(t)
	c.srv.setFail(corrupt(c.store))
	env := c.d.readVars()
	u := c.d.updater()
	st, err := u.Install(context.Background(), c.rel, spec.UpdatePolicy{})
	if !errors.Is(err, delta.ErrChunk) || st.Reason != ReasonChunksBad || !strings.Contains(st.Message, "every store serves it bad") {
		t.Fatalf("err = %v; status reason %q message %q", err, st.Reason, st.Message)
	}
	if st.Phase != PhaseDownloading || !maps.Equal(env, c.d.readVars()) {
		t.Fatalf("phase %s; env %v, was %v", st.Phase, c.d.readVars(), env)
	}
}

// TestDeltaStoreGoneResumes: the store goes away half-way; after an agent
// restart with the store back, the install fetches only what it lacks.
func TestDeltaStoreGoneResumes(t *testing.T) {
	c := newDeltaCase(t)
	// A bigger change, so the fetch spans several checkpoints.
	c.img = append(append([]byte(nil), c.old[:200<<10]...), randBytes(t, 600<<10)...)
	c.img = append(c.img, c.old[800<<10:]...)
	c.rel, c.store = c.d.deltaRelease("1.2.0", c.img)
	c.srv = newChunkServer(t, c.store)
	c.rel.Delta.Store = c.srv.URL
	c.d.sign(c.rel)
	served := int64(12)
	c.srv.setFail(func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if n > served {
			http.Error(w, "store gone", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	st, err := c.d.updater().Install(context.Background(), c.rel, spec.UpdatePolicy{})
	if err == nil || st.Reason != ReasonDownload || st.Phase != PhaseDownloading {
		t.Fatalf("with the store gone: err %v, reason %q, phase %s", err, st.Reason, st.Phase)
	}
	planned := st.Delta.Chunks
	if planned < 25 {
		t.Fatalf("only %d chunks to fetch", planned)
	}
	c.srv.setFail(nil)
	before := c.srv.n.Load()
	u := c.d.updater() // the agent restarted
	st, err = u.Step(context.Background(), c.rel, spec.UpdatePolicy{}, pass)
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != PhaseRebooting || !bytes.Equal(c.slotB()[:len(c.img)], c.img) {
		t.Fatalf("after the restart: phase %s", st.Phase)
	}
	again := c.srv.n.Load() - before
	if again >= int64(planned) || again+served < int64(planned) {
		t.Fatalf("the resumed install fetched %d chunks; %d were served before, %d planned; delta %+v", again, served, planned, st.Delta)
	}
	if st.Delta.From == 0 || st.Delta.Mode != ModeDelta {
		t.Fatalf("the resumed install: %+v", st.Delta)
	}
	t.Logf("planned %d chunks; %d served before the store went, %d after the restart", planned, served, again)
}

// TestDeltaPolicy: above the fallback share the full image is downloaded,
// and said so; a budget below both holds the install, said so, until raised.
func TestDeltaPolicy(t *testing.T) {
	t.Run("fallback share", func(t *testing.T) {
		c := newDeltaCase(t)
		u := c.d.updater()
		pol := spec.UpdatePolicy{Delta: spec.DeltaPolicy{FallbackShare: 0.001}}
		st, err := u.Step(context.Background(), c.rel, pol, pass)
		if err != nil || st.Delta == nil || st.Delta.Mode != ModeFull || st.Delta.Why != ReasonFullShare || st.Phase != PhaseDownloading {
			t.Fatalf("err %v, delta %+v", err, st.Delta)
		}
		st, err = u.Step(context.Background(), c.rel, pol, pass)
		if err != nil || st.Phase != PhaseRebooting || c.srv.n.Load() != 0 || st.Delta.Fetched != int64(len(c.img)) {
			t.Fatalf("err %v, phase %s, %d chunk requests, fetched %d", err, st.Phase, c.srv.n.Load(), st.Delta.Fetched)
		}
		if testutil.ToFloat64(u.m.deltaFull.WithLabelValues(ReasonFullShare)) != 1 {
			t.Fatal("no fallback counted")
		}
	})
	t.Run("disabled", func(t *testing.T) {
		c := newDeltaCase(t)
		no := false
		st, err := c.d.updater().Install(context.Background(), c.rel, spec.UpdatePolicy{Delta: spec.DeltaPolicy{Enabled: &no}})
		if err != nil || st.Delta.Mode != ModeFull || st.Delta.Why != ReasonFullDisabled || c.srv.n.Load() != 0 {
			t.Fatalf("err %v, delta %+v", err, st.Delta)
		}
	})
	t.Run("budget", func(t *testing.T) {
		c := newDeltaCase(t)
		u := c.d.updater()
		pol := spec.UpdatePolicy{Delta: spec.DeltaPolicy{Budget: 1000}}
		st, err := u.Step(context.Background(), c.rel, pol, pass)
		if err != nil || st.Waiting != ReasonBudget || !strings.Contains(st.Message, "above the budget") || c.srv.n.Load() != 0 {
			t.Fatalf("err %v, waiting %q, message %q", err, st.Waiting, st.Message)
		}
		pol.Delta.Budget = spec.Size(st.Delta.Fetch) // the delta fits, the full image does not
		pol.Delta.FallbackShare = 0.001              // and the share alone would send it to the full image
		st, err = u.Install(context.Background(), c.rel, pol)
		if err != nil || st.Phase != PhaseRebooting || st.Delta.Mode != ModeDelta {
			t.Fatalf("err %v, phase %s, delta %+v", err, st.Phase, st.Delta)
		}
	})
	t.Run("chunk missing", func(t *testing.T) {
		c := newDeltaCase(t)
		c.srv.setFail(func(w http.ResponseWriter, r *http.Request, n int64) bool {
			if n == 2 {
				http.NotFound(w, r)
				return true
			}
			return false
		})
		st, err := c.d.updater().Install(context.Background(), c.rel, spec.UpdatePolicy{})
		if err != nil || st.Phase != PhaseRebooting || st.Delta.Mode != ModeFull || st.Delta.Why != ReasonFullMissing {
			t.Fatalf("err %v, phase %s, delta %+v", err, st.Phase, st.Delta)
		}
		if !bytes.Equal(c.slotB()[:len(c.img)], c.img) {
			t.Fatal("slot b does not hold the image")
		}
	})
}

// TestDeltaFromCasyncMake: an index and store made by Debian's casync make
// (both digests) install through the updater.
func TestDeltaFromCasyncMake(t *testing.T) {
	bin := testenv.LookPath(t, "casync", "casync")
	for _, digest := range []string{"sha256", "sha512-256"} {
		t.Run(digest, func(t *testing.T) {
			c := newDeltaCase(t)
			imgPath := filepath.Join(c.d.dir, "casync.img")
			writeFile(t, imgPath, c.img)
			store, idx := filepath.Join(c.d.dir, "castore"), filepath.Join(c.d.dir, "casync.caibx")
			out, err := exec.Command(bin, "make", "--digest="+digest, "--store="+store, idx, imgPath).CombinedOutput()
			if err != nil {
				t.Fatalf("casync make: %v\n%s", err, out)
			}
			c.rel.Delta = &spec.Delta{Index: idx, SHA256: sha(fileBytes(t, idx)), Store: store}
			c.d.sign(c.rel)
			st, err := c.d.updater().Install(context.Background(), c.rel, spec.UpdatePolicy{})
			if err != nil || st.Phase != PhaseRebooting || st.Delta.Mode != ModeDelta {
				t.Fatalf("err %v, phase %s, delta %+v", err, st.Phase, st.Delta)
			}
			if !bytes.Equal(c.slotB()[:len(c.img)], c.img) {
				t.Fatal("slot b does not hold the image")
			}
		})
	}
}

// TestDeltaSignature: the index digest is signed (payload v2): adding a
// delta to a release signed without one, or stripping it from one signed
// with it, breaks the signature.
func TestDeltaSignature(t *testing.T) {
	c := newDeltaCase(t)
	roots := c.d.options().TrustRoots
	if err := VerifyRelease(c.rel, roots); err != nil {
		t.Fatal(err)
	}
	stripped := *c.rel
	stripped.Delta = nil
	if err := VerifyRelease(&stripped, roots); !errors.Is(err, ErrSignature) {
		t.Fatalf("delta stripped: %v", err)
	}
	plain := *c.rel
	plain.Delta = nil
	c.d.sign(&plain)
	added := plain
	added.Delta = c.rel.Delta
	if err := VerifyRelease(&added, roots); !errors.Is(err, ErrSignature) {
		t.Fatalf("delta added: %v", err)
	}
	other := *c.rel
	d := *c.rel.Delta
	d.SHA256 = strings.Repeat("0", 64)
	other.Delta = &d
	if err := VerifyRelease(&other, roots); !errors.Is(err, ErrSignature) {
		t.Fatalf("index digest changed: %v", err)
	}
}
