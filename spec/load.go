// Package spec is the fleet repo: its CUE schema (embedded), loading a tree of
// .cue and .yaml files from an fs.FS, rendering one device's Device, and the
// canonical JSON and hash of the result.
//
// Rendering layers, lowest first: the schema's defaults, the app definitions
// of enabled apps, fleet defaults, then each matching group's defaults in
// ascending priority and file name order (a later one replaces an earlier
// one). Over these soft values go the hard ones: fleet spec, every matching
// group's spec and the device file, unified by CUE. A hard value always beats
// a soft one; two hard values that differ are a conflict naming both places.
//
// spec does no I/O beyond reading the fs.FS it is given, and imports nothing
// of Shoal's.
package spec

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/cuecontext"
)

//go:embed schema.cue
var schemaSrc []byte

// SchemaSource returns the embedded CUE schema, for `shoal schema` and docs.
func SchemaSource() []byte { return append([]byte(nil), schemaSrc...) }

const schemaFile = "shoal/schema.cue"

// Fleet is a loaded fleet repo. Its shared files (fleet, groups, apps,
// releases) are parsed and checked by Load; device files are read by Load and
// checked when a device is rendered. A Fleet is safe for concurrent use.
type Fleet struct {
	fleetFile *file
	fleetSoft map[string]any

	groups   []*group // in application order
	devices  map[string]*file
	ids      []string
	apps     map[string]map[string]any // app name -> definition (soft layer)
	appFiles map[string]string
	appPos   map[string]map[string]*Error // app name -> field path -> its place in the app file
	releases map[string]*Release

	defaults    map[string]any
	appDefaults map[string]any

	loadErrs Errors
	warnings []string

	fleetRollout map[string]any // the fleet file's rollout section, checked
	rolloutMu    sync.Mutex
	rollouts     map[string]*Rollout // by matched groups

	mu   sync.Mutex
	pool []*renderer // idle renderers; each owns a CUE context
}

type file struct {
	path string // relative to the repo root
	data []byte
}

type group struct {
	name        string
	file        *file
	priority    int
	matchLabels map[string]string
	devices     map[string]bool
	soft        map[string]any
	hasSpec     bool
	rollout     map[string]any // the group's rollout section, checked
}

func (g *group) matches(id string, labels map[string]string) bool {
	if g.devices[id] {
		return true
	}
	if len(g.matchLabels) == 0 {
		// An empty selector matches every device; one with only a device list matches those.
		return len(g.devices) == 0
	}
	for k, v := range g.matchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

var exts = map[string]bool{".yaml": true, ".yml": true, ".cue": true}

// Load reads a fleet repo tree from fsys and checks every shared file against
// the schema. The returned error lists every problem found (spec.Errors); the
// Fleet is returned even then so a caller can go on to check devices, but
// Render refuses to render from a fleet that had load errors.
func Load(fsys fs.FS) (*Fleet, error) {
	f := &Fleet{
		devices:  map[string]*file{},
		apps:     map[string]map[string]any{},
		appFiles: map[string]string{},
		appPos:   map[string]map[string]*Error{},
		releases: map[string]*Release{},
	}
	l := &loader{f: f, ctx: cuecontext.New()}
	l.schema = l.ctx.CompileBytes(schemaSrc, cue.Filename(schemaFile))
	if err := l.schema.Err(); err != nil {
		return nil, fmt.Errorf("compile embedded schema: %w", err)
	}
	if err := l.defaults(); err != nil {
		return nil, err
	}
	if err := l.readTree(fsys); err != nil {
		return nil, err
	}
	l.loadFleetFile()
	l.loadApps()
	l.loadGroups()
	l.checkRefs()
	f.loadErrs = sortErrors(l.errs)
	f.pool = append(f.pool, newRendererFrom(f, l.ctx, l.schema))
	if len(f.loadErrs) > 0 {
		return f, f.loadErrs
	}
	return f, nil
}

// DeviceIDs returns the IDs of every devices/<id> file, sorted.
func (f *Fleet) DeviceIDs() []string { return append([]string(nil), f.ids...) }

// GroupNames returns the groups in the order they apply.
func (f *Fleet) GroupNames() []string {
	out := make([]string, len(f.groups))
	for i, g := range f.groups {
		out[i] = g.name
	}
	return out
}

// AppNames returns the names of every app definition, sorted.
func (f *Fleet) AppNames() []string { return sortedKeys(f.apps) }

// ReleaseNames returns the names of every release, sorted.
func (f *Fleet) ReleaseNames() []string { return sortedKeys(f.releases) }

// Release returns the release named name, or nil.
func (f *Fleet) Release(name string) *Release {
	r := f.releases[name]
	if r == nil {
		return nil
	}
	c := *r
	return &c
}

// Warnings are problems that do not stop a render, such as a device no group matches.
func (f *Fleet) Warnings() []string { return append([]string(nil), f.warnings...) }

type loader struct {
	f      *Fleet
	ctx    *cue.Context
	schema cue.Value
	errs   Errors
	// refs are app and release names used by shared files, checked once all are loaded.
	refs []cue.Value
	raw  cue.Value // the last file check parsed, as written
}

func (l *loader) defaults() error {
	for _, d := range []struct {
		name string
		dst  *map[string]any
	}{{"#Defaults", &l.f.defaults}, {"#AppDefaults", &l.f.appDefaults}} {
		if err := l.schema.LookupPath(cue.ParsePath(d.name)).Decode(d.dst); err != nil {
			return fmt.Errorf("schema %s: %w", d.name, err)
		}
	}
	return nil
}

// readTree reads the files of each kind. Other files (README, images) are left alone.
func (l *loader) readTree(fsys fs.FS) error {
	var fleetFiles []*file
	top, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return fmt.Errorf("read fleet repo: %w", err)
	}
	for _, e := range top {
		if e.Type().IsRegular() && strings.TrimSuffix(e.Name(), path.Ext(e.Name())) == "fleet" && exts[path.Ext(e.Name())] {
			fl, err := readFile(fsys, e.Name())
			if err != nil {
				return err
			}
			fleetFiles = append(fleetFiles, fl)
		}
	}
	switch len(fleetFiles) {
	case 0:
	case 1:
		l.f.fleetFile = fleetFiles[0]
	default:
		l.errorf(fleetFiles[1].path, "", "more than one fleet file (%s and %s): keep one", fleetFiles[0].path, fleetFiles[1].path)
		l.f.fleetFile = fleetFiles[0]
	}
	for _, dir := range []string{"groups", "devices", "apps", "releases"} {
		entries, err := fs.ReadDir(fsys, dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read fleet repo %s/: %w", dir, err)
		}
		seen := map[string]string{}
		for _, e := range entries {
			ext := path.Ext(e.Name())
			if !e.Type().IsRegular() || !exts[ext] {
				continue
			}
			name := strings.TrimSuffix(e.Name(), ext)
			p := dir + "/" + e.Name()
			if prev, ok := seen[name]; ok {
				l.errorf(p, "", "duplicate %s %q: also defined in %s", strings.TrimSuffix(dir, "s"), name, prev)
				continue
			}
			seen[name] = p
			if !nameRE(name) {
				l.errorf(p, "", "file name %q is not a valid name (lowercase letters, digits, '.', '_' and '-')", name)
				continue
			}
			fl, err := readFile(fsys, p)
			if err != nil {
				return err
			}
			switch dir {
			case "devices":
				l.f.devices[name] = fl
				l.f.ids = append(l.f.ids, name)
			case "groups":
				l.f.groups = append(l.f.groups, &group{name: name, file: fl})
			case "apps":
				l.f.appFiles[name] = p
				l.loadApp(name, fl)
			case "releases":
				l.loadRelease(name, fl)
			}
		}
	}
	sort.Strings(l.f.ids)
	return nil
}

