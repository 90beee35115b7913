package reconcile

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/shoalfleet/shoal/spec"
)

// Kind is what an action does.
type Kind string

// Action kinds, in the order a plan lists them for one app.
const (
	KindNetwork  Kind = "create-network" // create a network the apps join
	KindRemove   Kind = "remove"         // stop and remove a container no longer wanted
	KindPull     Kind = "pull-image"     // pull an image by reference
	KindLoad     Kind = "load-image"     // verify an image tar and load it
	KindCreate   Kind = "create"         // create and start a new container
	KindRecreate Kind = "recreate"       // replace a container, health-gated, with rollback
	KindStart    Kind = "start"          // start (or unpause) an existing container
	KindRestore  Kind = "restore"        // put back a previous version left aside
	KindKeep     Kind = "keep"           // nothing to do
	KindPrune    Kind = "prune-image"    // remove an image Shoal loaded and no longer references
	KindNetRm    Kind = "remove-network" // remove a network Shoal created that no app joins any more
)

// Action is one step of a plan, with the reason a person reads.
type Action struct {
	Kind        Kind     `json:"kind"`
	App         string   `json:"app,omitempty"`
	Target      string   `json:"target,omitempty"` // network name, image ref, or container name
	Reason      string   `json:"reason"`
	DependsOn   []string `json:"depends_on,omitempty"`
	Drift       bool     `json:"drift,omitempty"` // reverts a change made outside Shoal
	ContainerID string   `json:"container_id,omitempty"`
}

// Drift is a change made to one of our containers outside Shoal.
type Drift struct {
	App    string `json:"app"`
	What   string `json:"what"`   // e.g. "stopped outside shoal (exit code 137)"
	Policy string `json:"policy"` // revert or alert
}

// Plan is what a pass would do: pure data, printable by `shoal plan`.
type Plan struct {
	Device   string      `json:"device"`
	Held     bool        `json:"held,omitempty"` // the spec holds container changes; Apply does nothing
	Actions  []Action    `json:"actions"`
	Drift    []Drift     `json:"drift,omitempty"`
	Problems []*AppError `json:"problems,omitempty"` // apps that cannot be planned (bad depends_on)

	hashes   map[string]string     // app -> spec hash, for Apply
	observed map[string]*Container // app -> its container as observed, for reporting kept apps
	dupNets  []string              // networks the device joins that the Engine holds twice, for Apply to settle
}

// Changes counts the actions that are not keep.
func (p *Plan) Changes() int {
	n := 0
	for _, a := range p.Actions {
		if a.Kind != KindKeep {
			n++
		}
	}
	return n
}

