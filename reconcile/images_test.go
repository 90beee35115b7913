package reconcile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"

	"github.com/shoalfleet/shoal/spec"
)

// saveTar tags the test image as ref, saves it to a tar and removes the tag
// again, so only loading the tar can bring ref back.
func (e *env) saveTar(ref string) ([]byte, string) {
	e.t.Helper()
	ctx := context.Background()
	if err := e.cli.ImageTag(ctx, e.image, ref); err != nil {
		e.t.Fatal(err)
	}
	rc, err := e.cli.ImageSave(ctx, []string{ref})
	if err != nil {
		e.t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.cli.ImageRemove(ctx, ref, image.RemoveOptions{}); err != nil {
		e.t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// TestImageTarsLoadedVerifiedAndPruned: an image tar from the fleet repo and one
// from a URL are verified and loaded with no registry; when no app references
// them any more they are pruned.
func TestImageTarsLoadedVerifiedAndPruned(t *testing.T) {
	e := newEnv(t, nil)
	refRepo := "shoal-reconcile-test/tar-repo:" + e.label
	refURL := "shoal-reconcile-test/tar-url:" + e.label
	repoTar, repoSum := e.saveTar(refRepo)
	urlTar, urlSum := e.saveTar(refURL)
	var downloads int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		downloads++
		http.ServeContent(w, r, "app.tar", e.r.o.Now(), bytes.NewReader(urlTar))
	}))
	defer srv.Close()
	repo := fstest.MapFS{"images/app.tar": {Data: repoTar}}

	fromRepo := e.plainApp("fromrepo")
	fromRepo.Image = spec.Image{Ref: refRepo, Source: &spec.ImageSource{Path: "images/app.tar", SHA256: repoSum}}
	fromURL := e.plainApp("fromurl")
	fromURL.Image = spec.Image{Ref: refURL, Source: &spec.ImageSource{URL: srv.URL + "/app.tar", SHA256: urlSum}}
	dev := e.device(fromRepo, fromURL)

	p := e.plan(dev)
	for _, app := range []string{"fromrepo", "fromurl"} {
		if !hasAction(p, KindLoad, app, "image not present") {
			t.Fatalf("plan lacks load-image for %s:\n%s", app, p)
		}
	}
	// The repo tree comes with the pass (the agent's checkout at the commit applied).
	res, err := e.r.ReconcileRepo(context.Background(), dev, repo)
	if err != nil {
		t.Fatalf("%v\n%s", err, res.Plan)
	}
	for _, app := range []string{"fromrepo", "fromurl"} {
		if a := appResult(t, res, app); a.State != "running" {
			t.Errorf("%s: %+v", app, a)
		}
	}
	if p := e.plan(dev); p.Changes() != 0 || downloads != 1 {
		t.Errorf("second plan has %d changes, %d downloads:\n%s", p.Changes(), downloads, p)
	}

	// A tar that does not match the pinned sha256 is refused before ImageLoad.
	bad := fromURL
	bad.Name = "tampered"
	bad.Image = spec.Image{Ref: "shoal-reconcile-test/tampered:" + e.label, Source: &spec.ImageSource{URL: srv.URL + "/app.tar", SHA256: repoSum}}
	dev.Apps = append(dev.Apps, bad)
	res = e.reconcile(dev)
	if a := appResult(t, res, "tampered"); a.Error == nil || a.Error.Code != "image-verify-failed" || !strings.Contains(a.Error.Error(), "image.source.sha256") {
		t.Errorf("tampered: %+v", a.Error)
	}
	if _, err := e.cli.ImageInspect(context.Background(), bad.Image.Ref); !cerrdefs.IsNotFound(err) {
		t.Errorf("tampered image was loaded: %v", err)
	}

	// Nothing references the images any more: containers removed, images pruned.
	dev.Apps = nil
	p = e.plan(dev)
	for _, ref := range []string{refRepo, refURL} {
		found := false
		for _, a := range p.Actions {
			found = found || a.Kind == KindPrune && a.Target == ref
		}
		if !found {
			t.Fatalf("plan does not prune %s:\n%s", ref, p)
		}
	}
	e.mustReconcile(dev)
	for _, ref := range []string{refRepo, refURL} {
		if _, err := e.cli.ImageInspect(context.Background(), ref); !cerrdefs.IsNotFound(err) {
			t.Errorf("image %s not pruned: %v", ref, err)
		}
	}
	if p := e.plan(dev); p.Changes() != 0 {
		t.Errorf("after pruning the plan still has changes:\n%s", p)
	}
}
