package spec

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

func TestRolloutPolicy(t *testing.T) {
	fsys := base()
	fsys["fleet.cue"] = &fstest.MapFile{Data: []byte(`defaults: time: servers: ["ntp.example:123"]
spec: network: "plant"
rollout: {
	bake: "30m"
	error_budget: "5%"
	spread_by: ["site"]
	disruption_budget: {group_by: ["site"], max_unavailable: 1}
	waves: [
		{name: "canary", limit: 1, bake: "1h", approval: true},
		{limit: "25%", success_threshold: "90%"},
	]
}
`)}
	fsys["groups/lab.yaml"] = &fstest.MapFile{Data: []byte(`selector:
  devices: [d2]
rollout:
  offline: apply
  gates:
    clock: false
`)}
	fsys["groups/off.yaml"] = &fstest.MapFile{Data: []byte(`selector:
  devices: [d3]
rollout:
  enabled: false
`)}
	fsys["devices/d3.yaml"] = &fstest.MapFile{Data: []byte("labels:\n  role: web\n")}
	f, err := Load(fsys)
	if err != nil {
		t.Fatal(err)
	}
	if !f.HasRollout() {
		t.Fatal("HasRollout = false")
	}
	d1, err := f.Render("d1")
	if err != nil {
		t.Fatal(err)
	}
	r := d1.Rollout
	if r == nil {
		t.Fatal("d1: no rollout")
	}
	if r.Track != "fleet" || r.Offline != OfflineWait || len(r.Waves) != 3 {
		t.Fatalf("d1 rollout = %+v", r)
	}
	want := []struct {
		name      string
		bake      time.Duration
		threshold string
		limit     string
		approval  bool
	}{
		{"canary", time.Hour, "100%", "1", true},
		{"wave-2", 30 * time.Minute, "90%", "25%", false},
		{"rest", 30 * time.Minute, "100%", "", false},
	}
	for i, w := range want {
		got := r.Waves[i]
		lim := ""
		if got.Limit != nil {
			lim = got.Limit.String()
		}
		if got.Name != w.name || got.Bake.D() != w.bake || got.SuccessThreshold.String() != w.threshold || lim != w.limit || got.Approval != w.approval {
			t.Errorf("wave %d = %+v (limit %q), want %+v", i, got, lim, w)
		}
	}
	if r.ErrorBudget == nil || r.ErrorBudget.Of(200) != 10 || r.Disruption.MaxUnavailable.Of(4) != 1 || r.Disruption.Key(map[string]string{"site": "a"}) != "site=a" {
		t.Errorf("budgets = %+v %+v", r.ErrorBudget, r.Disruption)
	}
	if !r.Gates.Clock || !r.Gates.AppsHealthy {
		t.Errorf("gates = %+v", r.Gates)
	}

	d2, err := f.Render("d2")
	if err != nil {
		t.Fatal(err)
	}
	if d2.Rollout == nil || d2.Rollout.Track != "lab" || d2.Rollout.Offline != OfflineApply || d2.Rollout.Gates.Clock || len(d2.Rollout.Waves) != 3 {
		t.Errorf("d2 rollout = %+v", d2.Rollout)
	}
	d3, err := f.Render("d3")
	if err != nil {
		t.Fatal(err)
	}
	if d3.Rollout != nil {
		t.Errorf("d3 (rollout disabled) = %+v", d3.Rollout)
	}
	// The policy is not part of the spec: the same device without a rollout hashes the same.
	plain, err := Load(base())
	if err != nil {
		t.Fatal(err)
	}
	p1, _ := plain.Render("d1")
	if p1.Hash() != d1.Hash() {
		t.Error("the rollout section changed d1's spec hash")
	}
	if plain.HasRollout() || p1.Rollout != nil {
		t.Error("a fleet with no rollout section has one")
	}
}

