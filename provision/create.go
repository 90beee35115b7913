package provision

import (
	"archive/tar"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/docker/client"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"

	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/spec"
)

// ImageSaver writes image tars from the operator's Docker Engine (docker
// save); *client.Client satisfies it.
type ImageSaver interface {
	ImageSave(ctx context.Context, imageIDs []string, opts ...client.ImageSaveOption) (io.ReadCloser, error)
}

// CreateOptions say what goes into a bundle.
type CreateOptions struct {
	FleetDir string // a checkout of the fleet repo
	Rev      string // the commit to carry; "" means HEAD
	Ref      string // the ref the device follows; "" means refs/heads/main
	// Devices to provision, or Group: every device whose render matched it.
	Devices []string
	Group   string
	RepoURL string            // the fleet repo's URL, for the device config
	HubURL  string            // the hub the device enrols with
	HubCA   string            // hex sha256 of the hub CA certificate (shoal token create prints it)
	Tokens  map[string]string // enrolment tokens by device ID
	// Hardware maps hardware IDs to device IDs for group bundles.
	Hardware map[string]string
	// Key signs the bundle; its public half is always among the trust roots.
	Key        ed25519.PrivateKey
	BundleKeys []ed25519.PublicKey // further keys later bundles may be signed with
	// ReleaseKeys (PEM) and CommitSigners (authorized_keys) become trust roots.
	ReleaseKeys   string
	CommitSigners string
	// Release adds the devices' OS release image. ReleaseFile overrides
	// where it is read from (else the release's url: a path in the fleet
	// repo, a file:// URL or a local path).
	Release     bool
	ReleaseFile string
	// DeltaIndex, with Release, carries the release's delta instead of its
	// image: the chunk index file (its sha256 must be the release's
	// delta.sha256) and DeltaChunks, the chunk files under DeltaStore
	// (<4 hex>/<id>.cacnk) the devices lack; the operator CLI picks them.
	DeltaIndex  string
	DeltaStore  string
	DeltaChunks []string
	// ImageDir holds <sha256>.tar files for apps whose image has a url source.
	ImageDir string
	// Images saves images that apps pull by reference; nil leaves them out
	// (the device then pulls them when it has a network).
	Images   ImageSaver
	TempDir  string                  // spool for saved images and the git bundle; "" means os.TempDir
	Progress func(done, total int64) // called as bytes are written
	Now      func() time.Time
	Logger   *slog.Logger
}

type srcFile struct {
	Member
	path string
}

