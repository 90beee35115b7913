package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// app is one example program and how its image is made.
type app struct {
	name string
	// dirs are empty directories the build context holds for the
	// Dockerfile to COPY (with the ownership the program runs as).
	dirs []string
}

// apps are the example fleet's programs, each in examples/<name> with its
// Dockerfile, its binary named like it.
var apps = []app{
	{name: "sensor-aggregator", dirs: []string{"state"}},
	{name: "metrics-exporter"},
}

func appNames() []string {
	out := make([]string, len(apps))
	for i, a := range apps {
		out[i] = a.name
	}
	return out
}

func appByName(name string) *app {
	for i := range apps {
		if apps[i].name == name {
			return &apps[i]
		}
	}
	return nil
}

// engine is the part of the Docker Engine API the builder calls.
type engine interface {
	ServerVersion(ctx context.Context) (types.Version, error)
	ImageBuild(ctx context.Context, buildContext io.Reader, options build.ImageBuildOptions) (build.ImageBuildResponse, error)
	ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImageSave(ctx context.Context, refs []string, opts ...client.ImageSaveOption) (io.ReadCloser, error)
}

type builder struct {
	eng engine
	o   options
	log io.Writer // progress, one line a step
}

// built is one image, and its tar once saved.
type built struct {
	App, Ref, ID string
	Size         int64  // the image's size in the Engine
	Tar          string // path of the saved tar; "" until saved
	SHA256       string
	TarSize      int64
}

func (b *builder) say(format string, args ...any) {
	if b.log != nil {
		fmt.Fprintf(b.log, format+"\n", args...)
	}
}

// buildAll builds every requested app's image.
func (b *builder) buildAll(ctx context.Context) ([]built, error) {
	root := b.o.root
	if root == "" {
		var err error
		if root, err = findRoot(); err != nil {
			return nil, err
		}
	}
	goarch := b.o.goarch
	if goarch == "" {
		v, err := b.eng.ServerVersion(ctx)
		if err != nil {
			return nil, fmt.Errorf("docker engine: %w", err)
		}
		goarch = v.Arch
	}
	bin, err := os.MkdirTemp("", "shoal-imagebuild-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bin)
	var out []built
	for _, name := range b.o.apps {
		a := appByName(name)
		ref := b.o.refPrefix + a.name + ":" + b.o.tag
		b.say("building %s (go build, GOARCH=%s) and image %s", a.name, goarch, ref)
		exe := filepath.Join(bin, a.name)
		if err := goBuild(ctx, root, "./examples/"+a.name, exe, goarch); err != nil {
			return nil, err
		}
		im, err := b.image(ctx, root, a, exe, ref)
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return out, nil
}

// goBuild builds pkg static and stripped for goarch.
func goBuild(ctx context.Context, root, pkg, out, goarch string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if goarch == "arm" {
		cmd.Env = append(cmd.Env, "GOARM=7")
	}
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, o)
	}
	return nil
}

// image builds a's image from its Dockerfile, the binary exe and a's empty
// directories, through the Engine's build API.
func (b *builder) image(ctx context.Context, root string, a *app, exe, ref string) (built, error) {
	dockerfile, err := os.ReadFile(filepath.Join(root, "examples", a.name, "Dockerfile"))
	if err != nil {
		return built{}, err
	}
	binary, err := os.ReadFile(exe)
	if err != nil {
		return built{}, err
	}
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	epoch := time.Unix(0, 0)
	for _, d := range a.dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch}); err != nil {
			return built{}, err
		}
	}
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, dockerfile}, {a.name, 0o755, binary}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: epoch}); err != nil {
			return built{}, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return built{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return built{}, err
	}
	resp, err := b.eng.ImageBuild(ctx, &ctxTar, build.ImageBuildOptions{
		Tags: []string{ref}, Labels: b.o.labels, Remove: true, ForceRemove: true,
	})
	if err != nil {
		return built{}, fmt.Errorf("build image %s: %w", ref, err)
	}
	err = buildStream(resp.Body)
	resp.Body.Close()
	if err != nil {
		return built{}, fmt.Errorf("build image %s: %w", ref, err)
	}
	ins, err := b.eng.ImageInspect(ctx, ref)
	if err != nil {
		return built{}, fmt.Errorf("inspect image %s: %w", ref, err)
	}
	return built{App: a.name, Ref: ref, ID: ins.ID, Size: ins.Size}, nil
}

// buildStream reads the build's JSON messages and returns the first error.
func buildStream(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}

