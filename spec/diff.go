package spec

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Change is one difference between two renders of a device: the field path
// and its value before and after, as compact JSON. An empty From means the
// field was added; an empty To, removed.
type Change struct {
	Path string `json:"path"`
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
}

func (c Change) String() string {
	switch {
	case c.From == "":
		return fmt.Sprintf("%s: added %s", c.Path, c.To)
	case c.To == "":
		return fmt.Sprintf("%s: removed (was %s)", c.Path, c.From)
	}
	return fmt.Sprintf("%s: %s -> %s", c.Path, c.From, c.To)
}

// Diff lists what changes from a to b (either may be nil: the device was
// added or removed). Apps are compared by name and reported as a whole when
// added or removed, field by field when changed; a release by name and version.
func Diff(a, b *Device) []Change {
	var out []Change
	diffValue("", diffable(a), diffable(b), &out)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// diffable is d as plain data with apps keyed by name and the release reduced
// to what an operator recognises.
func diffable(d *Device) any {
	if d == nil {
		return nil
	}
	var m map[string]any
	_ = json.Unmarshal(d.Canonical(), &m)
	apps := map[string]any{}
	for _, a := range d.Apps {
		var am map[string]any
		b, _ := json.Marshal(a)
		_ = json.Unmarshal(b, &am)
		delete(am, "name")
		apps[a.Name] = am
	}
	m["apps"] = apps
	if d.Release != nil {
		m["release"] = d.Release.Name + " (" + d.Release.Version + ", sha256 " + short(d.Release.SHA256) + ")"
	}
	delete(m, "api_version")
	return m
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func diffValue(path string, a, b any, out *[]Change) {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	// Whole apps are reported as added or removed, not field by field.
	wholeApp := strings.HasPrefix(path, "apps.") && strings.Count(path, ".") == 1
	if aok && bok {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		for k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			diffValue(p, am[k], bm[k], out)
		}
		return
	}
	if (a == nil || b == nil) && !wholeApp && (aok || bok) {
		// A struct appeared or vanished: list its fields.
		if aok {
			diffValue(path, a, map[string]any{}, out)
		} else {
			diffValue(path, map[string]any{}, b, out)
		}
		return
	}
	as, bs := compact(a), compact(b)
	if as != bs {
		*out = append(*out, Change{Path: path, From: as, To: bs})
	}
}

func compact(v any) string {
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}
