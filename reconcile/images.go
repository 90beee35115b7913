package reconcile

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/spec"
)

// imageRecordVersion versions the record of images Shoal brought onto the device.
const imageRecordVersion = 1

// loadedImage is what Shoal remembers about an image it loaded or pulled.
type loadedImage struct {
	SHA256 string `json:"sha256,omitempty"` // of the tar it came from; empty when pulled
	ID     string `json:"id"`
}

type imageRecord struct {
	Version int                    `json:"version"`
	Images  map[string]loadedImage `json:"images"` // by image reference
}

// imageStore keeps the record (ImageCache/images.json) and the downloaded tars.
type imageStore struct {
	dir string
	mu  sync.Mutex
}

func (s *imageStore) recordPath() string { return filepath.Join(s.dir, "images.json") }

func (s *imageStore) read() (map[string]loadedImage, error) {
	out := map[string]loadedImage{}
	if s.dir == "" {
		return out, nil
	}
	b, err := os.ReadFile(s.recordPath())
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image record: %w", err)
	}
	var rec imageRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("read image record %s: %w", s.recordPath(), err)
	}
	if rec.Version != imageRecordVersion {
		return nil, fmt.Errorf("image record %s: version %d, want %d", s.recordPath(), rec.Version, imageRecordVersion)
	}
	for k, v := range rec.Images {
		out[k] = v
	}
	return out, nil
}

// update changes the record under the lock and writes it atomically.
func (s *imageStore) update(f func(map[string]loadedImage)) error {
	if s.dir == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.read()
	if err != nil {
		return err
	}
	f(m)
	b, err := json.MarshalIndent(imageRecord{Version: imageRecordVersion, Images: m}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	if err := atomicfile.WriteFile(s.recordPath(), b, 0o644); err != nil {
		return fmt.Errorf("write image record: %w", err)
	}
	return nil
}

// validSHA256 reports whether s is 64 lowercase hex digits.
func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// ensureImage makes app's image present: pulled, or loaded from a verified tar.
func (r *Reconciler) ensureImage(ctx context.Context, app *spec.App, kind Kind, repo fs.FS) error {
	ref := app.Image.Ref
	switch kind {
	case KindPull:
		if err := r.pull(ctx, ref); err != nil {
			return &AppError{App: app.Name, Field: "image.ref", Code: ReasonImagePullFailed, Err: err}
		}
		return nil
	case KindLoad:
		return r.load(ctx, app, repo)
	}
	return nil
}

func (r *Reconciler) pull(ctx context.Context, ref string) error {
	rc, err := r.eng.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return fmt.Errorf("pull %q: %w", ref, err)
	}
	defer rc.Close()
	if err := jsonStreamErr(rc); err != nil {
		return fmt.Errorf("pull %q: %w", ref, err)
	}
	ins, err := r.eng.ImageInspect(ctx, ref)
	if err != nil {
		return fmt.Errorf("pull %q: inspect after pull: %w", ref, err)
	}
	return r.images.update(func(m map[string]loadedImage) { m[ref] = loadedImage{ID: ins.ID} })
}

