package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/shoalfleet/shoal/internal/imagetar"
	"github.com/shoalfleet/shoal/spec"
)

// checkImageTars checks every image tar in the fleet repo at dir that a
// rendered device would load (image.source.path): that its sha256 is the
// one the spec gives and that it holds the tag image.ref names, so a wrong
// tar is caught before any device sees it. Each problem names the app's file
// and line.
func checkImageTars(dir string, f *spec.Fleet, results []spec.Result) spec.Errors {
	type use struct {
		app, ref, sha string
		devices       []string
	}
	uses := map[string]*use{} // by app, path, sha256 and ref
	for _, r := range results {
		if r.Device == nil {
			continue
		}
		for _, a := range r.Device.Apps {
			src := a.Image.Source
			if src == nil || src.Path == "" {
				continue
			}
			k := strings.Join([]string{a.Name, src.Path, src.SHA256, a.Image.Ref}, "\x00")
			if uses[k] == nil {
				uses[k] = &use{app: a.Name, ref: a.Image.Ref, sha: src.SHA256}
			}
			uses[k].devices = append(uses[k].devices, r.ID)
		}
	}
	keys := make([]string, 0, len(uses))
	for k := range uses {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs spec.Errors
	tars := map[string]tarInfo{}
	for _, k := range keys {
		u := uses[k]
		p := strings.Split(k, "\x00")[1]
		info, ok := tars[p]
		if !ok {
			info = readTar(dir, p)
			tars[p] = info
		}
		who := ""
		if len(u.devices) < len(results) {
			who = fmt.Sprintf(" (devices %s)", strings.Join(u.devices, ", "))
		}
		switch {
		case info.err != nil:
			errs = append(errs, f.AppFieldError(u.app, "image.source.path", info.err.Error()+who))
		case info.sha != u.sha:
			errs = append(errs, f.AppFieldError(u.app, "image.source.sha256",
				fmt.Sprintf("%s has sha256 %s, not %s%s", p, info.sha, u.sha, who)))
		case info.refsErr != nil:
			errs = append(errs, f.AppFieldError(u.app, "image.source.path", fmt.Sprintf("%s: %v%s", p, info.refsErr, who)))
		case !imagetar.Holds(info.refs, u.ref):
			held := "no tag"
			if len(info.refs) > 0 {
				held = strings.Join(info.refs, ", ")
			}
			errs = append(errs, f.AppFieldError(u.app, "image.ref",
				fmt.Sprintf("%s does not hold %s (it holds %s): docker save -o %s %s makes one that does%s", p, imagetar.Familiar(u.ref), held, p, imagetar.Familiar(u.ref), who)))
		}
	}
	return errs
}

type tarInfo struct {
	sha     string
	refs    []string
	err     error // the file cannot be read
	refsErr error // it is not an image tar
}

// readTar hashes the file at p (relative to the repo root dir) and reads the
// image references it holds, in one pass.
func readTar(dir, p string) tarInfo {
	clean := path.Clean(strings.TrimPrefix(p, "/"))
	if !fs.ValidPath(clean) {
		return tarInfo{err: fmt.Errorf("%q is not a path inside the fleet repo", p)}
	}
	fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(clean)))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return tarInfo{err: fmt.Errorf("%s: no such file in the fleet repo", p)}
		}
		return tarInfo{err: err}
	}
	defer fh.Close()
	h := sha256.New()
	refs, rerr := imagetar.Refs(io.TeeReader(fh, h))
	// Hash what the tar reader left (padding, or all of a file that is no tar).
	if _, err := io.Copy(h, fh); err != nil {
		return tarInfo{err: err}
	}
	if rerr != nil && !errors.Is(rerr, imagetar.ErrNotImage) {
		rerr = fmt.Errorf("not an image tar: %w", rerr)
	}
	return tarInfo{sha: hex.EncodeToString(h.Sum(nil)), refs: refs, refsErr: rerr}
}
