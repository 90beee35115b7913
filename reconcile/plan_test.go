package reconcile

import (
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/spec"
)

// TestPlan covers the planning decisions that need no Engine: Plan is pure,
// so observed state is written by hand here.
func TestPlan(t *testing.T) {
	const prefix = "p-"
	app := func(name string, deps ...string) spec.App {
		return spec.App{Name: name, Image: spec.Image{Ref: "img:1"}, Restart: "always", DependsOn: deps, Env: map[string]string{"A": "1"}}
	}
	running := func(dev *spec.Device, name string, mut func(*Container)) Container {
		a := dev.App(name)
		c := Container{ID: "id-" + name, Name: prefix + name, App: name, Hash: specHash(dev, a), Spec: a, ImageID: "sha256:img1", State: "running", RestartPolicy: a.Restart}
		if mut != nil {
			mut(&c)
		}
		return c
	}
	type want struct {
		kind   Kind
		app    string
		reason string
	}
	cases := []struct {
		name     string
		apps     []spec.App
		obs      func(dev *spec.Device) *Observed
		want     []want // in order, among the actions listed
		problems []string
		drift    []string
	}{
		{
			name: "new device: network, then apps with dependencies first",
			apps: []spec.App{app("web", "db"), app("db")},
			obs:  func(*spec.Device) *Observed { return &Observed{Images: map[string]string{"img:1": "sha256:img1"}} },
			want: []want{{KindNetwork, "", "network missing"}, {KindCreate, "db", "new app"}, {KindCreate, "web", "new app"}},
		},
		{
			name: "image absent is pulled before create",
			apps: []spec.App{app("web")},
			obs:  func(*spec.Device) *Observed { return &Observed{Networks: map[string]bool{"fleet": true}} },
			want: []want{{KindPull, "web", "image not present"}, {KindCreate, "web", "new app"}},
		},
		{
			name:     "dependency cycle and unknown dependency are problems; others planned",
			apps:     []spec.App{app("a", "b"), app("b", "a"), app("c", "nope"), app("d")},
			obs:      func(*spec.Device) *Observed { return &Observed{Images: map[string]string{"img:1": "x"}} },
			want:     []want{{KindCreate, "d", "new app"}},
			problems: []string{`app "c": depends_on[0]: unknown app "nope"`, "dependency cycle"},
		},
		{
			name: "env change explains itself",
			apps: []spec.App{app("web")},
			obs: func(dev *spec.Device) *Observed {
				c := running(dev, "web", nil)
				old := *c.Spec
				old.Env = map[string]string{"A": "0", "GONE": "1"}
				c.Spec, c.Hash = &old, "oldhash"
				return &Observed{Containers: []Container{c}, Images: map[string]string{"img:1": "sha256:img1"}}
			},
			want: []want{{KindRecreate, "web", "env A changed; env GONE removed"}},
		},
		{
			name: "image digest changed under the same tag",
			apps: []spec.App{app("web")},
			obs: func(dev *spec.Device) *Observed {
				return &Observed{Containers: []Container{running(dev, "web", nil)}, Images: map[string]string{"img:1": "sha256:img2"}}
			},
			want: []want{{KindRecreate, "web", "image digest changed (img1 -> img2)"}},
		},
		{
			name: "failed version is not retried",
			apps: []spec.App{app("web")},
			obs: func(dev *spec.Device) *Observed {
				c := running(dev, "web", func(c *Container) { c.Hash = "old" })
				return &Observed{Containers: []Container{c}, Failed: map[string]string{"web": specHash(dev, dev.App("web"))}}
			},
			want: []want{{KindKeep, "web", "failed its health gate"}},
		},
		{
			name: "exited one-shot with restart no is up to date",
			apps: []spec.App{{Name: "job", Image: spec.Image{Ref: "img:1"}, Restart: "no"}},
			obs: func(dev *spec.Device) *Observed {
				return &Observed{Containers: []Container{running(dev, "job", func(c *Container) { c.State, c.RestartPolicy = "exited", "no" })}}
			},
			want: []want{{KindKeep, "job", "exited with code 0"}},
		},
		{
			name: "removed by hand after being applied is drift",
			apps: []spec.App{app("web")},
			obs: func(dev *spec.Device) *Observed {
				return &Observed{Images: map[string]string{"img:1": "x"}, Applied: map[string]string{"web": "h"}}
			},
			want:  []want{{KindCreate, "web", "container removed outside shoal"}},
			drift: []string{"web: container removed outside shoal (revert)"},
		},
		{
			name: "interrupted rollout: aside restored, or removed once the new one runs",
			apps: []spec.App{app("web"), app("api")},
			obs: func(dev *spec.Device) *Observed {
				aside := func(name string) Container {
					return running(dev, name, func(c *Container) { c.Name, c.Aside, c.ID = prefix+name+"--prev", true, "aside-"+name })
				}
				return &Observed{Containers: []Container{aside("web"), aside("api"), running(dev, "api", nil)}}
			},
			want: []want{{KindRemove, "api", "interrupted rollout"}, {KindKeep, "api", "up to date"}, {KindRestore, "web", "interrupted rollout"}},
		},
		{
			name: "not in spec: removed; loaded image unreferenced: pruned",
			apps: nil,
			obs: func(dev *spec.Device) *Observed {
				return &Observed{
					Containers: []Container{{ID: "x", Name: prefix + "old", App: "old", State: "running"}},
					Loaded:     map[string]LoadedImage{"old:1": {ID: "sha256:o"}},
				}
			},
			want: []want{{KindRemove, "old", "no longer in spec"}, {KindPrune, "", "image no longer referenced"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev := &spec.Device{ID: "d1", Network: "fleet", Apps: tc.apps}
			obs := tc.obs(dev)
			p := PlanFor(dev, obs, prefix)
			i := 0
			for _, a := range p.Actions {
				if i < len(tc.want) && a.Kind == tc.want[i].kind && a.App == tc.want[i].app && strings.Contains(a.Reason, tc.want[i].reason) {
					i++
				}
			}
			if i < len(tc.want) {
				t.Errorf("plan lacks (in order) %+v:\n%s", tc.want[i], p)
			}
			var probs []string
			for _, e := range p.Problems {
				probs = append(probs, e.Error())
			}
			for _, w := range tc.problems {
				if !strings.Contains(strings.Join(probs, "\n"), w) {
					t.Errorf("problems %q lack %q", probs, w)
				}
			}
			var drift []string
			for _, d := range p.Drift {
				drift = append(drift, d.App+": "+d.What+" ("+d.Policy+")")
			}
			if strings.Join(drift, "|") != strings.Join(tc.drift, "|") {
				t.Errorf("drift %q, want %q", drift, tc.drift)
			}
			if s := p.String(); !strings.HasPrefix(s, "device d1: ") {
				t.Errorf("String: %q", s)
			}
		})
	}
}

func TestPlanString(t *testing.T) {
	p := &Plan{Device: "d1", Held: true, Actions: []Action{
		{Kind: KindLoad, App: "web", Target: "web:2", Reason: "image tar sha256 changed"},
		{Kind: KindRecreate, App: "web", Reason: "env FOO changed", DependsOn: []string{"db"}},
		{Kind: KindKeep, App: "db", Reason: "up to date"},
	}, Drift: []Drift{{App: "db", What: "stopped outside shoal (exit code 137)", Policy: "alert"}}}
	want := `device d1: 2 change(s) (held: nothing is applied until the hold is lifted)
  load-image  web web:2  image tar sha256 changed
  recreate    web        env FOO changed (after db)
  keep        db         up to date
drift:
  db: stopped outside shoal (exit code 137) (policy alert)
`
	if got := p.String(); got != want {
		t.Errorf("String:\n%s\nwant:\n%s", got, want)
	}
}
