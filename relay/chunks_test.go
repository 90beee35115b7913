package relay_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
	"github.com/shoalfleet/shoal/updater/bootenv"
	"github.com/shoalfleet/shoal/updater/delta"
)

// TestRelayChunks: a relay caches the chunks of the delta stores its fleet
// repo's releases name, and the delta's index: each is fetched from the
// origin once, checked (a chunk by its ID), served to devices, and still
// held after a restart; a bad chunk from the origin is never served; a
// chunk path under a store no release names is not the relay's business.
func TestRelayChunks(t *testing.T) {
	s := newSite(t)
	img := make([]byte, 2<<20)
	rand.Read(img)
	storeDir := t.TempDir()
	res, err := delta.Make(context.Background(), bytes.NewReader(img), storeDir, delta.MakeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := res.Index.MarshalBinary()
	idxSum := fmt.Sprintf("%x", sha256.Sum256(idx))
	var fetched atomic.Int64
	var corrupt atomic.Bool
	files := http.FileServer(http.Dir(storeDir))
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		if r.URL.Path == "/os.caibx" {
			w.Write(idx)
			return
		}
		p := strings.TrimPrefix(r.URL.Path, "/store")
		if corrupt.Load() {
			b, err := os.ReadFile(filepath.Join(storeDir, p))
			if err == nil {
				b[len(b)/2] ^= 1
				w.Write(b)
				return
			}
		}
		r.URL.Path = p
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(origin.Close)
	s.repo.Commit(map[string]string{"releases/os.yaml": fmt.Sprintf("version: 1.0.0\nurl: %s/os.img\nsize: %d\nsha256: %x\nsignature: c2ln\ndelta:\n  index: %s/os.caibx\n  sha256: %q\n  store: %s/store/\n",
		origin.URL, len(img), sha256.Sum256(img), origin.URL, idxSum, origin.URL)}, "a delta release")
	s.stop()
	s.startRelay() // mirrors the new commit at start
	d, err := s.enrol("d1")
	if err != nil {
		t.Fatal(err)
	}
	get := func(u string) (int, []byte) { return d.get(t, s.relayURL+"/v1/artifacts?url="+url.QueryEscape(u), nil) }
	chunkURL := func(c delta.Chunk) string { return origin.URL + "/store/" + delta.ChunkPath(c.ID) }

	var code int
	var b []byte
	waitFor(t, 30*time.Second, "the relay to mirror the delta release", func() bool {
		code, b = get(origin.URL + "/os.caibx")
		return code != 404
	})
	if code != 200 || !bytes.Equal(b, idx) {
		t.Fatalf("index through the relay: %d", code)
	}
	first, second := res.Index.Chunks[0], res.Index.Chunks[1]
	want, _ := os.ReadFile(filepath.Join(storeDir, delta.ChunkPath(first.ID)))
	before := fetched.Load()
	for range 3 {
		if code, b := get(chunkURL(first)); code != 200 || !bytes.Equal(b, want) {
			t.Fatalf("chunk through the relay: %d, %d bytes", code, len(b))
		}
	}
	if n := fetched.Load() - before; n != 1 {
		t.Fatalf("the origin served the chunk %d times, want once", n)
	}

	// The origin serves a bad chunk: the relay refuses it, says so, serves nothing.
	corrupt.Store(true)
	code, b = get(chunkURL(second))
	if code != http.StatusBadGateway || !strings.Contains(string(b), api.ReasonArtifactVerify) {
		t.Fatalf("bad chunk from the origin: %d %s", code, b)
	}
	corrupt.Store(false)

	// Not a store a release names: fetch it from its origin yourself.
	if code, b := get("https://elsewhere.example/store/" + delta.ChunkPath(first.ID)); code != 404 || !strings.Contains(string(b), api.ReasonArtifactUnknown) {
		t.Fatalf("chunk of an unknown store: %d %s", code, b)
	}

	// After a restart the relay still holds the chunk.
	s.stop()
	s.startRelay()
	before = fetched.Load()
	if code, b := get(chunkURL(first)); code != 200 || !bytes.Equal(b, want) {
		t.Fatalf("chunk after a restart: %d", code)
	}
	if n := fetched.Load() - before; n != 0 {
		t.Fatalf("after a restart the origin served the chunk again (%d requests)", n)
	}
}

// TestDevicesInstallDeltaThroughRelay: two devices whose agents list the
// relay install the same delta release; their updaters' chunk requests go
// through the relay (the agent's artifact transport), which fetches each
// chunk from the origin once.
func TestDevicesInstallDeltaThroughRelay(t *testing.T) {
	s := newSite(t)
	old := make([]byte, 3<<20)
	rand.Read(old)
	img := append(append([]byte(nil), old[:1<<20]...), make([]byte, 0, 2<<20)...)
	fresh := make([]byte, 512<<10)
	rand.Read(fresh)
	img = append(append(img, fresh...), old[(1<<20)+(256<<10):]...)
	storeDir := t.TempDir()
	res, err := delta.Make(context.Background(), bytes.NewReader(img), storeDir, delta.MakeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := res.Index.MarshalBinary()
	var chunkGets atomic.Int64
	files := http.FileServer(http.Dir(storeDir))
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/os.caibx":
			w.Write(idx)
		case r.URL.Path == "/os.img":
			http.ServeContent(w, r, "os.img", time.Time{}, bytes.NewReader(img))
		default:
			chunkGets.Add(1)
			r.URL.Path = strings.TrimPrefix(r.URL.Path, "/store")
			files.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(origin.Close)
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	rel := &spec.Release{Name: "os", Version: "2.0.0", URL: origin.URL + "/os.img", Size: int64(len(img)), SHA256: fmt.Sprintf("%x", sha256.Sum256(img)),
		Delta: &spec.Delta{Index: origin.URL + "/os.caibx", SHA256: fmt.Sprintf("%x", sha256.Sum256(idx)), Store: origin.URL + "/store/"}}
	if rel.Signature, err = updater.SignRelease(rel, key); err != nil {
		t.Fatal(err)
	}
	s.repo.Commit(map[string]string{"releases/os.yaml": fmt.Sprintf("version: %s\nurl: %s\nsize: %d\nsha256: %s\nsignature: %s\ndelta:\n  index: %s\n  sha256: %q\n  store: %s\n",
		rel.Version, rel.URL, rel.Size, rel.SHA256, rel.Signature, rel.Delta.Index, rel.Delta.SHA256, rel.Delta.Store)}, "a delta release")
	s.stop()
	s.startRelay()
	d0, err := s.enrol("d0")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the relay to mirror the delta release", func() bool {
		code, _ := d0.get(t, s.relayURL+"/v1/artifacts?url="+url.QueryEscape(rel.Delta.Index), nil)
		return code == 200
	})

	install := func(id string) updater.Status {
		d, err := s.enrol(id)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(client.Options{Relays: []string{s.relayURL}, Key: d.key, Cert: d.cert, Logger: slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.CloseIdleConnections)
		dir := t.TempDir()
		slots := map[string]string{updater.SlotA: filepath.Join(dir, "a.img"), updater.SlotB: filepath.Join(dir, "b.img")}
		os.WriteFile(slots[updater.SlotA], old, 0o644)
		u, err := updater.New(updater.Options{
			StateDir: filepath.Join(dir, "state"), Slots: slots, Env: bootenv.NewGRUB(filepath.Join(dir, "grubenv")),
			TrustRoots: []crypto.PublicKey{pub}, Rebooter: noReboot{}, RunningVersion: "1.0.0",
			BootID:     func() (string, error) { return "boot-1", nil },
			BootedSlot: func() (string, error) { return updater.SlotA, nil },
			HTTPClient: &http.Client{Transport: cl.ArtifactTransport(nil)},
		})
		if err != nil {
			t.Fatal(err)
		}
		var st updater.Status
		waitFor(t, 30*time.Second, id+" to install through the relay", func() bool {
			st, err = u.Install(t.Context(), rel, spec.UpdatePolicy{})
			return err == nil
		})
		if got, _ := os.ReadFile(slots[updater.SlotB]); !bytes.Equal(got[:len(img)], img) || st.Delta == nil || st.Delta.Mode != updater.ModeDelta {
			t.Fatalf("%s: slot b holds the image: %v; delta %+v", id, bytes.Equal(got[:len(img)], img), st.Delta)
		}
		return st
	}
	st := install("d1")
	after1 := chunkGets.Load()
	if after1 != int64(st.Delta.Chunks) {
		t.Fatalf("the origin served %d chunk requests for d1's %d chunks", after1, st.Delta.Chunks)
	}
	install("d2")
	if n := chunkGets.Load(); n != after1 {
		t.Fatalf("d2's chunks came from the origin again: %d requests, was %d", n, after1)
	}
}

type noReboot struct{}

func (noReboot) Reboot(context.Context) error { return nil }