// Create writes a bundle to w and returns its manifest.
func Create(ctx context.Context, w io.Writer, o CreateOptions) (*Manifest, error) {
	if o.Key == nil {
		return nil, errors.New("create bundle: a bundle key is required")
	}
	if (len(o.Devices) == 0) == (o.Group == "") {
		return nil, errors.New("create bundle: give devices or a group, not both")
	}
	if o.Rev == "" {
		o.Rev = "HEAD"
	}
	if o.Ref == "" {
		o.Ref = "refs/heads/main"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	tree, commit, err := gitfs.Open(o.FleetDir, o.Rev)
	if err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	fleet, err := spec.Load(tree)
	if err != nil {
		return nil, fmt.Errorf("create bundle: fleet at %s: %w", short(commit), err)
	}
	devs, err := devicesFor(fleet, o.Devices, o.Group)
	if err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	tmp, err := os.MkdirTemp(o.TempDir, "shoal-bundle-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	var members []srcFile
	gitPath := filepath.Join(tmp, "fleet.bundle")
	if err := makeGitBundle(o.FleetDir, commit, o.Ref, gitPath); err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	gm, err := fileMember(gitPath, "git/fleet.bundle", KindGit)
	if err != nil {
		return nil, err
	}
	members = append(members, gm)

	imgs, err := o.images(ctx, devs, tmp)
	if err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	members = append(members, imgs...)

	m := &Manifest{
		Version:  FormatVersion,
		Created:  o.Now().UTC(),
		Seq:      uint64(o.Now().UnixNano()),
		Group:    o.Group,
		Commit:   commit,
		Ref:      o.Ref,
		RepoURL:  o.RepoURL,
		HubURL:   o.HubURL,
		HubCA:    strings.ToLower(o.HubCA),
		Tokens:   o.Tokens,
		Hardware: o.Hardware,
		Trust:    TrustRoots{ReleaseKeys: o.ReleaseKeys, CommitSigners: o.CommitSigners},
	}
	for _, d := range devs {
		m.Devices = append(m.Devices, d.ID)
	}
	for _, k := range append([]ed25519.PublicKey{o.Key.Public().(ed25519.PublicKey)}, o.BundleKeys...) {
		p, err := MarshalPublicKey(k)
		if err != nil {
			return nil, err
		}
		m.Trust.BundleKeys = append(m.Trust.BundleKeys, string(p))
	}
	switch {
	case o.Release && o.DeltaIndex != "":
		rel, mems, err := o.deltaRelease(devs)
		if err != nil {
			return nil, fmt.Errorf("create bundle: %w", err)
		}
		m.Release = rel
		members = append(members, mems...)
	case o.Release:
		rel, mem, err := o.release(tree, devs)
		if err != nil {
			return nil, fmt.Errorf("create bundle: %w", err)
		}
		m.Release = rel
		members = append(members, mem)
	}
	for _, s := range members {
		m.Members = append(m.Members, s.Member)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	env, _, err := sign(m, o.Key)
	if err != nil {
		return nil, err
	}
	if err := writeTar(ctx, w, env, members, o.Progress); err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	o.Logger.Info("bundle written", "commit", commit, "devices", m.Devices, "members", len(m.Members))
	return m, nil
}

func devicesFor(f *spec.Fleet, ids []string, group string) ([]*spec.Device, error) {
	var out []*spec.Device
	if group == "" {
		for _, id := range ids {
			d, err := f.Render(id)
			if err != nil {
				return nil, fmt.Errorf("render device %q: %w", id, err)
			}
			out = append(out, d)
		}
		return out, nil
	}
	for _, id := range f.DeviceIDs() {
		d, err := f.Render(id)
		if err != nil {
			return nil, fmt.Errorf("render device %q: %w", id, err)
		}
		for _, g := range d.Groups {
			if g == group {
				out = append(out, d)
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("group %q matches no device", group)
	}
	return out, nil
}

// images gathers the image tars the devices' apps need: url-sourced tars
// from ImageDir (checked against the spec's sha256), pulled references
// saved from the Engine. Tars in the fleet repo travel in the git bundle.
func (o *CreateOptions) images(ctx context.Context, devs []*spec.Device, tmp string) ([]srcFile, error) {
	byName := map[string]*srcFile{}
	var order []string
	add := func(s srcFile, ref string) {
		if have, ok := byName[s.Name]; ok {
			if !contains(have.Refs, ref) {
				have.Refs = append(have.Refs, ref)
			}
			return
		}
		s.Refs = []string{ref}
		byName[s.Name] = &s
		order = append(order, s.Name)
	}
	saved := map[string]bool{}
	for _, d := range devs {
		for _, app := range d.Apps {
			src := app.Image.Source
			switch {
			case src != nil && src.Path != "":
				continue
			case src != nil && src.URL != "":
				if o.ImageDir == "" {
					return nil, fmt.Errorf("app %q: image %s comes from a url; give --image-dir holding %s.tar", app.Name, app.Image.Ref, src.SHA256)
				}
				s, err := fileMember(filepath.Join(o.ImageDir, src.SHA256+".tar"), "images/"+src.SHA256+".tar", KindImage)
				if err != nil {
					return nil, fmt.Errorf("app %q: %w", app.Name, err)
				}
				if s.SHA256 != src.SHA256 {
					return nil, fmt.Errorf("app %q: %s has sha256 %s, spec says %s", app.Name, s.path, s.SHA256, src.SHA256)
				}
				add(s, app.Image.Ref)
			case o.Images != nil:
				if saved[app.Image.Ref] {
					continue
				}
				saved[app.Image.Ref] = true
				s, err := saveImage(ctx, o.Images, app.Image.Ref, tmp)
				if err != nil {
					return nil, fmt.Errorf("app %q: %w", app.Name, err)
				}
				add(s, app.Image.Ref)
			default:
				o.Logger.Warn("image left out: no Docker Engine to save it from; the device pulls it when online", "app", app.Name, "image", app.Image.Ref)
			}
		}
	}
	out := make([]srcFile, 0, len(order))
	for _, n := range order {
		out = append(out, *byName[n])
	}
	return out, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// saveImage spools `docker save ref` to a temp file, hashing it on the way.
func saveImage(ctx context.Context, eng ImageSaver, ref, tmp string) (srcFile, error) {
	rc, err := eng.ImageSave(ctx, []string{ref})
	if err != nil {
		return srcFile{}, fmt.Errorf("save image %s: %w", ref, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(tmp, "image-*.tar")
	if err != nil {
		return srcFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(f, h), rc, make([]byte, copyBuf))
	if err != nil {
		return srcFile{}, fmt.Errorf("save image %s: %w", ref, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	return srcFile{Member: Member{Name: "images/" + sum + ".tar", Kind: KindImage, Size: n, SHA256: sum}, path: f.Name()}, nil
}

// deltaRelease gathers a delta release's index and the chunks the devices
// lack, as members.
func (o *CreateOptions) deltaRelease(devs []*spec.Device) (*spec.Release, []srcFile, error) {
	rel, err := sameRelease(devs)
	if err != nil {
		return nil, nil, err
	}
	if rel.Delta == nil {
		return nil, nil, fmt.Errorf("release %s has no delta to carry", rel.Version)
	}
	idx, err := fileMember(o.DeltaIndex, "release/"+sanitizeName(rel.Name+"-"+rel.Version)+".caibx", KindDeltaIndex)
	if err != nil {
		return nil, nil, fmt.Errorf("release %s: %w", rel.Version, err)
	}
	if !strings.EqualFold(idx.SHA256, rel.Delta.SHA256) {
		return nil, nil, fmt.Errorf("release %s: index %s has sha256 %s, the release signs %s", rel.Version, o.DeltaIndex, idx.SHA256, rel.Delta.SHA256)
	}
	out := []srcFile{idx}
	for _, c := range o.DeltaChunks {
		s, err := fileMember(filepath.Join(o.DeltaStore, filepath.FromSlash(c)), "chunks/"+c, KindChunk)
		if err != nil {
			return nil, nil, fmt.Errorf("release %s: chunk: %w", rel.Version, err)
		}
		out = append(out, s)
	}
	c := *rel
	return &c, out, nil
}

// sameRelease is the release every device runs.
func sameRelease(devs []*spec.Device) (*spec.Release, error) {
	var rel *spec.Release
	for _, d := range devs {
		switch {
		case d.Release == nil:
			return nil, fmt.Errorf("device %q has no release", d.ID)
		case rel != nil && rel.Version != d.Release.Version:
			return nil, fmt.Errorf("devices run different releases (%s, %s): make one bundle per release", rel.Version, d.Release.Version)
		}
		rel = d.Release
	}
	return rel, nil
}

// release finds the devices' OS release image; every device must run the same one.
func (o *CreateOptions) release(tree fs.FS, devs []*spec.Device) (*spec.Release, srcFile, error) {
	rel, err := sameRelease(devs)
	if err != nil {
		return nil, srcFile{}, err
	}
	name := "release/" + sanitizeName(rel.Name+"-"+rel.Version) + ".img"
	var s srcFile
	switch {
	case o.ReleaseFile != "":
		s, err = fileMember(o.ReleaseFile, name, KindRelease)
	case strings.HasPrefix(rel.URL, "http://"), strings.HasPrefix(rel.URL, "https://"):
		return nil, srcFile{}, fmt.Errorf("release %s is at %s: download it and give its file", rel.Version, rel.URL)
	case strings.HasPrefix(rel.URL, "file://"):
		s, err = fileMember(strings.TrimPrefix(rel.URL, "file://"), name, KindRelease)
	default:
		s, err = treeMember(tree, path.Clean(strings.TrimPrefix(rel.URL, "/")), name, filepath.Join(o.TempDir))
	}
	if err != nil {
		return nil, srcFile{}, fmt.Errorf("release %s: %w", rel.Version, err)
	}
	if s.SHA256 != rel.SHA256 {
		return nil, srcFile{}, fmt.Errorf("release %s: image has sha256 %s, release says %s", rel.Version, s.SHA256, rel.SHA256)
	}
	c := *rel
	return &c, s, nil
}

func sanitizeName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_', r == '+':
			return r
		}
		return '_'
	}, s)
}

// treeMember copies a file of the fleet repo tree to a temp file.
func treeMember(tree fs.FS, p, name, tmp string) (srcFile, error) {
	in, err := tree.Open(p)
	if err != nil {
		return srcFile{}, err
	}
	defer in.Close()
	f, err := os.CreateTemp(tmp, "release-*")
	if err != nil {
		return srcFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(f, h), in, make([]byte, copyBuf))
	if err != nil {
		return srcFile{}, err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	return srcFile{Member: Member{Name: name, Kind: KindRelease, Size: n, SHA256: sum}, path: f.Name()}, nil
}

// fileMember hashes a file for the manifest.
func fileMember(p, name, kind string) (srcFile, error) {
	f, err := os.Open(p)
	if err != nil {
		return srcFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, copyBuf))
	if err != nil {
		return srcFile{}, fmt.Errorf("hash %s: %w", p, err)
	}
	return srcFile{Member: Member{Name: name, Kind: kind, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, path: p}, nil
}

func makeGitBundle(dir, commit, ref, out string) error {
	repo, err := git.PlainOpenWithOptions(dir, &git.PlainOpenOptions{DetectDotGit: true})
	if err != nil {
		return fmt.Errorf("open fleet repo %s: %w", dir, err)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := writeGitBundle(repo, plumbing.NewHash(commit), ref, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeTar writes the envelope and then each member, re-checking each file
// against the hash taken for the manifest, so a file that changed in between
// fails here and not on a device.
func writeTar(ctx context.Context, w io.Writer, env []byte, members []srcFile, progress func(done, total int64)) error {
	total := int64(len(env))
	for _, s := range members {
		total += s.Size
	}
	var done int64
	tick := func(n int) {
		done += int64(n)
		if progress != nil {
			progress(done, total)
		}
	}
	tw := tar.NewWriter(w)
	mod := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Name: EnvelopeName, Mode: 0o644, Size: int64(len(env)), ModTime: mod, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := tw.Write(env); err != nil {
		return err
	}
	tick(len(env))
	buf := make([]byte, copyBuf)
	for _, s := range members {
		if err := tw.WriteHeader(&tar.Header{Name: s.Name, Mode: 0o644, Size: s.Size, ModTime: mod, Format: tar.FormatPAX}); err != nil {
			return err
		}
		f, err := os.Open(s.path)
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = copyCtx(ctx, io.MultiWriter(tw, h, progressWriter(tick)), io.LimitReader(f, s.Size), buf)
		f.Close()
		if err != nil {
			return fmt.Errorf("member %s: %w", s.Name, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != s.SHA256 {
			return fmt.Errorf("member %s: %s changed while the bundle was written", s.Name, s.path)
		}
	}
	return tw.Close()
}

type progressWriter func(int)

func (p progressWriter) Write(b []byte) (int, error) { p(len(b)); return len(b), nil }
