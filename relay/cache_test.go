package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
)

// TestCacheEviction: the cache stays within its limit by evicting the least
// recently used artifact, never one pinned by a download or a device.
func TestCacheEviction(t *testing.T) {
	blobs := map[string][]byte{}
	var as []artifact
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(blobs[r.URL.Path])
	}))
	defer srv.Close()
	for i := range 4 {
		b := bytes.Repeat([]byte{byte('a' + i)}, 1000)
		sum := sha256.Sum256(b)
		path := fmt.Sprintf("/a%d", i)
		blobs[path] = b
		as = append(as, artifact{URL: srv.URL + path, SHA256: hex.EncodeToString(sum[:]), Size: 1000})
	}
	ctx := context.Background()
	c, err := openCache(ctx, t.TempDir(), 3000, srv.Client(), slog.New(slog.DiscardHandler), newRelayMetrics(func() float64 { return 0 }, func() float64 { return 1 }))
	if err != nil {
		t.Fatal(err)
	}
	get := func(a artifact) (*os.File, func()) {
		t.Helper()
		f, release, err := c.open(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		return f, release
	}
	cached := func(a artifact) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.items[a.SHA256] != nil
	}
	// a0 stays open (a device downloading it) while a1, a2, a3 come in.
	f0, rel0 := get(as[0])
	f1, rel1 := get(as[1])
	f1.Close()
	rel1()
	f2, rel2 := get(as[2])
	f2.Close()
	rel2()
	// Over the limit: a1 (least recently used, not pinned) goes, a0 (older but pinned) stays.
	f3, rel3 := get(as[3])
	f3.Close()
	rel3()
	if !cached(as[0]) || cached(as[1]) || !cached(as[2]) || !cached(as[3]) {
		t.Fatalf("after eviction: a0 %v a1 %v a2 %v a3 %v", cached(as[0]), cached(as[1]), cached(as[2]), cached(as[3]))
	}
	if b, _ := io.ReadAll(f0); !bytes.Equal(b, blobs["/a0"]) {
		t.Fatal("the pinned artifact changed under its reader")
	}
	f0.Close()
	rel0()
	if n, _ := c.use(); n > 3000 {
		t.Fatalf("cache holds %d bytes", n)
	}
	// Unpinned now: the next fetch may evict it.
	f1, rel1 = get(as[1])
	f1.Close()
	rel1()
	if n, _ := c.use(); n > 3000 {
		t.Fatalf("cache holds %d bytes over its limit of 3000", n)
	}
	if cached(as[0]) {
		t.Fatal("a0, least recently used and unpinned, was kept over the limit")
	}
}