// load verifies the app's image tar against its sha256, then hands it to ImageLoad.
func (r *Reconciler) load(ctx context.Context, app *spec.App, repo fs.FS) error {
	src := app.Image.Source
	ref := app.Image.Ref
	fail := func(field, reason string, err error) error {
		return &AppError{App: app.Name, Field: field, Code: reason, Err: err}
	}
	if !validSHA256(src.SHA256) {
		return fail("image.source.sha256", ReasonSpecInvalid, fmt.Errorf("%q is not 64 lowercase hex digits", src.SHA256))
	}
	var open func() (io.ReadCloser, error)
	field := "image.source.path"
	switch {
	case src.Path != "":
		if repo == nil {
			return fail(field, ReasonImageMissing, errors.New("no fleet repo to load the image tar from"))
		}
		p := path.Clean(strings.TrimPrefix(src.Path, "/"))
		if !fs.ValidPath(p) {
			return fail(field, ReasonSpecInvalid, fmt.Errorf("%q is not a path inside the fleet repo", src.Path))
		}
		open = func() (io.ReadCloser, error) { return repo.Open(p) }
		sum, err := hashOf(open)
		if err != nil {
			return fail(field, ReasonImageMissing, err)
		}
		if sum != src.SHA256 {
			return fail("image.source.sha256", ReasonImageVerifyFailed, fmt.Errorf("%w: %s has sha256 %s, spec says %s", ErrImageVerify, src.Path, sum, src.SHA256))
		}
	case src.URL != "":
		field = "image.source.url"
		p, err := r.download(ctx, src.URL, src.SHA256)
		if err != nil {
			reason := ReasonImageDownloadFailed
			if errors.Is(err, ErrImageVerify) {
				reason, field = ReasonImageVerifyFailed, "image.source.sha256"
			}
			return fail(field, reason, err)
		}
		open = func() (io.ReadCloser, error) { return os.Open(p) }
	default:
		return fail("image.source", ReasonSpecInvalid, errors.New("neither path nor url"))
	}
	f, err := open()
	if err != nil {
		return fail(field, ReasonImageMissing, err)
	}
	defer f.Close()
	resp, err := r.eng.ImageLoad(ctx, f, client.ImageLoadWithQuiet(true))
	if err != nil {
		return fail(field, ReasonImageLoadFailed, fmt.Errorf("load: %w", err))
	}
	err = jsonStreamErr(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fail(field, ReasonImageLoadFailed, fmt.Errorf("load: %w", err))
	}
	ins, err := r.eng.ImageInspect(ctx, ref)
	if err != nil {
		return fail("image.ref", ReasonImageMissing, fmt.Errorf("the tar did not provide %q: %w", ref, err))
	}
	if err := r.images.update(func(m map[string]loadedImage) { m[ref] = loadedImage{SHA256: src.SHA256, ID: ins.ID} }); err != nil {
		return fail(field, ReasonStateWriteFailed, err)
	}
	return nil
}

func hashOf(open func() (io.ReadCloser, error)) (string, error) {
	f, err := open()
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// download fetches url into the image cache as <sha256>.tar, verified; a tar
// already cached is reused.
func (r *Reconciler) download(ctx context.Context, url, want string) (string, error) {
	if r.o.ImageCache == "" {
		return "", errors.New("no image cache directory configured")
	}
	dst := filepath.Join(r.o.ImageCache, want+".tar")
	if sum, err := hashOf(func() (io.ReadCloser, error) { return os.Open(dst) }); err == nil && sum == want {
		return dst, nil
	}
	if err := os.MkdirAll(r.o.ImageCache, 0o755); err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := r.o.HTTPClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("download: %s", resp.Status)
	}
	tmp, err := os.CreateTemp(r.o.ImageCache, ".download-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(tmp, h), resp.Body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("download: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return "", fmt.Errorf("%w: download has sha256 %s, spec says %s", ErrImageVerify, got, want)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, atomicfile.SyncDir(r.o.ImageCache)
}

// prune removes images Shoal brought in that no wanted app references any more.
// An image still used by a container is left for a later pass.
func (r *Reconciler) prune(ctx context.Context, ref string) error {
	_, err := r.eng.ImageRemove(ctx, ref, image.RemoveOptions{})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("prune image %q: %w", ref, err)
	}
	return r.images.update(func(m map[string]loadedImage) { delete(m, ref) })
}

// jsonStreamErr drains a Docker JSON message stream and returns its first error.
func jsonStreamErr(rd io.Reader) error {
	dec := json.NewDecoder(bufio.NewReader(rd))
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
		if m.ErrorDetail.Message != "" {
			return errors.New(m.ErrorDetail.Message)
		}
	}
}
