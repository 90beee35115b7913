package spec

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"cuelang.org/go/cue"
)

// Rollout is one device's rollout policy: how a commit that changes its
// spec reaches it. It comes from the fleet file's rollout section, with the
// fields of each matching group's section laid over it in group order. It is
// not part of the device's canonical spec: a commit that only changes the
// policy changes no device, so it needs no rollout of its own.
type Rollout struct {
	// Track names where the policy comes from: "fleet", or the groups whose
	// rollout sections shaped it, joined by "+". The devices of one track
	// roll out together, wave by wave; tracks go side by side.
	Track string `json:"track"`
	// Waves in order; the last takes every device no earlier wave took.
	Waves []Wave `json:"waves"`
	// ErrorBudget is how many failed devices, across the whole rollout, it
	// tolerates; one more halts it. Nil: no budget beyond the waves' thresholds.
	ErrorBudget *Amount `json:"error_budget,omitempty"`
	// SpreadBy are label keys whose values are spread over the waves.
	SpreadBy []string `json:"spread_by,omitempty"`
	// Disruption bounds the devices updating or failed at once per value of its label keys.
	Disruption *Disruption `json:"disruption_budget,omitempty"`
	Gates      Gates       `json:"gates"`
	// Offline is what the device does when it cannot reach the hub for a grant: wait or apply.
	Offline string `json:"offline"`
}

// Wave is one step of a rollout.
type Wave struct {
	Name        string            `json:"name"`
	MatchLabels map[string]string `json:"match_labels,omitempty"`
	Devices     []string          `json:"devices,omitempty"`
	// Limit caps the wave (a count, or a share of the devices the commit
	// changes in the track); nil: every device the selector matches.
	Limit *Amount `json:"limit,omitempty"`
	// Bake is how long the wave's devices stay healthy before the next wave opens.
	Bake Duration `json:"bake"`
	// SuccessThreshold is how many of the wave's devices must be healthy at the end of the bake.
	SuccessThreshold Amount `json:"success_threshold"`
	Approval         bool   `json:"approval,omitempty"`
}

// HasSelector reports whether the wave picks devices by label or name.
func (w *Wave) HasSelector() bool { return len(w.MatchLabels) > 0 || len(w.Devices) > 0 }

// Selects reports whether the wave's selector admits the device (a wave with no selector admits all).
func (w *Wave) Selects(id string, labels map[string]string) bool {
	if !w.HasSelector() {
		return true
	}
	for _, d := range w.Devices {
		if d == id {
			return true
		}
	}
	if len(w.MatchLabels) == 0 {
		return false
	}
	for k, v := range w.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// Disruption is a disruption budget.
type Disruption struct {
	GroupBy        []string `json:"group_by"`
	MaxUnavailable Amount   `json:"max_unavailable"`
}

// Key is the value of the budget's label keys for a device, e.g. "site=berlin".
func (d *Disruption) Key(labels map[string]string) string {
	parts := make([]string, len(d.GroupBy))
	for i, k := range d.GroupBy {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, ",")
}

// Gates are the health signals a device must show on a new commit.
type Gates struct {
	Converged   bool `json:"converged"`
	AppsHealthy bool `json:"apps_healthy"`
	OSCommitted bool `json:"os_committed"`
	Attestation bool `json:"attestation"`
	Clock       bool `json:"clock"`
}

// Offline policies.
const (
	OfflineWait  = "wait"
	OfflineApply = "apply"
)

// Rollout defaults where the fleet repo sets nothing.
const (
	DefaultBake      = 10 * time.Minute
	defaultThreshold = 100
)

// Amount is a number of devices, or a share of them in percent.
type Amount struct {
	N       float64
	Percent bool
}

// Of returns how many of total devices the amount is: a count capped at
// total, or a share rounded up (so "10%" of 5 devices is 1, never 0).
func (a Amount) Of(total int) int {
	if !a.Percent {
		return min(int(a.N), total)
	}
	return min(int(math.Ceil(a.N*float64(total)/100-1e-9)), total)
}

func (a Amount) String() string {
	if a.Percent {
		return strconv.FormatFloat(a.N, 'f', -1, 64) + "%"
	}
	return strconv.FormatFloat(a.N, 'f', -1, 64)
}

// MarshalJSON writes a count as a number and a share as "N%".
func (a Amount) MarshalJSON() ([]byte, error) {
	if a.Percent {
		return json.Marshal(a.String())
	}
	return json.Marshal(int64(a.N))
}

// UnmarshalJSON reads a number or a string "N%".
func (a *Amount) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		v, err := parseAmount(s)
		if err != nil {
			return err
		}
		*a = v
		return nil
	}
	var n float64
	if err := json.Unmarshal(b, &n); err != nil || n < 0 || n != math.Trunc(n) {
		return fmt.Errorf("amount %s: want a count or a share like \"10%%\"", b)
	}
	*a = Amount{N: n}
	return nil
}