// save writes ref's image as a tar (docker save format) to path atomically
// and returns its sha256 and size.
func (b *builder) save(ctx context.Context, ref, path string) (string, int64, error) {
	rc, err := b.eng.ImageSave(ctx, []string{ref})
	if err != nil {
		return "", 0, fmt.Errorf("save image %s: %w", ref, err)
	}
	defer rc.Close()
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", 0, err
	}
	f, err := os.CreateTemp(dir, ".imagebuild-*")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), rc)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return "", 0, fmt.Errorf("save image %s to %s: %w", ref, path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// writeFleet saves each image to fleet/images/<app>.tar and points
// fleet/apps/<app>.yaml at it.
func (b *builder) writeFleet(ctx context.Context, imgs []built) error {
	for i := range imgs {
		im := &imgs[i]
		rel := "images/" + im.App + ".tar"
		im.Tar = filepath.Join(b.o.fleet, filepath.FromSlash(rel))
		var err error
		if im.SHA256, im.TarSize, err = b.save(ctx, im.Ref, im.Tar); err != nil {
			return err
		}
		appFile := filepath.Join(b.o.fleet, "apps", im.App+".yaml")
		src, err := os.ReadFile(appFile)
		if err != nil {
			return err
		}
		out, err := setImage(src, im.Ref, rel, im.SHA256)
		if err != nil {
			return fmt.Errorf("%s: %w", appFile, err)
		}
		if err := os.WriteFile(appFile, out, 0o644); err != nil {
			return err
		}
		b.say("saved %s to %s (sha256 %s, %d bytes); %s points at it", im.Ref, rel, im.SHA256[:12], im.TarSize, "apps/"+im.App+".yaml")
	}
	return nil
}

// setImage sets image.ref, image.source.path and image.source.sha256 in an
// app file, adding the source block when there is none, and keeps every
// other line (comments included) as it is. The image block must be the
// block style the example's files use: "image:" at the left margin, its
// keys two spaces in, source's four.
func setImage(src []byte, ref, path, sum string) ([]byte, error) {
	lines := strings.Split(string(src), "\n")
	indentOf := func(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }
	blank := func(l string) bool { t := strings.TrimSpace(l); return t == "" || strings.HasPrefix(t, "#") }
	key := func(l string) string { k, _, _ := strings.Cut(strings.TrimSpace(l), ":"); return k }
	start := -1
	for i, l := range lines {
		if l == "image:" || strings.HasPrefix(l, "image:") && blank(strings.TrimPrefix(l, "image:")) {
			start = i
		}
	}
	if start < 0 {
		return nil, errors.New("no image block (\"image:\" at the left margin, its keys indented two spaces)")
	}
	end := start + 1
	for end < len(lines) && (blank(lines[end]) || indentOf(lines[end]) >= 2) {
		end++
	}
	refLine, srcLine := -1, -1
	children := map[string]int{}
	for i := start + 1; i < end; i++ {
		l := lines[i]
		if blank(l) {
			continue
		}
		switch ind := indentOf(l); {
		case ind == 2 && key(l) == "ref":
			refLine = i
		case ind == 2 && key(l) == "source":
			srcLine = i
		case ind == 4 && srcLine >= 0 && i > srcLine:
			children[key(l)] = i
		}
	}
	if refLine < 0 {
		return nil, errors.New("no image.ref line")
	}
	if _, ok := children["url"]; ok {
		return nil, errors.New("image.source has a url: remove it to ship the image in the repo")
	}
	lines[refLine] = "  ref: " + ref
	// Replace what is there, then insert what is not, below "  source:".
	var missing []string
	if strings.Trim(sum, "0123456789") == "" {
		sum = `"` + sum + `"` // all digits would read as a number
	}
	for _, kv := range [][2]string{{"path", path}, {"sha256", sum}} {
		if i, ok := children[kv[0]]; ok {
			lines[i] = "    " + kv[0] + ": " + kv[1]
		} else {
			missing = append(missing, "    "+kv[0]+": "+kv[1])
		}
	}
	if srcLine < 0 {
		srcLine = refLine + 1
		missing = append([]string{"  source:"}, missing...)
		srcLine-- // insert the block right after the ref line
	}
	at := srcLine + 1
	lines = append(lines[:at], append(missing, lines[at:]...)...)
	return []byte(strings.Join(lines, "\n")), nil
}

// findRoot walks up from the working directory to the directory holding
// examples/ and go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "examples", "sensor-aggregator", "Dockerfile")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the Shoal repository (examples/sensor-aggregator/Dockerfile) is not here or above; run from it or pass -root")
		}
		dir = parent
	}
}
