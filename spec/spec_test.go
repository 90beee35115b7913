package spec

import (
	"errors"
	"os"
	"strings"
	"testing"
	"testing/fstest"
)

// base is a small valid fleet; cases change one file of it.
func base() fstest.MapFS {
	return fstest.MapFS{
		"fleet.cue": {Data: []byte(`defaults: time: servers: ["ntp.example:123"]
spec: network: "plant"
`)},
		"groups/web.yaml": {Data: []byte(`selector:
  match_labels:
    role: web
spec:
  apps:
    web: {}
  update:
    boot_limit: 2
defaults:
  release: os-1
`)},
		"devices/d1.yaml": {Data: []byte(`labels:
  role: web
`)},
		"devices/d2.yaml": {Data: []byte(`labels:
  role: web
spec:
  apps:
    web:
      env:
        EXTRA: "1"
`)},
		"apps/web.yaml": {Data: []byte(`image:
  ref: example/web:1.0@sha256:` + strings.Repeat("a", 64) + `
ports:
  - host: 8080
    container: 80
env:
  LOG: info
`)},
		"releases/os-1.yaml": {Data: []byte(`version: 1.2.3
url: https://example/os.img
size: 100
sha256: ` + strings.Repeat("b", 64) + `
signature: c2ln
`)},
	}
}