func readFile(fsys fs.FS, p string) (*file, error) {
	b, err := fs.ReadFile(fsys, p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return &file{path: p, data: b}, nil
}

func nameRE(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '.' || c == '_') && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// parse compiles a YAML or CUE file into a value of ctx, positions intact.
func parse(ctx *cue.Context, fl *file) (cue.Value, error) {
	if path.Ext(fl.path) == ".cue" {
		v := ctx.CompileBytes(fl.data, cue.Filename(fl.path))
		return v, v.Err()
	}
	af, err := ExtractYAML(fl.path, fl.data)
	if err != nil {
		return cue.Value{}, err
	}
	if len(af.Decls) == 0 {
		// An empty YAML document is an empty struct, not null.
		af.Decls = []ast.Decl{}
	}
	v := ctx.BuildFile(af)
	return v, v.Err()
}

// check parses fl and unifies it with the schema definition def. It returns
// the checked value and whether it is usable; the value as written (whose
// positions are all in the file) is kept for checking references.
func (l *loader) check(fl *file, def string) (cue.Value, bool) {
	v, err := parse(l.ctx, fl)
	if err != nil {
		l.add(err, fl.path)
		return v, false
	}
	l.raw = v
	if k := v.IncompleteKind(); k != cue.StructKind && k != cue.BottomKind {
		l.errorf(fl.path, "", "expected a mapping of fields at the top, found %v", k)
		return v, false
	}
	v = v.Unify(l.schema.LookupPath(cue.ParsePath(def)))
	if err := v.Validate(); err != nil {
		l.add(err, fl.path)
		return v, false
	}
	return v, true
}

// decodeSoft decodes a defaults section (or an app definition) to plain data.
func (l *loader) decodeSoft(v cue.Value, where string) (map[string]any, bool) {
	if !v.Exists() {
		return nil, true
	}
	var m map[string]any
	if err := v.Decode(&m); err != nil {
		l.add(err, where)
		return nil, false
	}
	return m, true
}

func (l *loader) loadFleetFile() {
	fl := l.f.fleetFile
	if fl == nil {
		return
	}
	v, ok := l.check(fl, "#FleetFile")
	if !ok {
		return
	}
	l.f.fleetSoft, _ = l.decodeSoft(v.LookupPath(cue.ParsePath("defaults")), fl.path)
	l.f.fleetRollout = l.checkRollout(v.LookupPath(cue.ParsePath("rollout")), l.raw.LookupPath(cue.ParsePath("rollout")), fl.path)
	l.refs = append(l.refs, l.raw.LookupPath(cue.ParsePath("defaults")), l.raw.LookupPath(cue.ParsePath("spec")))
}

func (l *loader) loadApp(name string, fl *file) {
	v, ok := l.check(fl, "#AppFile")
	if !ok {
		return
	}
	if n := v.LookupPath(cue.ParsePath("name")); n.Exists() {
		if s, _ := n.String(); s != name {
			l.errAt(n, fl.path, "name", fmt.Sprintf("name %q differs from the file name %q", s, name))
			return
		}
	}
	var m map[string]any
	if err := v.Decode(&m); err != nil {
		l.add(err, fl.path)
		return
	}
	delete(m, "api_version")
	delete(m, "description")
	delete(m, "name")
	l.f.apps[name] = m
	pos := map[string]*Error{}
	for _, fp := range []string{"image.ref", "image.source", "image.source.path", "image.source.sha256", "image.source.url"} {
		if fv := l.raw.LookupPath(cue.ParsePath(fp)); fv.Exists() {
			e := errorAt(fv, fp, "")
			if e.File == "" {
				e.File = fl.path
			}
			pos[fp] = e
		}
	}
	l.f.appPos[name] = pos
}

// AppFieldError returns an Error saying msg at the place where the file
// defining app writes field (e.g. "image.source.sha256"; the image fields are
// known), or naming that file alone when it does not write it. Checks that
// need I/O (an image tar's contents) report through it.
func (f *Fleet) AppFieldError(app, field, msg string) *Error {
	if e := f.appPos[app][field]; e != nil {
		c := *e
		c.Msg = msg
		return &c
	}
	return &Error{File: f.appFiles[app], Path: field, Msg: msg}
}

func (l *loader) loadApps() {
	for _, name := range sortedKeys(l.f.apps) {
		for _, dep := range asStrings(l.f.apps[name]["depends_on"]) {
			if _, ok := l.f.apps[dep]; !ok && l.f.appFiles[dep] == "" {
				l.errorf(l.f.appFiles[name], "depends_on", "app %q depends on %q, which no file under apps/ defines", name, dep)
			}
		}
	}
}

func (l *loader) loadRelease(name string, fl *file) {
	v, ok := l.check(fl, "#ReleaseFile")
	if !ok {
		return
	}
	var r Release
	b, err := v.MarshalJSON()
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		l.add(err, fl.path)
		return
	}
	if s, _ := v.LookupPath(cue.ParsePath("built")).String(); s != "" {
		if _, err := time.Parse(time.RFC3339, s); err != nil {
			l.errAt(v.LookupPath(cue.ParsePath("built")), fl.path, "built", "not an RFC 3339 time: "+err.Error())
			return
		}
	}
	if r.MinVersion != "" && compareSemver(r.MinVersion, r.Version) > 0 {
		l.errAt(v.LookupPath(cue.ParsePath("min_version")), fl.path, "min_version",
			fmt.Sprintf("%s is newer than the release's own version %s", r.MinVersion, r.Version))
		return
	}
	if r.Chunks != nil {
		want := (r.Size + r.Chunks.Size - 1) / r.Chunks.Size
		if int64(len(r.Chunks.SHA256)) != want {
			l.errAt(v.LookupPath(cue.ParsePath("chunks.sha256")), fl.path, "chunks.sha256",
				fmt.Sprintf("%d chunk digests for size %d in chunks of %d: want %d", len(r.Chunks.SHA256), r.Size, r.Chunks.Size, want))
			return
		}
	}
	r.Name = name
	l.f.releases[name] = &r
}