func TestRolloutNoWaves(t *testing.T) {
	fsys := base()
	fsys["groups/web.yaml"].Data = append(fsys["groups/web.yaml"].Data, []byte("rollout:\n  bake: 5m\n")...)
	f, err := Load(fsys)
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.Render("d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Rollout == nil || d.Rollout.Track != "web" || len(d.Rollout.Waves) != 1 || d.Rollout.Waves[0].Name != "all" || d.Rollout.Waves[0].Bake.D() != 5*time.Minute {
		t.Fatalf("rollout = %+v", d.Rollout)
	}
}

func TestRolloutBadInput(t *testing.T) {
	tests := []struct {
		name string
		file string
		data string
		want []string
	}{
		{
			name: "share above 100%",
			file: "fleet.yaml",
			data: "rollout:\n  waves:\n    - limit: 120%\n",
			want: []string{"fleet.yaml:3:", "rollout.waves[0].limit", "120% is more than 100%"},
		},
		{
			name: "amount not a count or share",
			file: "fleet.yaml",
			data: "rollout:\n  error_budget: lots\n",
			want: []string{"fleet.yaml:2:17", "error_budget"},
		},
		{
			name: "unknown field",
			file: "fleet.yaml",
			data: "rollout:\n  wave: []\n",
			want: []string{"fleet.yaml:2:3", "wave", "unknown field"},
		},
		{
			name: "early wave takes everyone",
			file: "fleet.yaml",
			data: "rollout:\n  waves:\n    - bake: 1h\n    - limit: 2\n",
			want: []string{"fleet.yaml:3:", "rollout.waves[0]", "neither a selector nor a limit"},
		},
		{
			name: "duplicate wave name",
			file: "fleet.yaml",
			data: "rollout:\n  waves:\n    - {name: a, limit: 1}\n    - {name: a, limit: 2}\n",
			want: []string{"fleet.yaml:4:", `wave name "a"`},
		},
		{
			name: "bad offline policy in a group",
			file: "groups/g.yaml",
			data: "rollout:\n  offline: sometimes\n",
			want: []string{"groups/g.yaml:2:12", `"sometimes" is not one of`},
		},
		{
			name: "disruption budget without group_by",
			file: "fleet.yaml",
			data: "rollout:\n  disruption_budget:\n    max_unavailable: 1\n",
			want: []string{"fleet.yaml", "group_by", "required"},
		},
		{
			name: "bad bake duration",
			file: "fleet.yaml",
			data: "rollout:\n  bake: soon\n",
			want: []string{"fleet.yaml:2:9", "bake"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fsys := base()
			if tc.file == "fleet.yaml" {
				delete(fsys, "fleet.cue")
			}
			fsys[tc.file] = &fstest.MapFile{Data: []byte(tc.data)}
			_, err := Load(fsys)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("not ErrInvalid: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestAmount(t *testing.T) {
	tests := []struct {
		in    string
		total int
		want  int
		str   string
	}{
		{`3`, 10, 3, "3"},
		{`3`, 2, 2, "3"},
		{`"10%"`, 5, 1, "10%"},
		{`"10%"`, 100, 10, "10%"},
		{`"12.5%"`, 8, 1, "12.5%"},
		{`"100%"`, 7, 7, "100%"},
		{`"0%"`, 7, 0, "0%"},
		{`"33%"`, 3, 1, "33%"},
	}
	for _, tc := range tests {
		var a Amount
		if err := json.Unmarshal([]byte(tc.in), &a); err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got := a.Of(tc.total); got != tc.want || a.String() != tc.str {
			t.Errorf("%s of %d = %d (%s), want %d (%s)", tc.in, tc.total, got, a, tc.want, tc.str)
		}
		b, _ := json.Marshal(a)
		if string(b) != tc.in {
			t.Errorf("marshal %s = %s", tc.in, b)
		}
	}
	for _, bad := range []string{`"x%"`, `-1`, `1.5`, `"101%"`, `"5"`} {
		var a Amount
		if err := json.Unmarshal([]byte(bad), &a); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
