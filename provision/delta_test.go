package provision

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater/delta"
)

// TestDeltaBundle: a bundle carries a delta release's index and only the
// chunks the device lacks instead of the image; applied, it hands the
// updater a release whose index and store are on the stick, from which the
// device's running image and those chunks rebuild the new one.
func TestDeltaBundle(t *testing.T) {
	e := newEnv(t)
	p1 := create(t, e.stick, "v1.shoal", e.createOpts())
	if _, err := Apply(ctxT(t), p1, e.applyOpts()); err != nil {
		t.Fatal(err)
	}
	old := make([]byte, 2<<20)
	rand.Read(old)
	img := append(append([]byte(nil), old[:1<<20]...), bytes.Repeat([]byte("new package\n"), 20000)...)
	img = append(img, old[1<<20:]...)
	work := t.TempDir()
	store := filepath.Join(work, "store")
	cut := func(b []byte) *delta.Index {
		res, err := delta.Make(context.Background(), bytes.NewReader(b), store, delta.MakeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return res.Index
	}
	oldX, x := cut(old), cut(img)
	idx, _ := x.MarshalBinary()
	idxPath := filepath.Join(work, "os-2.caibx")
	os.WriteFile(idxPath, idx, 0o644)
	have := map[delta.ID]bool{}
	for _, c := range oldX.Chunks {
		have[c.ID] = true
	}
	var lack []string
	for _, c := range x.Chunks {
		if !have[c.ID] {
			have[c.ID] = true
			lack = append(lack, delta.ChunkPath(c.ID))
		}
	}
	sum, isum := sha256.Sum256(img), sha256.Sum256(idx)
	e.fleet.write("releases/os-2.yaml", "version: 2.0.0\nurl: https://unreachable.example/os-2.img\nsize: "+itoa(len(img))+"\nsha256: "+hex.EncodeToString(sum[:])+
		"\nsignature: c2ln\ndelta:\n  index: https://unreachable.example/os-2.caibx\n  sha256: \""+hex.EncodeToString(isum[:])+"\"\n  store: https://unreachable.example/store/\n")
	e.fleet.write("groups/edge.yaml", "selector:\n  match_labels:\n    role: edge\nspec:\n  apps:\n    web: {}\ndefaults:\n  release: os-2\n")
	e.fleet.commit("delta release")
	o := e.createOpts()
	o.Release, o.DeltaIndex, o.DeltaStore, o.DeltaChunks = true, idxPath, store, lack
	p2 := create(t, e.stick, "v2.shoal", o)
	var chunks, images int
	for _, en := range readEntries(t, p2) {
		switch {
		case strings.HasPrefix(en.hdr.Name, "chunks/"):
			chunks++
		case strings.HasPrefix(en.hdr.Name, "release/") && strings.HasSuffix(en.hdr.Name, ".img"):
			images++
		}
	}
	if chunks != len(lack) || chunks >= len(x.Chunks) || images != 0 {
		t.Fatalf("the bundle carries %d chunks (the device lacks %d of %d) and %d images", chunks, len(lack), len(x.Chunks), images)
	}

	var rebuilt []byte
	ao := e.applyOpts()
	ao.InstallRelease = func(ctx context.Context, rel *spec.Release) error {
		b, err := os.ReadFile(rel.Delta.Index)
		if err != nil {
			return err
		}
		x, err := delta.ParseIndex(b)
		if err != nil {
			return err
		}
		seed := []delta.Seed{{Name: "old", R: bytes.NewReader(old), Index: oldX}}
		p, err := delta.NewPlan(ctx, x, 0, seed, nil)
		if err != nil {
			return err
		}
		r, err := delta.NewReader(ctx, p, seed, nil, delta.FetchOptions{Stores: []delta.Store{delta.DirStore(rel.Delta.Store)}})
		if err != nil {
			return err
		}
		defer r.Close()
		rebuilt, err = io.ReadAll(r)
		return err
	}
	res, err := Apply(ctxT(t), p2, ao)
	if err != nil {
		t.Fatal(err)
	}
	if res.Release != "2.0.0" || !bytes.Equal(rebuilt, img) {
		t.Fatalf("release %q; image rebuilt from the stick: %v", res.Release, bytes.Equal(rebuilt, img))
	}

	// An index that is not the release's is refused when the bundle is made.
	o.DeltaIndex = filepath.Join(work, "other.caibx")
	oi, _ := oldX.MarshalBinary()
	os.WriteFile(o.DeltaIndex, oi, 0o644)
	if _, err := Create(context.Background(), io.Discard, o); err == nil || !strings.Contains(err.Error(), "the release signs") {
		t.Fatalf("wrong index: %v", err)
	}
}
