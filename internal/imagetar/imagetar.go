// Package imagetar reads what a container image tar holds without loading
// it: the references it is tagged with, in the Docker Engine's `docker save`
// format (manifest.json, RepoTags) or an OCI image layout (index.json,
// org.opencontainers.image.ref.name and io.containerd.image.name
// annotations). `shoal validate` uses it to check image tars kept in a fleet
// repo before any device sees them.
package imagetar

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// ErrNotImage means the tar is neither a docker save archive nor an OCI
// image layout.
var ErrNotImage = errors.New("not an image tar (no manifest.json or index.json)")

// maxIndex bounds the JSON files read from a tar.
const maxIndex = 4 << 20

// Refs reads the tar from r to its end and returns the references its
// images are tagged with, as written (e.g. "riverside/app:1.0").
func Refs(r io.Reader) ([]string, error) {
	tr := tar.NewReader(r)
	var refs []string
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read image tar: %w", err)
		}
		switch path.Clean(strings.TrimPrefix(h.Name, "./")) {
		case "manifest.json":
			var m []struct {
				RepoTags []string `json:"RepoTags"`
			}
			if err := readJSON(tr, &m); err != nil {
				return nil, fmt.Errorf("manifest.json: %w", err)
			}
			found = true
			for _, e := range m {
				refs = append(refs, e.RepoTags...)
			}
		case "index.json":
			var idx struct {
				Manifests []struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"manifests"`
			}
			if err := readJSON(tr, &idx); err != nil {
				return nil, fmt.Errorf("index.json: %w", err)
			}
			found = true
			for _, m := range idx.Manifests {
				switch n, tag := m.Annotations["io.containerd.image.name"], m.Annotations["org.opencontainers.image.ref.name"]; {
				case n != "":
					refs = append(refs, n)
				case tag != "" && !strings.ContainsAny(tag, "/:"):
					// A bare tag, as the OCI layout spec writes it: the
					// repository is whatever the loader names it.
					refs = append(refs, "*:"+tag)
				case tag != "":
					refs = append(refs, tag)
				}
			}
		}
	}
	if !found {
		return nil, ErrNotImage
	}
	slices.Sort(refs)
	return slices.Compact(refs), nil
}

func readJSON(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, maxIndex+1))
	if err != nil {
		return err
	}
	if len(b) > maxIndex {
		return fmt.Errorf("larger than %d bytes", maxIndex)
	}
	return json.Unmarshal(b, v)
}

// Familiar writes ref as the Docker Engine names a loaded image: without a
// digest, with the tag (latest when none), without docker.io/library/.
func Familiar(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndexByte(ref, ':'); i < 0 || strings.Contains(ref[i:], "/") {
		ref += ":latest"
	}
	for _, p := range []string{"docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"} {
		if strings.HasPrefix(ref, p) {
			ref = ref[len(p):]
			break
		}
	}
	return ref
}

// Holds reports whether refs (from Refs) include ref, compared as the
// Engine would after loading the tar. A bare OCI tag ("*:1.0") matches any
// repository with that tag.
func Holds(refs []string, ref string) bool {
	want := Familiar(ref)
	for _, r := range refs {
		if tag, ok := strings.CutPrefix(r, "*:"); ok {
			if strings.HasSuffix(want, ":"+tag) {
				return true
			}
			continue
		}
		if Familiar(r) == want {
			return true
		}
	}
	return false
}
