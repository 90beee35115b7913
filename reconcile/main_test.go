package reconcile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/spec"
)

// pkgLabel labels the images shared by this package's tests; TestMain removes them.
var pkgLabel = "reconcile-pkg-" + randHex(4)

var (
	baseOnce sync.Once
	baseRef  string
	baseErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if baseRef != "" {
		if cli, err := NewClient(); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := dockertest.RemoveLabelled(ctx, cli, pkgLabel); err != nil {
				fmt.Fprintln(os.Stderr, "cleanup:", err)
			}
			cancel()
			cli.Close()
		}
	}
	os.Exit(code)
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// env is one test's reconciler against the real Engine, with its own prefix and label.
type env struct {
	t      testing.TB
	cli    *client.Client
	label  string
	prefix string
	image  string // the shared testapp image ref
	r      *Reconciler
	opts   Options
}

func newEnv(t testing.TB, tweak func(*Options)) *env {
	t.Helper()
	cli := dockertest.Client(t)
	baseOnce.Do(func() {
		ref := "shoal-reconcile-test/app:" + pkgLabel
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		_, baseErr = dockertest.BuildImage(ctx, cli, ref, dockertest.Labels(pkgLabel))
		baseRef = ref
	})
	if baseErr != nil {
		t.Fatal(baseErr)
	}
	label := dockertest.Label(t, cli)
	e := &env{t: t, cli: cli, label: label, prefix: "t" + randHex(4) + "-", image: baseRef}
	e.opts = Options{
		Prefix:            e.prefix,
		Labels:            dockertest.Labels(label),
		ImageCache:        t.TempDir(),
		StableFor:         300 * time.Millisecond,
		DefaultHealthWait: 20 * time.Second,
		StopTimeout:       2 * time.Second,
		RetryInitial:      10 * time.Millisecond,
		Debounce:          200 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&e.opts)
	}
	r, err := New(cli, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	e.r = r
	return e
}

// device returns a device whose fleet network is private to this test.
func (e *env) device(apps ...spec.App) *spec.Device {
	return &spec.Device{APIVersion: spec.APIVersion, ID: "dev-" + e.prefix, Network: e.prefix + "net", Apps: apps}
}

// webApp is a testapp serving HTTP on a free host port, with a healthcheck.
func (e *env) webApp(name string, hostPort int, version string) spec.App {
	return spec.App{
		Name:    name,
		Image:   spec.Image{Ref: e.image},
		Command: []string{"-listen", ":8080"},
		Env:     map[string]string{"VERSION": version},
		Ports:   []spec.Port{{Host: hostPort, Container: 8080, Protocol: "tcp", HostIP: "127.0.0.1"}},
		Restart: "unless-stopped",
		Healthcheck: &spec.Healthcheck{
			Test:     []string{"CMD", dockertest.AppBinary, "-probe", "http://127.0.0.1:8080/healthz"},
			Interval: spec.Duration(300 * time.Millisecond), Timeout: spec.Duration(2 * time.Second), Retries: 2,
		},
		HealthWait: spec.Duration(20 * time.Second),
	}
}

// plainApp is a testapp that runs until stopped, with no healthcheck and no ports.
func (e *env) plainApp(name string) spec.App {
	return spec.App{Name: name, Image: spec.Image{Ref: e.image}, Restart: "unless-stopped", Env: map[string]string{"VERSION": "1"}}
}

func (e *env) reconcile(dev *spec.Device) *Result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := e.r.Reconcile(ctx, dev)
	if res == nil {
		e.t.Fatalf("reconcile: %v", err)
	}
	return res
}

func (e *env) mustReconcile(dev *spec.Device) *Result {
	e.t.Helper()
	res := e.reconcile(dev)
	if err := res.Err(); err != nil {
		e.t.Fatalf("reconcile: %v\nplan:\n%s", err, res.Plan)
	}
	return res
}

func (e *env) plan(dev *spec.Device) *Plan {
	e.t.Helper()
	p, err := e.r.DryRun(context.Background(), dev)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) inspect(name string) (id, state string) {
	e.t.Helper()
	ins, err := e.cli.ContainerInspect(context.Background(), e.prefix+name)
	if err != nil {
		return "", ""
	}
	return ins.ID, string(ins.State.Status)
}

func appResult(t *testing.T, res *Result, app string) AppResult {
	t.Helper()
	for _, a := range res.Apps {
		if a.App == app {
			return a
		}
	}
	t.Fatalf("no result for app %q in %+v", app, res.Apps)
	return AppResult{}
}

// freePort finds a loopback TCP port nobody listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// get fetches the testapp's "/" through its published port.
func get(t *testing.T, port int) string {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatalf("GET :%d: %v", port, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		<-tick.C
	}
}
