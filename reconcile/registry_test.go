package reconcile

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/image"

	"github.com/shoalfleet/shoal/spec"
)

// registryFromSave serves, read-only over plain HTTP on loopback (which the
// Engine treats as an insecure registry), the image in a `docker save` tar as
// repository name. It returns the manifest digest to pin.
func registryFromSave(t *testing.T, saved []byte, name string) (host, digest string) {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(saved))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = b
	}
	var man []struct {
		Config string
		Layers []string
	}
	if err := json.Unmarshal(files["manifest.json"], &man); err != nil || len(man) != 1 {
		t.Fatalf("saved manifest.json: %v %s", err, files["manifest.json"])
	}
	blobs := map[string][]byte{}
	desc := func(mediaType string, b []byte) map[string]any {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return map[string]any{"mediaType": mediaType, "size": len(b), "digest": d}
	}
	var layers []map[string]any
	for _, l := range man[0].Layers {
		layers = append(layers, desc("application/vnd.docker.image.rootfs.diff.tar", files[l]))
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.docker.distribution.manifest.v2+json",
		"config":        desc("application/vnd.docker.container.image.v1+json", files[man[0].Config]),
		"layers":        layers,
	})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(manifest)
	digest = "sha256:" + hex.EncodeToString(sum[:])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case p == "/v2/" || p == "/v2":
			w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
			w.Write([]byte("{}"))
		case strings.HasPrefix(p, "/v2/"+name+"/manifests/"):
			ref := strings.TrimPrefix(p, "/v2/"+name+"/manifests/")
			if ref != digest && ref != "v1" {
				http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
				return
			}
			w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
			w.Header().Set("Docker-Content-Digest", digest)
			w.Header().Set("Content-Length", fmt.Sprint(len(manifest)))
			if r.Method != http.MethodHead {
				w.Write(manifest)
			}
		case strings.HasPrefix(p, "/v2/"+name+"/blobs/"):
			b, ok := blobs[strings.TrimPrefix(p, "/v2/"+name+"/blobs/")]
			if !ok {
				http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
				return
			}
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			if r.Method != http.MethodHead {
				w.Write(b)
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).String(), digest
}

// TestPullPinnedByDigest: an image referenced by digest is pulled from a
// reachable registry, runs, and is pruned when no app references it any more.
func TestPullPinnedByDigest(t *testing.T) {
	e := newEnv(t, nil)
	saved, _ := e.saveTar("shoal-reconcile-test/pull-src:" + e.label)
	host, digest := registryFromSave(t, saved, "shoal/pulled")
	ref := host + "/shoal/pulled@" + digest
	t.Cleanup(func() {
		e.cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true})
	})
	app := e.plainApp("pulled")
	app.Image = spec.Image{Ref: ref}
	dev := e.device(app)
	if p := e.plan(dev); !hasAction(p, KindPull, "pulled", "image not present") {
		t.Fatalf("plan:\n%s", p)
	}
	res := e.mustReconcile(dev)
	if a := appResult(t, res, "pulled"); a.State != "running" {
		t.Fatalf("pulled: %+v", a)
	}
	dev.Apps = nil
	e.mustReconcile(dev)
	if _, err := e.cli.ImageInspect(context.Background(), ref); err == nil {
		t.Errorf("pulled image %s not pruned", ref)
	}
}
