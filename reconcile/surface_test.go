package reconcile

import (
	"context"
	"reflect"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/spec"
)

// TestAppSurface: every field of an app reaches the real container.
func TestAppSurface(t *testing.T) {
	e := newEnv(t, nil)
	port := freePort(t)
	bindDir := t.TempDir()
	app := e.webApp("full", port, "7")
	app.Entrypoint = []string{dockertest.AppBinary}
	app.Command = []string{"-listen", ":8080"}
	app.Env["EXTRA"] = "x=y"
	app.Volumes = []spec.Volume{
		{Type: "volume", Source: "data", Target: "/data"},
		{Type: "bind", Source: bindDir, Target: "/config", ReadOnly: true},
	}
	app.Networks = []string{e.prefix + "front", e.prefix + "back"}
	app.Restart = "on-failure"
	app.Devices = []string{"/dev/null:/dev/xnull:rw"}
	app.CapAdd = []string{"NET_ADMIN"}
	app.CapDrop = []string{"MKNOD"}
	app.User = "1000:1000"
	app.ReadOnly = true
	app.Memory = 64 << 20
	app.CPUs = 0.5
	app.Logging = spec.Logging{MaxSize: "1m", MaxFiles: 2}
	app.Labels = map[string]string{"team": "edge"}
	dev := e.device(app)

	res := e.mustReconcile(dev)
	if a := appResult(t, res, "full"); a.Health != "healthy" {
		t.Fatalf("full: %+v", a)
	}
	if got := get(t, port); got != "version=7" {
		t.Errorf("answers %q", got)
	}
	ins, err := e.cli.ContainerInspect(context.Background(), e.prefix+"full")
	if err != nil {
		t.Fatal(err)
	}
	hc, cfg := ins.HostConfig, ins.Config
	mounts := map[string]container.MountPoint{}
	for _, m := range ins.Mounts {
		mounts[m.Destination] = m
	}
	nets := []string{}
	for n, ep := range ins.NetworkSettings.Networks {
		if contains(ep.Aliases, "full") {
			nets = append(nets, n)
		}
	}
	sort.Strings(nets)
	want := []string{e.prefix + "back", e.prefix + "front"}
	checks := []struct {
		field     string
		got, want any
	}{
		{"entrypoint", []string(cfg.Entrypoint), app.Entrypoint},
		{"command", []string(cfg.Cmd), app.Command},
		{"env", sortedEnv(cfg.Env), []string{"EXTRA=x=y", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "VERSION=7"}},
		{"ports", hc.PortBindings["8080/tcp"][0].HostPort, itoa(port)},
		{"volume", mounts["/data"].Type == mount.TypeVolume && mounts["/data"].Name == e.prefix+"data", true},
		{"bind", mounts["/config"].Type == mount.TypeBind && mounts["/config"].Source == bindDir && !mounts["/config"].RW, true},
		{"networks (with alias)", nets, want},
		{"restart", string(hc.RestartPolicy.Name), "on-failure"},
		{"healthcheck", cfg.Healthcheck.Test, app.Healthcheck.Test},
		{"healthcheck interval", cfg.Healthcheck.Interval, 300 * time.Millisecond},
		{"devices", hc.Devices, []container.DeviceMapping{{PathOnHost: "/dev/null", PathInContainer: "/dev/xnull", CgroupPermissions: "rw"}}},
		{"cap_add", []string(hc.CapAdd), []string{"CAP_NET_ADMIN"}},
		{"cap_drop", []string(hc.CapDrop), []string{"CAP_MKNOD"}},
		{"user", cfg.User, "1000:1000"},
		{"read_only", hc.ReadonlyRootfs, true},
		{"memory", hc.Memory, int64(64 << 20)},
		{"cpus", hc.NanoCPUs, int64(5e8)},
		{"logging", hc.LogConfig, container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m", "max-file": "2"}}},
		{"labels", cfg.Labels["team"], "edge"},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %#v, want %#v", c.field, c.got, c.want)
		}
	}
	if p := e.plan(dev); p.Changes() != 0 {
		t.Errorf("no-op plan for the full app has changes:\n%s", p)
	}
}

func sortedEnv(env []string) []string {
	out := append([]string(nil), env...)
	sort.Strings(out)
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }
