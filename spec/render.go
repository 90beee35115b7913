package spec

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
)

// renderer renders devices in one CUE context. A CUE context is not safe for
// concurrent use, so each goroutine that renders takes its own renderer.
type renderer struct {
	f      *Fleet
	ctx    *cue.Context
	schema cue.Value
	defs   struct{ deviceFile cue.Value }
	// sets caches the unified hard layers of each combination of groups.
	sets map[string]*groupSet
	// renders counts uses: a CUE context keeps all it ever built, so a
	// renderer is retired after rendererUses renders to bound memory.
	renders int
}

const rendererUses = 500

type groupSet struct {
	hard     cue.Value      // fleet and group spec sections, unified
	hardGo   map[string]any // the concrete part of hard
	concrete bool           // hard holds no constraints beyond hardGo
	errs     Errors
	soft     map[string]any
	names    []string
}

func newRenderer(f *Fleet) *renderer {
	ctx := cuecontext.New()
	return newRendererFrom(f, ctx, ctx.CompileBytes(schemaSrc, cue.Filename(schemaFile)))
}

func newRendererFrom(f *Fleet, ctx *cue.Context, schema cue.Value) *renderer {
	r := &renderer{f: f, ctx: ctx, schema: schema, sets: map[string]*groupSet{}}
	r.defs.deviceFile = schema.LookupPath(cue.ParsePath("#DeviceFile"))
	return r
}

func (f *Fleet) getRenderer() *renderer {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.pool); n > 0 {
		r := f.pool[n-1]
		f.pool = f.pool[:n-1]
		return r
	}
	return newRenderer(f)
}

func (f *Fleet) putRenderer(r *renderer) {
	r.renders++
	if r.renders >= rendererUses {
		return
	}
	f.mu.Lock()
	f.pool = append(f.pool, r)
	f.mu.Unlock()
}

// Render renders the device with the given ID. Errors are spec.Errors (with
// ErrInvalid) or wrap ErrUnknownDevice.
func (f *Fleet) Render(id string) (*Device, error) {
	if len(f.loadErrs) > 0 {
		return nil, f.loadErrs
	}
	d, _, err := f.render(id)
	return d, err
}

func (f *Fleet) render(id string) (*Device, []string, error) {
	if len(f.loadErrs) > 0 {
		return nil, nil, f.loadErrs
	}
	r := f.getRenderer()
	defer f.putRenderer(r)
	d, err := r.render(id)
	var warn []string
	if d != nil && len(d.Groups) == 0 && len(f.groups) > 0 {
		warn = append(warn, fmt.Sprintf("%s: device %q matches no group", f.devices[id].path, id))
	}
	return d, warn, err
}

// Result is the outcome of rendering one device in RenderAll.
type Result struct {
	ID       string
	Device   *Device
	Warnings []string
	Err      error
}

// RenderAll renders every device on up to workers goroutines (each with its
// own CUE context) and returns results in DeviceIDs order.
func (f *Fleet) RenderAll(workers int) []Result {
	ids := f.ids
	out := make([]Result, len(ids))
	if workers < 1 {
		workers = 1
	}
	if workers > len(ids) {
		workers = len(ids)
	}
	next := make(chan int)
	done := make(chan struct{})
	for w := 0; w < workers; w++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range next {
				d, warn, err := f.render(ids[i])
				out[i] = Result{ID: ids[i], Device: d, Warnings: warn, Err: err}
			}
		}()
	}
	for i := range ids {
		next <- i
	}
	close(next)
	for w := 0; w < workers; w++ {
		<-done
	}
	return out
}

