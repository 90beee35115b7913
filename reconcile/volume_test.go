package reconcile

import (
	"context"
	"testing"

	"github.com/docker/docker/api/types/volume"

	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/spec"
)

// mountedVolume is the name of the named volume mounted at target in the
// app's container.
func (e *env) mountedVolume(app, target string) string {
	e.t.Helper()
	ins, err := e.cli.ContainerInspect(context.Background(), e.prefix+app)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, m := range ins.Mounts {
		if m.Destination == target {
			return m.Name
		}
	}
	e.t.Fatalf("%s: nothing mounted at %s: %+v", app, target, ins.Mounts)
	return ""
}

// TestVolumesPerDevice: two devices on one Engine whose apps name the same
// volume get a volume each, named and labelled by their own prefix.
func TestVolumesPerDevice(t *testing.T) {
	a, b := newEnv(t, nil), newEnv(t, nil)
	source := "buffer-" + randHex(3)
	for _, e := range []*env{a, b} {
		app := e.plainApp("keeper")
		app.Volumes = []spec.Volume{{Source: source, Target: "/var/lib/keeper"}}
		e.mustReconcile(e.device(app))
	}
	va, vb := a.mountedVolume("keeper", "/var/lib/keeper"), b.mountedVolume("keeper", "/var/lib/keeper")
	if va != a.prefix+source || vb != b.prefix+source {
		t.Fatalf("volumes %q and %q, want %q and %q", va, vb, a.prefix+source, b.prefix+source)
	}
	for _, e := range []*env{a, b} {
		v, err := e.cli.VolumeInspect(context.Background(), e.prefix+source)
		if err != nil {
			t.Fatal(err)
		}
		if v.Labels[LabelPrefix] != e.prefix || v.Labels[LabelManagedBy] != managedByValue {
			t.Errorf("volume %s labels %v, want prefix %q", v.Name, v.Labels, e.prefix)
		}
	}
	if _, err := a.cli.VolumeInspect(context.Background(), source); err == nil {
		t.Errorf("an unprefixed volume %q was made", source)
	}
}

// TestVolumesKeepLegacy: a volume an older agent made under the bare name,
// with this reconciler's labels, is kept by the recreated container; one
// with another device's labels is not.
func TestVolumesKeepLegacy(t *testing.T) {
	cases := []struct {
		name     string
		owner    string // prefix label on the bare-named volume; "" = ours
		wantBare bool
	}{
		{"ours", "", true},
		{"another device's", "other-", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			source := "legacy-" + randHex(3)
			owner := tc.owner
			if owner == "" {
				owner = e.prefix
			}
			labels := dockertest.Labels(e.label)
			labels[LabelManagedBy], labels[LabelPrefix] = managedByValue, owner
			if _, err := e.cli.VolumeCreate(context.Background(), volume.CreateOptions{Name: source, Labels: labels}); err != nil {
				t.Fatal(err)
			}
			app := e.plainApp("keeper")
			app.Volumes = []spec.Volume{{Source: source, Target: "/data"}}
			e.mustReconcile(e.device(app))
			want := e.prefix + source
			if tc.wantBare {
				want = source
			}
			if got := e.mountedVolume("keeper", "/data"); got != want {
				t.Errorf("mounted %q, want %q", got, want)
			}
		})
	}
}