// String prints the plan as a table, one action per line.
func (p *Plan) String() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "device %s: %d change(s)", p.Device, p.Changes())
	if p.Held {
		b.WriteString(" (held: nothing is applied until the hold is lifted)")
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, a := range p.Actions {
		what := a.App
		if a.Target != "" && (a.App == "" || a.Kind == KindPull || a.Kind == KindLoad) {
			if what != "" {
				what += " "
			}
			what += a.Target
		}
		reason := a.Reason
		if len(a.DependsOn) > 0 {
			reason += " (after " + strings.Join(a.DependsOn, ", ") + ")"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", a.Kind, what, reason)
	}
	tw.Flush()
	if len(p.Drift) > 0 {
		b.WriteString("drift:\n")
		for _, d := range p.Drift {
			fmt.Fprintf(&b, "  %s: %s (policy %s)\n", d.App, d.What, d.Policy)
		}
	}
	if len(p.Problems) > 0 {
		b.WriteString("problems:\n")
		for _, e := range p.Problems {
			fmt.Fprintf(&b, "  %v\n", e)
		}
	}
	return b.String()
}

// Plan computes the actions that bring obs to dev's apps. It does no I/O.
func (r *Reconciler) Plan(dev *spec.Device, obs *Observed) *Plan {
	return PlanFor(dev, obs, r.o.Prefix)
}

// PlanFor is Plan for a reconciler with the given container-name prefix.
func PlanFor(dev *spec.Device, obs *Observed, prefix string) *Plan {
	p := &Plan{Device: dev.ID, Held: dev.Hold, hashes: map[string]string{}, observed: map[string]*Container{}}
	byApp := map[string]*Container{}
	asideOf := map[string]*Container{}
	wanted := map[string]bool{}
	for i := range dev.Apps {
		wanted[dev.Apps[i].Name] = true
	}

	// Networks first: every app's create depends on them.
	nets := map[string]bool{}
	for i := range dev.Apps {
		for _, n := range networksOf(dev, &dev.Apps[i]) {
			nets[n] = true
		}
	}
	for _, n := range sortedKeys(nets) {
		if !obs.Networks[n] && n != "bridge" && n != "host" && n != "none" {
			p.Actions = append(p.Actions, Action{Kind: KindNetwork, Target: n, Reason: "network missing"})
		}
		if obs.DupNets[n] {
			p.dupNets = append(p.dupNets, n)
		}
	}

	// Containers that are not wanted any more go next, freeing their ports and names.
	for i := range obs.Containers {
		c := &obs.Containers[i]
		switch {
		case !wanted[c.App]:
			p.Actions = append(p.Actions, Action{Kind: KindRemove, App: c.App, Target: c.Name, ContainerID: c.ID, Reason: "no longer in spec"})
		case c.Aside:
			asideOf[c.App] = c
		case c.Name != prefix+c.App:
			p.Actions = append(p.Actions, Action{Kind: KindRemove, App: c.App, Target: c.Name, ContainerID: c.ID, Reason: "duplicate container of app " + c.App})
		default:
			byApp[c.App] = c
			p.observed[c.App] = c
		}
	}

	order, problems := dependencyOrder(dev.Apps)
	p.Problems = problems
	for _, app := range order {
		h := specHash(dev, app)
		p.hashes[app.Name] = h
		acts, drift := planApp(dev, app, h, byApp[app.Name], asideOf[app.Name], obs)
		for i := range acts {
			acts[i].DependsOn = app.DependsOn
		}
		p.Actions = append(p.Actions, acts...)
		if drift != nil {
			p.Drift = append(p.Drift, *drift)
		}
	}

	// Prune images Shoal brought in that no app references any more.
	refs := map[string]bool{}
	for i := range dev.Apps {
		refs[dev.Apps[i].Image.Ref] = true
	}
	for _, ref := range sortedKeys(obs.Loaded) {
		if !refs[ref] {
			p.Actions = append(p.Actions, Action{Kind: KindPrune, Target: ref, Reason: "image no longer referenced"})
		}
	}
	for _, n := range sortedKeys(obs.OwnNets) {
		if !nets[n] {
			p.Actions = append(p.Actions, Action{Kind: KindNetRm, Target: n, Reason: "no app joins it any more"})
		}
	}
	return p
}

// Reasons of keep actions that Apply reports as something other than unchanged.
const (
	reasonFailedBefore = "this version failed its health gate and was rolled back; not retried until the spec changes"
	reasonDriftAlert   = "drift left alone (policy alert): "
)

// planApp decides what one wanted app needs.
func planApp(dev *spec.Device, app *spec.App, h string, c, aside *Container, obs *Observed) ([]Action, *Drift) {
	policy := app.Drift
	if policy == "" {
		policy = "revert"
	}
	act := func(k Kind, reason string) Action {
		a := Action{Kind: k, App: app.Name, Reason: reason}
		if c != nil {
			a.ContainerID = c.ID
		}
		return a
	}
	withImage := func(a Action) []Action {
		if k, why := imageNeed(app, obs); k != "" {
			return []Action{{Kind: k, App: app.Name, Target: app.Image.Ref, Reason: why}, a}
		}
		return []Action{a}
	}
	if f := obs.Failed[app.Name]; f == h && (c == nil || c.Hash != h) {
		return []Action{act(KindKeep, reasonFailedBefore)}, nil
	}
	if c == nil {
		if aside != nil {
			a := Action{Kind: KindRestore, App: app.Name, Target: aside.Name, ContainerID: aside.ID, Reason: "previous version left aside by an interrupted rollout"}
			return []Action{a}, nil
		}
		if obs.Applied[app.Name] != "" {
			d := &Drift{App: app.Name, What: "container removed outside shoal", Policy: policy}
			if policy == "alert" {
				return []Action{act(KindKeep, reasonDriftAlert+"container removed")}, d
			}
			a := act(KindCreate, "container removed outside shoal")
			a.Drift = true
			return withImage(a), d
		}
		return withImage(act(KindCreate, "new app")), nil
	}
	var out []Action
	if aside != nil {
		out = append(out, Action{Kind: KindRemove, App: app.Name, Target: aside.Name, ContainerID: aside.ID, Reason: "previous version left aside by an interrupted rollout"})
	}
	if c.Hash != h {
		return append(out, withImage(act(KindRecreate, changeReason(c.Spec, app)))...), nil
	}
	if id := obs.Images[app.Image.Ref]; id != "" && c.ImageID != "" && id != c.ImageID {
		return append(out, withImage(act(KindRecreate, fmt.Sprintf("image digest changed (%s -> %s)", short(c.ImageID), short(id))))...), nil
	}
	if what := resourceDrift(app, c); what != "" {
		d := &Drift{App: app.Name, What: what, Policy: policy}
		if policy == "alert" {
			return append(out, act(KindKeep, reasonDriftAlert+""+what)), d
		}
		a := act(KindRecreate, what)
		a.Drift = true
		return append(out, withImage(a)...), d
	}
	switch c.State {
	case "running", "restarting":
		return append(out, act(KindKeep, "up to date")), nil
	case "created":
		return append(out, act(KindStart, "created but never started")), nil
	case "exited", "dead":
		if app.Restart == "" || app.Restart == "no" {
			return append(out, act(KindKeep, fmt.Sprintf("up to date (exited with code %d; restart policy no)", c.ExitCode))), nil
		}
	}
	what := fmt.Sprintf("%s outside shoal", stoppedWord(c.State))
	if c.State == "exited" || c.State == "dead" {
		what += fmt.Sprintf(" (exit code %d)", c.ExitCode)
	}
	d := &Drift{App: app.Name, What: what, Policy: policy}
	if policy == "alert" {
		return append(out, act(KindKeep, reasonDriftAlert+""+what)), d
	}
	a := act(KindStart, what)
	a.Drift = true
	return append(out, a), d
}

func stoppedWord(state string) string {
	if state == "paused" {
		return "paused"
	}
	return "stopped"
}

// imageNeed says whether app's image must be loaded or pulled before its container is created.
func imageNeed(app *spec.App, obs *Observed) (Kind, string) {
	ref := app.Image.Ref
	_, present := obs.Images[ref]
	if src := app.Image.Source; src != nil {
		if !present {
			return KindLoad, "image not present"
		}
		if rec, ok := obs.Loaded[ref]; !ok || rec.SHA256 != src.SHA256 {
			return KindLoad, "image tar sha256 changed"
		}
		return "", ""
	}
	if !present {
		return KindPull, "image not present"
	}
	return "", ""
}

// resourceDrift names limits changed by hand (docker update) on a container whose spec hash matches.
func resourceDrift(app *spec.App, c *Container) string {
	var what []string
	if c.Memory != app.Memory {
		what = append(what, fmt.Sprintf("memory changed outside shoal (%d -> %d bytes)", app.Memory, c.Memory))
	}
	if want := int64(app.CPUs * 1e9); c.NanoCPUs != want {
		what = append(what, fmt.Sprintf("cpus changed outside shoal (%g -> %g)", app.CPUs, float64(c.NanoCPUs)/1e9))
	}
	want := app.Restart
	if want == "" {
		want = "no"
	}
	if got := c.RestartPolicy; got != want && !(got == "" && want == "no") {
		what = append(what, fmt.Sprintf("restart policy changed outside shoal (%s -> %s)", want, got))
	}
	return strings.Join(what, "; ")
}

// changeReason explains a spec hash change by comparing the spec the container
// was created from with the wanted one.
func changeReason(old, app *spec.App) string {
	if old == nil {
		return "spec changed"
	}
	var why []string
	if old.Image.Ref != app.Image.Ref {
		why = append(why, fmt.Sprintf("image %s -> %s", old.Image.Ref, app.Image.Ref))
	} else if !reflect.DeepEqual(old.Image.Source, app.Image.Source) {
		why = append(why, "image tar changed")
	}
	for _, k := range sortedKeys(union(old.Env, app.Env)) {
		ov, inOld := old.Env[k]
		nv, inNew := app.Env[k]
		switch {
		case !inOld:
			why = append(why, "env "+k+" added")
		case !inNew:
			why = append(why, "env "+k+" removed")
		case ov != nv:
			why = append(why, "env "+k+" changed")
		}
	}
	fields := []struct {
		name     string
		old, new any
	}{
		{"command", old.Command, app.Command},
		{"entrypoint", old.Entrypoint, app.Entrypoint},
		{"ports", old.Ports, app.Ports},
		{"volumes", old.Volumes, app.Volumes},
		{"networks", old.Networks, app.Networks},
		{"restart", old.Restart, app.Restart},
		{"healthcheck", old.Healthcheck, app.Healthcheck},
		{"depends_on", old.DependsOn, app.DependsOn},
		{"devices", old.Devices, app.Devices},
		{"cap_add", old.CapAdd, app.CapAdd},
		{"cap_drop", old.CapDrop, app.CapDrop},
		{"user", old.User, app.User},
		{"read_only", old.ReadOnly, app.ReadOnly},
		{"memory", old.Memory, app.Memory},
		{"cpus", old.CPUs, app.CPUs},
		{"logging", old.Logging, app.Logging},
		{"labels", old.Labels, app.Labels},
		{"drift", old.Drift, app.Drift},
		{"health_timeout", old.HealthWait, app.HealthWait},
	}
	for _, f := range fields {
		if !reflect.DeepEqual(f.old, f.new) {
			why = append(why, f.name+" changed")
		}
	}
	if len(why) == 0 {
		return "fleet network changed"
	}
	return strings.Join(why, "; ")
}

// dependencyOrder sorts apps so each comes after what it depends on (by name
// among peers). Apps with an unknown dependency or in a cycle are left out and
// reported.
func dependencyOrder(apps []spec.App) ([]*spec.App, []*AppError) {
	byName := map[string]*spec.App{}
	for i := range apps {
		byName[apps[i].Name] = &apps[i]
	}
	var problems []*AppError
	bad := map[string]bool{}
	for i := range apps {
		for j, d := range apps[i].DependsOn {
			if byName[d] == nil {
				problems = append(problems, &AppError{App: apps[i].Name, Field: fmt.Sprintf("depends_on[%d]", j), Code: ReasonSpecInvalid, Err: fmt.Errorf("unknown app %q", d)})
				bad[apps[i].Name] = true
			}
		}
	}
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var order []*spec.App
	var visit func(name string, path []string) bool
	visit = func(name string, path []string) bool {
		switch state[name] {
		case done:
			return !bad[name]
		case visiting:
			cycle := append([]string(nil), path...)
			for i, n := range cycle {
				if n == name {
					cycle = cycle[i:]
					break
				}
			}
			cycle = append(cycle, name)
			for _, n := range cycle {
				bad[n] = true
			}
			problems = append(problems, &AppError{App: name, Field: "depends_on", Code: ReasonSpecInvalid, Err: fmt.Errorf("dependency cycle %s", strings.Join(cycle, " -> "))})
			return false
		}
		state[name] = visiting
		ok := !bad[name]
		a := byName[name]
		deps := append([]string(nil), a.DependsOn...)
		sort.Strings(deps)
		for _, d := range deps {
			if byName[d] == nil {
				continue
			}
			if !visit(d, append(path, name)) {
				ok = false
			}
		}
		state[name] = done
		if !ok {
			if !bad[name] {
				problems = append(problems, &AppError{App: name, Field: "depends_on", Code: ReasonDependencyFailed, Err: fmt.Errorf("a dependency cannot be planned")})
			}
			bad[name] = true
			return false
		}
		order = append(order, a)
		return true
	}
	names := sortedKeys(byName)
	for _, n := range names {
		visit(n, nil)
	}
	return order, problems
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func union(a, b map[string]string) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