func (r *renderer) render(id string) (*Device, error) {
	fl := r.f.devices[id]
	if fl == nil {
		return nil, fmt.Errorf("device %q: %w (no devices/%s.yaml)", id, ErrUnknownDevice, id)
	}
	raw, err := parse(r.ctx, fl)
	if err != nil {
		return nil, toErrors(err, fl.path)
	}
	// Each layer is checked against the schema on its own (shared files by
	// Load, the device file here); the layers are then combined without the
	// schema, which is what keeps a render cheap.
	if err := raw.Unify(r.defs.deviceFile).Validate(); err != nil {
		return nil, sortErrors(toErrors(err, fl.path))
	}
	var labels map[string]string
	if lv := raw.LookupPath(cue.ParsePath("labels")); lv.Exists() {
		if err := lv.Decode(&labels); err != nil {
			return nil, toErrors(err, fl.path)
		}
	}
	set := r.groupSet(id, labels)
	if len(set.errs) > 0 {
		return nil, set.errs
	}
	hard, hardGo, concrete := set.hard, set.hardGo, set.concrete
	if devSpec := raw.LookupPath(cue.ParsePath("spec")); devSpec.Exists() {
		if errs := refErrors(r.f, devSpec); len(errs) > 0 {
			return nil, sortErrors(errs)
		}
		hard = hard.Unify(devSpec)
		if err := hard.Validate(); err != nil {
			return nil, sortErrors(toErrors(err, fl.path))
		}
		hardGo, concrete = concreteGo(hard)
	}
	soft := r.softFor(set.soft, hardGo)
	var b []byte
	if concrete {
		b, err = json.Marshal(mergeSoft(soft, hardGo))
	} else {
		// Some hard layer holds constraints (a .cue file): let CUE apply them to the soft values too.
		full := hard.Unify(r.ctx.Encode(soft))
		if err := full.Validate(cue.Concrete(true)); err != nil {
			return nil, sortErrors(toErrors(err, fl.path))
		}
		b, err = full.MarshalJSON()
	}
	if err != nil {
		return nil, Errors{{File: fl.path, Msg: "encode rendered spec: " + err.Error()}}
	}
	var rs rawSpec
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, Errors{{File: fl.path, Msg: "decode rendered spec: " + err.Error()}}
	}
	d, errs := r.f.build(id, labels, set.names, &rs)
	if len(errs) > 0 {
		for _, e := range errs {
			if e.File == "" {
				e.File = fl.path
			}
		}
		return nil, sortErrors(errs)
	}
	return d, nil
}

// groupSet returns the hard layers and merged soft layers of the groups the device matches.
func (r *renderer) groupSet(id string, labels map[string]string) *groupSet {
	var matched []*group
	var key strings.Builder
	for i, g := range r.f.groups {
		if g.matches(id, labels) {
			matched = append(matched, g)
			key.WriteString(strconv.Itoa(i))
			key.WriteByte(',')
		}
	}
	if s := r.sets[key.String()]; s != nil {
		return s
	}
	s := &groupSet{hard: r.ctx.CompileString("{}")}
	soft := r.f.defaults
	if r.f.fleetFile != nil {
		soft = mergeSoft(soft, r.f.fleetSoft)
		s.hard = r.addHard(s, s.hard, r.f.fleetFile)
	}
	for _, g := range matched {
		s.names = append(s.names, g.name)
		soft = mergeSoft(soft, g.soft)
		if g.hasSpec {
			s.hard = r.addHard(s, s.hard, g.file)
		}
	}
	s.soft = soft
	if len(s.errs) == 0 {
		if err := s.hard.Validate(); err != nil {
			s.errs = sortErrors(toErrors(err, ""))
		}
	}
	s.hardGo, s.concrete = concreteGo(s.hard)
	r.sets[key.String()] = s
	return s
}

func (r *renderer) addHard(s *groupSet, into cue.Value, fl *file) cue.Value {
	v, err := parse(r.ctx, fl)
	if err != nil {
		s.errs = append(s.errs, toErrors(err, fl.path)...)
		return into
	}
	spec := v.LookupPath(cue.ParsePath("spec"))
	if !spec.Exists() {
		return into
	}
	return into.Unify(spec)
}

// softFor adds the definitions and defaults of every enabled app to the soft
// layers, then drops every soft value the hard layers set.
func (r *renderer) softFor(soft, hard map[string]any) map[string]any {
	apps := map[string]any{}
	names := map[string]bool{}
	for _, m := range []map[string]any{soft, hard} {
		if a, ok := m["apps"].(map[string]any); ok {
			for k := range a {
				names[k] = true
			}
		}
	}
	softApps, _ := soft["apps"].(map[string]any)
	for name := range names {
		def := mergeSoft(r.f.appDefaults, r.f.apps[name])
		if over, ok := softApps[name].(map[string]any); ok {
			def = mergeSoft(def, over)
		}
		apps[name] = def
	}
	out := make(map[string]any, len(soft))
	for k, v := range soft {
		out[k] = v
	}
	if len(apps) > 0 {
		out["apps"] = apps
	}
	return subtractHard(out, hard)
}