func TestExampleFleetValidates(t *testing.T) {
	f, err := Load(os.DirFS("../fleet-repo-example"))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(f.DeviceIDs()); got != 7 {
		t.Fatalf("devices = %d, want 7", got)
	}
	for _, r := range f.RenderAll(2) {
		if r.Err != nil {
			t.Errorf("%s: %v", r.ID, r.Err)
		}
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name   string
		file   string
		data   string
		extra  map[string]string
		device string // device to render; "" = the error must come from Load
		want   []string
	}{
		{
			name: "yaml syntax error",
			file: "apps/web.yaml",
			data: "image:\n  ref: [unclosed\n",
			want: []string{"apps/web.yaml:2:8: YAML syntax: did not find expected ',' or ']' (the '[' here is never closed)"},
		},
		{
			name: "unknown field",
			file: "apps/web.yaml",
			data: "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\nimagee: x\n",
			want: []string{"apps/web.yaml:3:1", "imagee", "unknown field"},
		},
		{
			name: "bad sha256",
			file: "releases/os-1.yaml",
			data: "version: 1.2.3\nurl: x\nsize: 1\nsha256: abc\nsignature: c2ln\n",
			want: []string{"releases/os-1.yaml:4:9", "sha256"},
		},
		{
			name: "port out of range",
			file: "apps/web.yaml",
			data: "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\nports:\n  - host: 70000\n    container: 80\n",
			want: []string{"apps/web.yaml:4:11", "ports[0].host", "65535"},
		},
		{
			name:   "conflict between group and device",
			file:   "devices/d1.yaml",
			data:   "labels:\n  role: web\nspec:\n  update:\n    boot_limit: 5\n",
			device: "d1",
			want:   []string{"devices/d1.yaml:5:17", "groups/web.yaml:8:17", "update.boot_limit", "conflicting values"},
		},
		{
			name: "duplicate app name",
			file: "apps/web.cue",
			data: `image: ref: "example/web@sha256:` + strings.Repeat("a", 64) + `"`,
			want: []string{"apps/web", "duplicate app \"web\""},
		},
		{
			name: "release version not semver",
			file: "releases/os-1.yaml",
			data: "version: one\nurl: x\nsize: 1\nsha256: " + strings.Repeat("b", 64) + "\nsignature: c2ln\n",
			want: []string{"releases/os-1.yaml:1:10", "version"},
		},
		{
			name: "value not among the allowed ones",
			file: "apps/web.yaml",
			data: "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\nrestart: sometimes\n",
			want: []string{`apps/web.yaml:3:10: restart: "sometimes" is not one of "always", "no", "on-failure", "unless-stopped"`},
		},
		{
			name:   "device names an unknown app",
			file:   "devices/d1.yaml",
			data:   "labels:\n  role: web\nspec:\n  apps:\n    nope: {}\n",
			device: "d1",
			want:   []string{"devices/d1.yaml:5:", `no app "nope"`},
		},
		{
			name:   "device names an unknown release",
			file:   "devices/d1.yaml",
			data:   "spec:\n  release: os-9\n",
			device: "d1",
			want:   []string{"devices/d1.yaml:2:3", `no release "os-9"`},
		},
		{
			name: "cue file with a wrong type",
			file: "groups/extra.cue",
			data: "spec: hold: \"yes\"\n",
			want: []string{"groups/extra.cue:1:13", "hold"},
		},
		{
			name:   "host port used twice",
			file:   "apps/web2.yaml",
			data:   "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\nports:\n  - host: 8080\n    container: 81\n",
			extra:  map[string]string{"devices/d1.yaml": "labels:\n  role: web\nspec:\n  apps:\n    web2: {}\n"},
			device: "d1",
			want:   []string{"devices/d1.yaml", "apps.web2.ports[0].host", `host port 8080/tcp is also published by app "web"`},
		},
		{
			name:   "dependency on an app the device does not run",
			file:   "apps/web.yaml",
			data:   "image:\n  ref: example/web@sha256:" + strings.Repeat("a", 64) + "\ndepends_on: [db]\n",
			extra:  map[string]string{"apps/db.yaml": "image:\n  ref: example/db@sha256:" + strings.Repeat("c", 64) + "\n"},
			device: "d1",
			want:   []string{"apps.web.depends_on[0]", `depends on "db", which this device does not run`},
		},
		{
			name:   "image neither pinned nor sourced",
			file:   "apps/web.yaml",
			data:   "image:\n  ref: example/web:latest\n",
			device: "d1",
			want:   []string{"apps.web.image", "pinned by digest"},
		},
		{
			name:   "app without an image",
			file:   "apps/web.yaml",
			data:   "command: [x]\n",
			device: "d1",
			want:   []string{"apps.web.image", "required"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fsys := base()
			fsys[tc.file] = &fstest.MapFile{Data: []byte(tc.data)}
			for name, data := range tc.extra {
				fsys[name] = &fstest.MapFile{Data: []byte(data)}
			}
			f, err := Load(fsys)
			if tc.device != "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				_, err = f.Render(tc.device)
			}
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error is not ErrInvalid: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestCanonicalSameForYAMLAndCUE(t *testing.T) {
	yamlFleet := base()
	cueFleet := base()
	// The same app and device, as CUE, with keys in another order and other spacing.
	delete(cueFleet, "apps/web.yaml")
	cueFleet["apps/web.cue"] = &fstest.MapFile{Data: []byte(`env: {LOG: "info"}
ports: [{container: 80, host:    8080}]
image: ref: "example/web:1.0@sha256:` + strings.Repeat("a", 64) + `"
`)}
	delete(cueFleet, "devices/d2.yaml")
	cueFleet["devices/d2.cue"] = &fstest.MapFile{Data: []byte(`spec: apps: web: env: EXTRA: "1"
labels: role: "web"`)}
	hash := func(fsys fstest.MapFS) string {
		f, err := Load(fsys)
		if err != nil {
			t.Fatal(err)
		}
		d, err := f.Render("d2")
		if err != nil {
			t.Fatal(err)
		}
		return d.Hash()
	}
	if a, b := hash(yamlFleet), hash(cueFleet); a != b {
		t.Fatalf("hash differs: yaml %s, cue %s", a, b)
	}
}

func TestLayering(t *testing.T) {
	fsys := base()
	fsys["groups/canary.yaml"] = &fstest.MapFile{Data: []byte(`selector:
  devices: [d2]
priority: 5
defaults:
  release: os-2
  apps:
    web:
      env:
        LOG: debug
`)}
	fsys["releases/os-2.yaml"] = &fstest.MapFile{Data: []byte("version: 1.3.0\nurl: x\nsize: 1\nsha256: " + strings.Repeat("d", 64) + "\nsignature: c2ln\n")}
	f, err := Load(fsys)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		device, release, log, groups string
		extra                        bool
	}{
		{device: "d1", release: "os-1", log: "info", groups: "web"},
		{device: "d2", release: "os-2", log: "debug", groups: "web,canary", extra: true},
	}
	for _, tc := range tests {
		t.Run(tc.device, func(t *testing.T) {
			d, err := f.Render(tc.device)
			if err != nil {
				t.Fatal(err)
			}
			if d.Release == nil || d.Release.Name != tc.release {
				t.Errorf("release = %+v, want %s", d.Release, tc.release)
			}
			web := d.App("web")
			if web == nil {
				t.Fatal("no app web")
			}
			if web.Env["LOG"] != tc.log {
				t.Errorf("LOG = %q, want %q", web.Env["LOG"], tc.log)
			}
			if _, ok := web.Env["EXTRA"]; ok != tc.extra {
				t.Errorf("EXTRA present = %v, want %v", ok, tc.extra)
			}
			if got := strings.Join(d.Groups, ","); got != tc.groups {
				t.Errorf("groups = %s, want %s", got, tc.groups)
			}
			// Schema defaults, fleet defaults and fleet spec all reach the device.
			if web.Restart != "unless-stopped" || d.Network != "plant" || d.Update.BootLimit != 2 ||
				len(d.Time.Servers) != 1 || d.Time.MaxSkew.D().String() != "2s" {
				t.Errorf("layers missing: restart=%q network=%q boot_limit=%d time=%+v", web.Restart, d.Network, d.Update.BootLimit, d.Time)
			}
		})
	}
}

func TestDeviceMatchingNoGroupWarns(t *testing.T) {
	fsys := base()
	fsys["devices/lonely.yaml"] = &fstest.MapFile{Data: []byte("labels:\n  role: db\n")}
	f, err := Load(fsys)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range f.RenderAll(1) {
		if r.ID != "lonely" {
			continue
		}
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		if len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], `devices/lonely.yaml: device "lonely" matches no group`) {
			t.Fatalf("warnings = %q", r.Warnings)
		}
	}
}

