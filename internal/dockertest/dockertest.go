// Package dockertest gives tests a real Docker Engine to work against: a client
// (or a skip/fail through testenv when there is none), tiny FROM-scratch images
// built from the testapp program with no registry, and cleanup of everything a
// test created, found by a per-test label.
//
// Only tests import it.
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
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
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// LabelKey is the label every Docker object a test creates carries; its value
// is unique to the test, so Cleanup removes that test's objects and no others.
const LabelKey = "io.shoal.test"

// AppBinary is where testapp lives inside the images Image builds.
const AppBinary = "/app"

// Client connects to the Engine named by the environment (DOCKER_HOST or the
// default socket) and pings it; with no Engine the test is skipped, or fails
// under SHOAL_REQUIRE_REAL=1.
func Client(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		testenv.Missing(t, "Docker Engine", "apt-get install docker.io ("+err.Error()+")")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		cli.Close()
		testenv.Missing(t, "Docker Engine", "apt-get install docker.io and start dockerd ("+err.Error()+")")
		return nil
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Label returns a label value unique to this test run and registers a cleanup
// that removes every container, network, volume and image carrying it.
func Label(t testing.TB, cli *client.Client) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	v := sanitize(t.Name()) + "-" + hex.EncodeToString(b[:])
	t.Cleanup(func() { Cleanup(t, cli, v) })
	return v
}

// Labels returns {LabelKey: value}, ready for an options struct.
func Labels(value string) map[string]string { return map[string]string{LabelKey: value} }

// Cleanup removes containers, networks, volumes and images labelled LabelKey=value.
// Failures are reported with t.Errorf so a leak is never silent.
func Cleanup(t testing.TB, cli *client.Client, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := RemoveLabelled(ctx, cli, value); err != nil {
		t.Errorf("dockertest cleanup: %v", err)
	}
}

// RemoveLabelled removes containers, networks, volumes and images labelled
// LabelKey=value, returning every failure joined.
func RemoveLabelled(ctx context.Context, cli *client.Client, value string) error {
	var errs []error
	f := filters.NewArgs(filters.Arg("label", LabelKey+"="+value))
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		errs = append(errs, fmt.Errorf("list containers: %w", err))
	}
	for _, c := range cs {
		if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove container %s: %w", c.ID[:12], err))
		}
	}
	ns, err := cli.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		errs = append(errs, fmt.Errorf("list networks: %w", err))
	}
	for _, n := range ns {
		if err := cli.NetworkRemove(ctx, n.ID); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove network %s: %w", n.Name, err))
		}
	}
	vs, err := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		errs = append(errs, fmt.Errorf("list volumes: %w", err))
	}
	for _, v := range vs.Volumes {
		if err := cli.VolumeRemove(ctx, v.Name, true); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove volume %s: %w", v.Name, err))
		}
	}
	is, err := cli.ImageList(ctx, image.ListOptions{All: true, Filters: f})
	if err != nil {
		errs = append(errs, fmt.Errorf("list images: %w", err))
	}
	for _, im := range is {
		if _, err := cli.ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove image %s: %w", im.ID, err))
		}
	}
	return errors.Join(errs...)
}

var (
	binOnce sync.Once
	binData []byte
	binErr  error
)

// appBinary compiles testapp once per test process, static so it runs FROM scratch.
func appBinary() ([]byte, error) {
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dockertest-")
		if err != nil {
			binErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "app")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "github.com/shoalfleet/shoal/internal/dockertest/testapp")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("build testapp: %v: %s", err, b)
			return
		}
		binData, binErr = os.ReadFile(out)
	})
	return binData, binErr
}

// Image builds a FROM-scratch image holding testapp at AppBinary, tagged tag and
// labelled LabelKey=label plus extra (a different extra label gives a different
// image ID for the same program). It returns the image ID; Cleanup removes it.
func Image(t testing.TB, cli *client.Client, tag, label string, extra map[string]string) string {
	t.Helper()
	labels := map[string]string{LabelKey: label}
	for k, v := range extra {
		labels[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id, err := BuildImage(ctx, cli, tag, labels)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// SaveImage returns image tag as a tar (docker save), and the tar's sha256
// in hex: what a fleet repo ships under apps' image.source.
func SaveImage(t testing.TB, cli *client.Client, tag string) ([]byte, string) {
	t.Helper()
	rc, err := cli.ImageSave(context.Background(), []string{tag})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// BuildImage is Image for callers with no testing.TB (TestMain, benchmarks
// programs): it builds the testapp image tagged tag with labels and returns its ID.
func BuildImage(ctx context.Context, cli *client.Client, tag string, labels map[string]string) (string, error) {
	bin, err := appBinary()
	if err != nil {
		return "", err
	}
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	dockerfile := "FROM scratch\nCOPY app " + AppBinary + "\nENTRYPOINT [\"" + AppBinary + "\"]\n"
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, []byte(dockerfile)}, {"app", 0o755, bin}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			return "", err
		}
		if _, err := tw.Write(f.data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	resp, err := cli.ImageBuild(ctx, &ctxTar, build.ImageBuildOptions{
		Tags: []string{tag}, Labels: labels, Remove: true, ForceRemove: true,
	})
	if err != nil {
		return "", fmt.Errorf("build image %s: %w", tag, err)
	}
	defer resp.Body.Close()
	if err := buildErr(resp.Body); err != nil {
		return "", fmt.Errorf("build image %s: %w", tag, err)
	}
	ins, err := cli.ImageInspect(ctx, tag)
	if err != nil {
		return "", fmt.Errorf("inspect built image %s: %w", tag, err)
	}
	return ins.ID, nil
}

// buildErr reads the build's JSON message stream and returns the first error in it.
func buildErr(r io.Reader) error {
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
			return fmt.Errorf("%s", m.Error)
		}
	}
}

// sanitize makes a test name usable inside a label value and an image tag.
func sanitize(name string) string {
	name = strings.ToLower(name)
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := b.String()
	if len(s) > 40 {
		s = s[len(s)-40:]
	}
	return strings.Trim(s, "-")
}