// mergeSoft returns base with over laid on top: maps merge key by key, any
// other value of over replaces base's. Neither input is modified.
func mergeSoft(base, over map[string]any) map[string]any {
	if len(over) == 0 {
		return base
	}
	out := make(map[string]any, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, ov := range over {
		bm, bok := out[k].(map[string]any)
		om, ook := ov.(map[string]any)
		if bok && ook {
			out[k] = mergeSoft(bm, om)
			continue
		}
		out[k] = ov
	}
	return out
}

// subtractHard returns soft without the values hard sets, so that a hard value
// always wins over a soft one.
func subtractHard(soft, hard map[string]any) map[string]any {
	out := make(map[string]any, len(soft))
	for k, sv := range soft {
		hv, set := hard[k]
		if !set {
			out[k] = sv
			continue
		}
		sm, sok := sv.(map[string]any)
		hm, hok := hv.(map[string]any)
		if sok && hok {
			if sub := subtractHard(sm, hm); len(sub) > 0 {
				out[k] = sub
			}
		}
	}
	return out
}

// concreteGo returns the concrete part of v as plain data (structs as maps,
// defaults taken) and whether v held nothing else.
func concreteGo(v cue.Value) (map[string]any, bool) {
	all := true
	m, _ := concreteValue(v, &all).(map[string]any)
	if m == nil {
		m = map[string]any{}
	}
	return m, all
}

func concreteValue(v cue.Value, all *bool) any {
	if d, ok := v.Default(); ok {
		v = d
	}
	if v.IncompleteKind() == cue.StructKind {
		it, err := v.Fields()
		if err != nil {
			*all = false
			return nil
		}
		m := map[string]any{}
		for it.Next() {
			if c := concreteValue(it.Value(), all); c != nil {
				m[it.Selector().Unquoted()] = c
			}
		}
		return m
	}
	var x any
	if !v.IsConcrete() || v.Decode(&x) != nil {
		*all = false
		return nil
	}
	return x
}

// rawSpec is a rendered #Spec as JSON, before it becomes a Device.
type rawSpec struct {
	Apps        map[string]rawApp `json:"apps"`
	Release     string            `json:"release"`
	Hold        bool              `json:"hold"`
	Network     string            `json:"network"`
	Update      UpdatePolicy      `json:"update"`
	Time        TimePolicy        `json:"time"`
	Attestation AttestationPolicy `json:"attestation"`
}

type rawApp struct {
	App
	Enabled *bool `json:"enabled"`
	Memory  any   `json:"memory"`
}

// build turns a rendered spec into a Device and checks what spans apps.
func (f *Fleet) build(id string, labels map[string]string, groups []string, raw *rawSpec) (*Device, Errors) {
	d := &Device{
		APIVersion:  APIVersion,
		ID:          id,
		Labels:      labels,
		Groups:      groups,
		Hold:        raw.Hold,
		Network:     raw.Network,
		Update:      raw.Update,
		Time:        raw.Time,
		Attestation: raw.Attestation,
		Rollout:     f.rolloutFor(groups),
	}
	var errs Errors
	if raw.Release != "" {
		d.Release = f.Release(raw.Release)
	}
	for _, name := range sortedKeys(raw.Apps) {
		ra := raw.Apps[name]
		if ra.Enabled != nil && !*ra.Enabled {
			continue
		}
		if ra.Image.Ref == "" {
			errs = append(errs, &Error{Path: "apps." + name + ".image",
				Msg: fmt.Sprintf("required: app %q has no image (set image.ref in %s)", name, f.appFiles[name])})
			continue
		}
		a := ra.App
		a.Name = name
		mem, err := parseSize(ra.Memory)
		if err != nil {
			errs = append(errs, &Error{Path: "apps." + name + ".memory", Msg: err.Error()})
		}
		a.Memory = mem
		appDefaults(&a)
		d.Apps = append(d.Apps, a)
	}
	errs = append(errs, checkApps(d)...)
	return d, errs
}

// appDefaults fills the defaults of list elements, which CUE layers cannot carry.
func appDefaults(a *App) {
	for i := range a.Ports {
		if a.Ports[i].Protocol == "" {
			a.Ports[i].Protocol = "tcp"
		}
	}
	for i := range a.Volumes {
		if a.Volumes[i].Type == "" {
			a.Volumes[i].Type = "volume"
			if strings.HasPrefix(a.Volumes[i].Source, "/") || strings.HasPrefix(a.Volumes[i].Source, ".") {
				a.Volumes[i].Type = "bind"
			}
		}
	}
	if h := a.Healthcheck; h != nil {
		if h.Interval == 0 {
			h.Interval = Duration(10 * time.Second)
		}
		if h.Timeout == 0 {
			h.Timeout = Duration(5 * time.Second)
		}
		if h.Retries == 0 {
			h.Retries = 3
		}
	}
}

// checkApps checks what no single app can: dependencies, cycles, host ports.
func checkApps(d *Device) Errors {
	var errs Errors
	enabled := map[string]*App{}
	for i := range d.Apps {
		enabled[d.Apps[i].Name] = &d.Apps[i]
	}
	ports := map[string]string{}
	for _, a := range d.Apps {
		for i, dep := range a.DependsOn {
			if enabled[dep] == nil {
				errs = append(errs, &Error{Path: fmt.Sprintf("apps.%s.depends_on[%d]", a.Name, i),
					Msg: fmt.Sprintf("app %q depends on %q, which this device does not run", a.Name, dep)})
			}
		}
		for i, p := range a.Ports {
			k := fmt.Sprintf("%s/%s:%d", p.HostIP, p.Protocol, p.Host)
			if other, ok := ports[k]; ok {
				errs = append(errs, &Error{Path: fmt.Sprintf("apps.%s.ports[%d].host", a.Name, i),
					Msg: fmt.Sprintf("host port %d/%s is also published by app %q", p.Host, p.Protocol, other)})
				continue
			}
			ports[k] = a.Name
		}
		if a.Image.Source == nil && !strings.Contains(a.Image.Ref, "@sha256:") {
			errs = append(errs, &Error{Path: "apps." + a.Name + ".image",
				Msg: fmt.Sprintf("image %q must be pinned by digest (ref@sha256:...) or have a source with a sha256", a.Image.Ref)})
		}
	}
	if cycle := dependencyCycle(d.Apps); cycle != "" {
		errs = append(errs, &Error{Path: "apps", Msg: "depends_on cycle: " + cycle})
	}
	return errs
}

func dependencyCycle(apps []App) string {
	deps := map[string][]string{}
	for _, a := range apps {
		deps[a.Name] = a.DependsOn
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var stack []string
	var visit func(string) string
	visit = func(n string) string {
		switch state[n] {
		case visiting:
			i := len(stack) - 1
			for i > 0 && stack[i] != n {
				i--
			}
			return strings.Join(append(append([]string(nil), stack[i:]...), n), " -> ")
		case done:
			return ""
		}
		state[n] = visiting
		stack = append(stack, n)
		for _, d := range deps[n] {
			if c := visit(d); c != "" {
				return c
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		return ""
	}
	names := make([]string, 0, len(deps))
	for n := range deps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if c := visit(n); c != "" {
			return c
		}
	}
	return ""
}

// parseSize reads a size: a byte count, or a number with k, m or g (powers of 1024).
func parseSize(v any) (int64, error) {
	switch x := v.(type) {
	case nil:
		return 0, nil
	case float64:
		return int64(x), nil
	case string:
		s := strings.TrimSuffix(strings.TrimSuffix(x, "b"), "B")
		mult := 1.0
		if n := len(s); n > 0 {
			switch s[n-1] {
			case 'k', 'K':
				mult = 1 << 10
			case 'm', 'M':
				mult = 1 << 20
			case 'g', 'G':
				mult = 1 << 30
			}
			if mult != 1 {
				s = s[:n-1]
			}
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, fmt.Errorf("size %q: want bytes or a number with k, m or g", x)
		}
		return int64(f * mult), nil
	}
	return 0, fmt.Errorf("size: want bytes or a size like \"256m\", got %v", v)
}