func parseAmount(s string) (Amount, error) {
	num, ok := strings.CutSuffix(s, "%")
	if !ok {
		return Amount{}, fmt.Errorf("amount %q: want a count or a share like \"10%%\"", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return Amount{}, fmt.Errorf("amount %q: want a count or a share like \"10%%\"", s)
	}
	if v > 100 {
		return Amount{}, fmt.Errorf("%s is more than 100%%", s)
	}
	return Amount{N: v, Percent: true}, nil
}

// HasRollout reports whether the fleet declares a rollout: its fleet file
// or a group has a rollout section.
func (f *Fleet) HasRollout() bool {
	if f.fleetRollout != nil {
		return true
	}
	for _, g := range f.groups {
		if g.rollout != nil {
			return true
		}
	}
	return false
}

// rolloutFor returns the policy of a device that matched groups (by name,
// in order), or nil when no section applies or the result is disabled.
func (f *Fleet) rolloutFor(groups []string) *Rollout {
	key := strings.Join(groups, "\x00")
	f.rolloutMu.Lock()
	defer f.rolloutMu.Unlock()
	if r, ok := f.rollouts[key]; ok {
		return r
	}
	merged := f.fleetRollout
	var track []string
	if merged != nil {
		track = append(track, "fleet")
	}
	byName := map[string]*group{}
	for _, g := range f.groups {
		byName[g.name] = g
	}
	for _, name := range groups {
		if g := byName[name]; g != nil && g.rollout != nil {
			merged = mergeSoft(merged, g.rollout)
			if len(track) == 1 && track[0] == "fleet" {
				track = track[:0]
			}
			track = append(track, g.name)
		}
	}
	var r *Rollout
	if merged != nil {
		r = buildRollout(merged)
		if r != nil {
			r.Track = strings.Join(track, "+")
		}
	}
	if f.rollouts == nil {
		f.rollouts = map[string]*Rollout{}
	}
	f.rollouts[key] = r
	return r
}

// rawRollout is a checked rollout section as JSON.
type rawRollout struct {
	Enabled          *bool           `json:"enabled"`
	Waves            []rawWave       `json:"waves"`
	Bake             *Duration       `json:"bake"`
	SuccessThreshold *Amount         `json:"success_threshold"`
	ErrorBudget      *Amount         `json:"error_budget"`
	SpreadBy         []string        `json:"spread_by"`
	Disruption       *Disruption     `json:"disruption_budget"`
	RawGates         map[string]bool `json:"gates"`
	Offline          string          `json:"offline"`
}

type rawWave struct {
	Name     string `json:"name"`
	Selector struct {
		MatchLabels map[string]string `json:"match_labels"`
		Devices     []string          `json:"devices"`
	} `json:"selector"`
	Limit            *Amount   `json:"limit"`
	Bake             *Duration `json:"bake"`
	SuccessThreshold *Amount   `json:"success_threshold"`
	Approval         bool      `json:"approval"`
}

// buildRollout turns a merged, checked section into a policy with every
// default filled in; nil when it is disabled.
func buildRollout(m map[string]any) *Rollout {
	b, err := json.Marshal(m)
	if err != nil {
		return nil
	}
	var raw rawRollout
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil // checked at load; cannot happen
	}
	if raw.Enabled != nil && !*raw.Enabled {
		return nil
	}
	bake := Duration(DefaultBake)
	if raw.Bake != nil {
		bake = *raw.Bake
	}
	threshold := Amount{N: defaultThreshold, Percent: true}
	if raw.SuccessThreshold != nil {
		threshold = *raw.SuccessThreshold
	}
	r := &Rollout{ErrorBudget: raw.ErrorBudget, SpreadBy: raw.SpreadBy, Disruption: raw.Disruption, Offline: raw.Offline}
	if r.Offline == "" {
		r.Offline = OfflineWait
	}
	gate := func(name string) bool {
		v, set := raw.RawGates[name]
		return !set || v
	}
	r.Gates = Gates{Converged: gate("converged"), AppsHealthy: gate("apps_healthy"), OSCommitted: gate("os_committed"),
		Attestation: gate("attestation"), Clock: gate("clock")}
	for i, rw := range raw.Waves {
		w := Wave{Name: rw.Name, MatchLabels: rw.Selector.MatchLabels, Devices: rw.Selector.Devices, Limit: rw.Limit,
			Bake: bake, SuccessThreshold: threshold, Approval: rw.Approval}
		if w.Name == "" {
			w.Name = "wave-" + strconv.Itoa(i+1)
		}
		if rw.Bake != nil {
			w.Bake = *rw.Bake
		}
		if rw.SuccessThreshold != nil {
			w.SuccessThreshold = *rw.SuccessThreshold
		}
		r.Waves = append(r.Waves, w)
	}
	if n := len(r.Waves); n == 0 || r.Waves[n-1].HasSelector() || r.Waves[n-1].Limit != nil {
		// Devices no wave takes form a last wave of their own.
		r.Waves = append(r.Waves, Wave{Name: "rest", Bake: bake, SuccessThreshold: threshold})
		if n == 0 {
			r.Waves[0].Name = "all"
		}
	}
	return r
}