func (l *loader) loadGroups() {
	ok := l.f.groups[:0]
	for _, g := range l.f.groups {
		v, good := l.check(g.file, "#GroupFile")
		if !good {
			continue
		}
		var hdr struct {
			Selector struct {
				MatchLabels map[string]string `json:"match_labels"`
				Devices     []string          `json:"devices"`
			} `json:"selector"`
			Priority int `json:"priority"`
		}
		sel := v.LookupPath(cue.ParsePath("selector"))
		if sel.Exists() {
			if err := sel.Decode(&hdr.Selector); err != nil {
				l.add(err, g.file.path)
				continue
			}
		}
		if p := v.LookupPath(cue.ParsePath("priority")); p.Exists() {
			n, err := p.Int64()
			if err != nil {
				l.add(err, g.file.path)
				continue
			}
			hdr.Priority = int(n)
		}
		g.priority = hdr.Priority
		g.matchLabels = hdr.Selector.MatchLabels
		g.devices = map[string]bool{}
		for _, d := range hdr.Selector.Devices {
			g.devices[d] = true
			if l.f.devices[d] == nil {
				l.warnf("%s: selector names device %q, which has no file under devices/", g.file.path, d)
			}
		}
		soft, good := l.decodeSoft(v.LookupPath(cue.ParsePath("defaults")), g.file.path)
		if !good {
			continue
		}
		g.soft = soft
		g.rollout = l.checkRollout(v.LookupPath(cue.ParsePath("rollout")), l.raw.LookupPath(cue.ParsePath("rollout")), g.file.path)
		g.hasSpec = v.LookupPath(cue.ParsePath("spec")).Exists()
		l.refs = append(l.refs, l.raw.LookupPath(cue.ParsePath("defaults")), l.raw.LookupPath(cue.ParsePath("spec")))
		ok = append(ok, g)
	}
	l.f.groups = ok
	sort.SliceStable(l.f.groups, func(i, j int) bool {
		a, b := l.f.groups[i], l.f.groups[j]
		if a.priority != b.priority {
			return a.priority < b.priority
		}
		return a.name < b.name
	})
}

// checkRefs checks that every app and release a shared file names exists.
func (l *loader) checkRefs() {
	for _, v := range l.refs {
		l.errs = append(l.errs, refErrors(l.f, v)...)
	}
}

// refErrors checks the app and release names a #Spec value uses.
func refErrors(f *Fleet, spec cue.Value) Errors {
	if !spec.Exists() {
		return nil
	}
	var errs Errors
	if apps := spec.LookupPath(cue.ParsePath("apps")); apps.Exists() {
		it, err := apps.Fields()
		if err == nil {
			for it.Next() {
				name := it.Selector().Unquoted()
				if _, ok := f.apps[name]; !ok {
					msg := fmt.Sprintf("no app %q: define it in apps/%s.yaml", name, name)
					if f.appFiles[name] != "" {
						msg = fmt.Sprintf("app %q is invalid (see %s)", name, f.appFiles[name])
					}
					errs = append(errs, errorAt(it.Value(), "", msg))
				}
			}
		}
	}
	if rel := spec.LookupPath(cue.ParsePath("release")); rel.Exists() {
		if name, err := rel.String(); err == nil && f.releases[name] == nil {
			errs = append(errs, errorAt(rel, "", fmt.Sprintf("no release %q: define it in releases/%s.yaml", name, name)))
		}
	}
	return errs
}

func (l *loader) add(err error, file string) { l.errs = append(l.errs, toErrors(err, file)...) }

func (l *loader) errorf(file, fieldPath, format string, args ...any) {
	l.errs = append(l.errs, &Error{File: file, Path: fieldPath, Msg: fmt.Sprintf(format, args...)})
}

func (l *loader) errAt(v cue.Value, file, fieldPath, msg string) {
	e := errorAt(v, fieldPath, msg)
	if e.File == "" {
		e.File = file
	}
	l.errs = append(l.errs, e)
}

func (l *loader) warnf(format string, args ...any) {
	l.f.warnings = append(l.f.warnings, fmt.Sprintf(format, args...))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func asStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
