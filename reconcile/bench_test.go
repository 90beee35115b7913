package reconcile

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/spec"
)

// writeCounter counts the Engine calls that change something.
type writeCounter struct {
	Engine
	n atomic.Int64
}

func (w *writeCounter) ContainerCreate(ctx context.Context, c *container.Config, h *container.HostConfig, n *network.NetworkingConfig, p *ocispec.Platform, name string) (container.CreateResponse, error) {
	w.n.Add(1)
	return w.Engine.ContainerCreate(ctx, c, h, n, p, name)
}
func (w *writeCounter) ContainerStart(ctx context.Context, id string, o container.StartOptions) error {
	w.n.Add(1)
	return w.Engine.ContainerStart(ctx, id, o)
}
func (w *writeCounter) ContainerStop(ctx context.Context, id string, o container.StopOptions) error {
	w.n.Add(1)
	return w.Engine.ContainerStop(ctx, id, o)
}
func (w *writeCounter) ContainerRemove(ctx context.Context, id string, o container.RemoveOptions) error {
	w.n.Add(1)
	return w.Engine.ContainerRemove(ctx, id, o)
}
func (w *writeCounter) ContainerRename(ctx context.Context, id, name string) error {
	w.n.Add(1)
	return w.Engine.ContainerRename(ctx, id, name)
}
func (w *writeCounter) ContainerUnpause(ctx context.Context, id string) error {
	w.n.Add(1)
	return w.Engine.ContainerUnpause(ctx, id)
}
func (w *writeCounter) ImagePull(ctx context.Context, ref string, o image.PullOptions) (io.ReadCloser, error) {
	w.n.Add(1)
	return w.Engine.ImagePull(ctx, ref, o)
}
func (w *writeCounter) ImageLoad(ctx context.Context, r io.Reader, o ...client.ImageLoadOption) (image.LoadResponse, error) {
	w.n.Add(1)
	return w.Engine.ImageLoad(ctx, r, o...)
}
func (w *writeCounter) ImageRemove(ctx context.Context, ref string, o image.RemoveOptions) ([]image.DeleteResponse, error) {
	w.n.Add(1)
	return w.Engine.ImageRemove(ctx, ref, o)
}
func (w *writeCounter) NetworkCreate(ctx context.Context, name string, o network.CreateOptions) (network.CreateResponse, error) {
	w.n.Add(1)
	return w.Engine.NetworkCreate(ctx, name, o)
}
func (w *writeCounter) NetworkConnect(ctx context.Context, id, c string, s *network.EndpointSettings) error {
	w.n.Add(1)
	return w.Engine.NetworkConnect(ctx, id, c, s)
}

func (w *writeCounter) NetworkRemove(ctx context.Context, id string) error {
	w.n.Add(1)
	return w.Engine.NetworkRemove(ctx, id)
}

func benchApps(e *env, n int) []spec.App {
	apps := make([]spec.App, n)
	for i := range apps {
		apps[i] = e.plainApp(fmt.Sprintf("app%02d", i))
	}
	return apps
}

// BenchmarkNoopPass50: a full pass (observe, plan, apply) over 50 running apps
// that need nothing. Reports Engine write calls per pass, which must be 0.
func BenchmarkNoopPass50(b *testing.B) {
	e := newEnv(b, func(o *Options) { o.StableFor = time.Millisecond })
	wc := &writeCounter{Engine: e.cli}
	r, err := New(wc, e.opts)
	if err != nil {
		b.Fatal(err)
	}
	dev := e.device(benchApps(e, 50)...)
	ctx := context.Background()
	if _, err := r.Reconcile(ctx, dev); err != nil {
		b.Fatal(err)
	}
	wc.n.Store(0)
	b.ResetTimer()
	for b.Loop() {
		res, err := r.Reconcile(ctx, dev)
		if err != nil {
			b.Fatal(err)
		}
		if c := res.Plan.Changes(); c != 0 {
			b.Fatalf("no-op pass planned %d changes:\n%s", c, res.Plan)
		}
	}
	b.ReportMetric(float64(wc.n.Load())/float64(b.N), "writes/op")
	if wc.n.Load() != 0 {
		b.Fatalf("%d Engine write calls in no-op passes", wc.n.Load())
	}
}

// BenchmarkColdConverge20 creates and starts 20 apps from nothing through Reconcile.
func BenchmarkColdConverge20(b *testing.B) {
	e := newEnv(b, func(o *Options) { o.StableFor = time.Millisecond })
	dev := e.device(benchApps(e, 20)...)
	ctx := context.Background()
	if _, err := e.r.Reconcile(ctx, &spec.Device{ID: dev.ID, Network: dev.Network, Apps: dev.Apps[:1]}); err != nil {
		b.Fatal(err) // the fleet network exists before timing, as for the script
	}
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		e.removeApps(dev)
		b.StartTimer()
		if _, err := e.r.Reconcile(ctx, dev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkColdConverge20CLI is the baseline: a shell script making the same
// `docker create` + `docker start` calls with the docker CLI, one after another.
func BenchmarkColdConverge20CLI(b *testing.B) {
	docker := testenv.LookPath(b, "docker", "docker.io")
	e := newEnv(b, nil)
	dev := e.device(benchApps(e, 20)...)
	ctx := context.Background()
	if _, err := e.cli.NetworkCreate(ctx, dev.Network, network.CreateOptions{Labels: dockertest.Labels(e.label)}); err != nil {
		b.Fatal(err)
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, a := range dev.Apps {
		fmt.Fprintf(&script, "%s create --name %s%s --label %s=%s --network %s --network-alias %s -e VERSION=1 --restart unless-stopped %s >/dev/null\n",
			docker, e.prefix, a.Name, dockertest.LabelKey, e.label, dev.Network, a.Name, e.image)
		fmt.Fprintf(&script, "%s start %s%s >/dev/null\n", docker, e.prefix, a.Name)
	}
	path := filepath.Join(b.TempDir(), "converge.sh")
	if err := os.WriteFile(path, []byte(script.String()), 0o755); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		e.removeApps(dev)
		b.StartTimer()
		if out, err := exec.CommandContext(ctx, "bash", path).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
}

// removeApps force-removes the device's containers by name.
func (e *env) removeApps(dev *spec.Device) {
	for _, a := range dev.Apps {
		err := e.cli.ContainerRemove(context.Background(), e.prefix+a.Name, container.RemoveOptions{Force: true})
		if err != nil && !strings.Contains(err.Error(), "No such container") {
			e.t.Fatal(err)
		}
	}
}