// checkRollout checks what the schema cannot in one file's rollout section
// v (as checked against the schema; raw is the file as written, for
// positions) and returns it as plain data.
func (l *loader) checkRollout(v, raw cue.Value, file string) map[string]any {
	if !v.Exists() {
		return nil
	}
	at := func(p string) cue.Value {
		if rv := raw.LookupPath(cue.ParsePath(p)); rv.Exists() {
			return rv
		}
		return v.LookupPath(cue.ParsePath(p))
	}
	if db := at("disruption_budget"); db.Exists() {
		for _, f := range []string{"group_by", "max_unavailable"} {
			if !raw.LookupPath(cue.ParsePath("disruption_budget." + f)).Exists() {
				l.errAt(db, file, "rollout.disruption_budget."+f, "required: a disruption budget needs group_by (label keys) and max_unavailable (a count or share)")
				return nil
			}
		}
	}
	var m map[string]any
	if err := v.Decode(&m); err != nil {
		l.add(err, file)
		return nil
	}
	ok := true
	amounts := []string{"success_threshold", "error_budget", "disruption_budget.max_unavailable"}
	waves := v.LookupPath(cue.ParsePath("waves"))
	n := 0
	if it, err := waves.List(); err == nil {
		for it.Next() {
			n++
		}
	}
	names := map[string]int{}
	for i := 0; i < n; i++ {
		p := fmt.Sprintf("waves[%d]", i)
		w := at(p)
		amounts = append(amounts, p+".limit", p+".success_threshold")
		if nv := w.LookupPath(cue.ParsePath("name")); nv.Exists() {
			name, _ := nv.String()
			if prev, dup := names[name]; dup {
				l.errAt(nv, file, "rollout."+p+".name", fmt.Sprintf("wave name %q is also waves[%d]'s", name, prev))
				ok = false
			}
			names[name] = i
		}
		sel, lim := w.LookupPath(cue.ParsePath("selector")), w.LookupPath(cue.ParsePath("limit"))
		if i < n-1 && !sel.Exists() && !lim.Exists() {
			l.errAt(w, file, "rollout."+p, fmt.Sprintf("wave %d has neither a selector nor a limit, so it takes every device left and the %d wave(s) after it would be empty", i+1, n-1-i))
			ok = false
		}
	}
	for _, a := range amounts {
		av := at(a)
		s, err := av.String()
		if !av.Exists() || err != nil {
			continue
		}
		if _, err := parseAmount(s); err != nil {
			l.errAt(av, file, "rollout."+a, err.Error())
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return m
}