func TestAllErrorsReported(t *testing.T) {
	fsys := base()
	fsys["apps/a.yaml"] = &fstest.MapFile{Data: []byte("bogus: 1\n")}
	fsys["apps/b.yaml"] = &fstest.MapFile{Data: []byte("cpus: -1\n")}
	_, err := Load(fsys)
	var errs Errors
	if !errors.As(err, &errs) || len(errs) < 2 {
		t.Fatalf("want at least 2 errors, got %v", err)
	}
	if !strings.Contains(err.Error(), "apps/a.yaml:1:1") || !strings.Contains(err.Error(), "apps/b.yaml:1:7") {
		t.Fatalf("errors:\n%v", err)
	}
}

// TestDeltaReleaseAndPolicy: a release's delta and the update policy's
// delta settings reach the device, with their defaults.
func TestDeltaReleaseAndPolicy(t *testing.T) {
	fsys := base()
	fsys["releases/os-1.yaml"] = &fstest.MapFile{Data: []byte(`version: 1.2.3
url: https://example/os.img.zst
size: 100
sha256: ` + strings.Repeat("b", 64) + `
signature: c2ln
delta:
  index: https://example/os.caibx
  sha256: ` + strings.Repeat("c", 64) + `
  store: https://example/store/
`)}
	f, err := Load(fsys)
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.Render("d1")
	if err != nil {
		t.Fatal(err)
	}
	if dl := d.Release.Delta; dl == nil || dl.Index != "https://example/os.caibx" || dl.Store != "https://example/store/" || dl.SHA256 != strings.Repeat("c", 64) {
		t.Fatalf("release delta %+v", d.Release.Delta)
	}
	if p := d.Update.Delta; !p.On() || p.Share() != 0.8 || p.Budget != 0 {
		t.Fatalf("default delta policy %+v", p)
	}
	fsys["devices/d1.yaml"] = &fstest.MapFile{Data: []byte("labels:\n  role: web\nspec:\n  update:\n    delta:\n      enabled: false\n      fallback_share: 0.5\n      budget: 200m\n")}
	if f, err = Load(fsys); err != nil {
		t.Fatal(err)
	}
	if d, err = f.Render("d1"); err != nil {
		t.Fatal(err)
	}
	if p := d.Update.Delta; p.On() || p.Share() != 0.5 || p.Budget != 200<<20 {
		t.Fatalf("delta policy %+v", p)
	}
	fsys["devices/d1.yaml"] = &fstest.MapFile{Data: []byte("labels:\n  role: web\nspec:\n  update:\n    delta:\n      fallback_share: 1.5\n")}
	if f, err = Load(fsys); err == nil {
		_, err = f.Render("d1")
	}
	if err == nil || !strings.Contains(err.Error(), "fallback_share") {
		t.Fatalf("fallback_share 1.5: %v", err)
	}
}
