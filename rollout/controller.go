package rollout

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/spec"
)

// Rollout states.
const (
	Running    = "running"
	Paused     = "paused"
	Halted     = "halted"     // a wave missed its threshold, or the error budget is spent
	Aborted    = "aborted"    // an operator aborted it
	Done       = "done"       // every wave of every track passed
	Superseded = "superseded" // a newer commit started its own rollout
)

// Wave states.
const (
	WaveWaiting = "waiting" // not open: an earlier wave has not passed, or approval is due
	WaveOpen    = "open"    // granting; fewer devices healthy than its threshold
	WaveBaking  = "baking"  // enough devices healthy; the bake clock runs
	WavePassed  = "passed"
	WaveHalted  = "halted"
)

// Why a member was admitted.
const (
	WhyWave   = "wave"
	WhyRevert = "revert" // its spec at the commit is the one it ran before a commit it took
	WhyUrgent = "urgent"
)

// Wave is one wave of one track, as the controller keeps it.
type Wave struct {
	Track     string
	Index     int
	Name      string
	State     string
	Opened    time.Time
	BakeStart time.Time // when enough devices were first healthy (zero: not baking)
	Ended     time.Time // passed or halted
	Approved  bool
	Note      string // why halted
}

// Member is one device of a rollout.
type Member struct {
	Device   string
	Labels   map[string]string
	Track    string
	Wave     int // index into the track's waves; -1 until placed
	FromSpec string
	ToSpec   string
	Release  string // the release version the commit moves it to, "" if unchanged
	Why      string // why admitted: wave, revert, urgent
	Admitted time.Time
	Granted  time.Time
	GrantID  string
	Verdict  Verdict
	Gates    []string // the gates that failed
	// Flag marks a device the rollout does not trust: "ungranted" (it
	// reported the commit applied with no grant).
	Flag string
}

// Event is something the controller or the hub records about a rollout.
type Event struct {
	Time    time.Time
	Device  string
	Kind    string
	Message string
}

// Event kinds.
const (
	EventStarted    = "started"
	EventWaveOpened = "wave-opened"
	EventWaveBaking = "wave-baking"
	EventWavePassed = "wave-passed"
	EventHalted     = "halted"
	EventDone       = "done"
	EventFailed     = "device-failed"
	EventUngranted  = "ungranted-apply" // a device reported the commit applied with no grant
	EventNotTarget  = "not-target"      // a device asked for a grant for another commit
	EventSuperseded = "superseded"
	EventApproved   = "approved"
	EventPaused     = "paused"
	EventResumed    = "resumed"
	EventAborted    = "aborted"
	EventRevert     = "revert"
)

// State is one rollout as the controller decides on it. Advance changes it
// in place; nothing in it does I/O.
type State struct {
	ID       int64
	Commit   string
	Status   string
	Urgent   bool
	Reason   string
	Policies map[string]*spec.Rollout // by track
	Waves    map[string][]*Wave       // by track, in order
	Members  map[string]*Member       // by device
}

// Changes is what one Advance changed, for the caller to store and act on.
type Changes struct {
	Status bool // Status or Reason changed
	Waves  []*Wave
	// Members whose wave, admission, verdict or flag changed.
	Members []*Member
	// Admitted are the members admitted by this step: poke them.
	Admitted []*Member
	Events   []Event
}

func (c *Changes) member(m *Member) {
	for _, x := range c.Members {
		if x == m {
			return
		}
	}
	c.Members = append(c.Members, m)
}

// NewState lays out a rollout of commit over members (Wave -1: placed by
// Assign here), with each track's waves waiting.
func NewState(commit string, policies map[string]*spec.Rollout, members []*Member) *State {
	s := &State{Commit: commit, Status: Running, Policies: policies, Waves: map[string][]*Wave{}, Members: map[string]*Member{}}
	for track, p := range policies {
		for i, w := range p.Waves {
			s.Waves[track] = append(s.Waves[track], &Wave{Track: track, Index: i, Name: w.Name, State: WaveWaiting})
		}
	}
	byTrack := map[string][]Candidate{}
	for _, m := range members {
		s.Members[m.Device] = m
		if m.Verdict == "" {
			m.Verdict = Pending
		}
		byTrack[m.Track] = append(byTrack[m.Track], Candidate{ID: m.Device, Labels: m.Labels})
	}
	for track, cands := range byTrack {
		p := policies[track]
		if p == nil {
			continue
		}
		for id, w := range Assign(p, commit, cands) {
			if m := s.Members[id]; m.Wave < 0 {
				m.Wave = w
			}
		}
	}
	return s
}

// Join adds a device that appeared during the rollout: it goes to the wave
// its hash puts it in among the track's devices. Members already placed
// keep their waves.
func (s *State) Join(m *Member) {
	if m.Verdict == "" {
		m.Verdict = Pending
	}
	s.Members[m.Device] = m
	p := s.Policies[m.Track]
	if p == nil {
		m.Wave = 0
		return
	}
	var cands []Candidate
	for _, x := range s.Members {
		if x.Track == m.Track {
			cands = append(cands, Candidate{ID: x.Device, Labels: x.Labels})
		}
	}
	m.Wave = Assign(p, s.Commit, cands)[m.Device]
}

// Open reports whether the rollout may still admit devices.
func (s *State) Open() bool { return s.Status == Running || s.Status == Done }

// Counts are a wave's (or a rollout's) devices by verdict.
type Counts struct {
	Members, Healthy, Failed, Pending, Admitted int
	// FailedGates counts failed devices by gate.
	FailedGates map[string]int
}

// WaveCounts counts the members of one wave.
func (s *State) WaveCounts(track string, wave int) Counts {
	c := Counts{FailedGates: map[string]int{}}
	for _, m := range s.Members {
		if m.Track != track || m.Wave != wave {
			continue
		}
		c.add(m)
	}
	return c
}

// Totals counts every member.
func (s *State) Totals() Counts {
	c := Counts{FailedGates: map[string]int{}}
	for _, m := range s.Members {
		c.add(m)
	}
	return c
}

func (c *Counts) add(m *Member) {
	c.Members++
	if !m.Admitted.IsZero() {
		c.Admitted++
	}
	switch {
	case m.Verdict == Healthy:
		c.Healthy++
	case m.Verdict == Failed:
		c.Failed++
		for _, g := range m.Gates {
			c.FailedGates[g]++
		}
	default:
		c.Pending++
	}
}

// Observe records a member's verdict from its latest report. A failure is
// kept for the rest of the rollout even if later reports look better: a
// device that failed once counts against the budgets.
func (s *State) Observe(m *Member, v Verdict, gates []string, c *Changes, now time.Time) {
	if m.Verdict == Failed || (m.Verdict == v && equalStrings(m.Gates, gates)) {
		return
	}
	m.Verdict, m.Gates = v, gates
	c.member(m)
	if v == Failed {
		c.Events = append(c.Events, Event{Time: now, Device: m.Device, Kind: EventFailed, Message: "failed gate(s): " + strings.Join(gates, ", ")})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Advance takes the rollout one step at now: it checks the error budget,
// moves each track's waves (open, bake, pass, halt) and admits the devices
// of open waves that the disruption budget allows. It returns what changed.
func (s *State) Advance(now time.Time) *Changes {
	c := &Changes{}
	// Revert members go at once, whatever the waves and budgets: they undo
	// a commit they took.
	if s.Status != Aborted && s.Status != Superseded {
		for _, m := range s.sortedMembers() {
			if m.Why == WhyRevert && m.Admitted.IsZero() {
				m.Admitted = now
				c.member(m)
				c.Admitted = append(c.Admitted, m)
			}
		}
	}
	if s.Status != Running && s.Status != Paused && s.Status != Done {
		return c
	}
	if s.budgetSpent(now, c) {
		return c
	}
	allPassed := true
	for _, track := range s.tracks() {
		if !s.advanceTrack(track, now, c) {
			allPassed = false
		}
		if s.Status == Halted {
			return c
		}
	}
	if allPassed && s.Status == Running {
		s.Status = Done
		c.Status = true
		c.Events = append(c.Events, Event{Time: now, Kind: EventDone, Message: "every wave passed"})
	}
	if s.Status != Paused {
		s.admit(now, c)
	}
	return c
}

func (s *State) tracks() []string {
	out := make([]string, 0, len(s.Waves))
	for t := range s.Waves {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// sortedMembers returns the members in admission order: by wave, then by hash.
func (s *State) sortedMembers() []*Member {
	out := make([]*Member, 0, len(s.Members))
	for _, m := range s.Members {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Wave != b.Wave {
			return a.Wave < b.Wave
		}
		ha, hb := Hash(a.Device, s.Commit), Hash(b.Device, s.Commit)
		if ha != hb {
			return ha < hb
		}
		return a.Device < b.Device
	})
	return out
}

// budgetSpent halts the rollout when its failed devices exceed the
// smallest error budget of its tracks.
func (s *State) budgetSpent(now time.Time, c *Changes) bool {
	t := s.Totals()
	for track, p := range s.Policies {
		if p.ErrorBudget == nil {
			continue
		}
		if allowed := p.ErrorBudget.Of(t.Members); t.Failed > allowed {
			s.halt(fmt.Sprintf("error budget spent: %d device(s) failed, track %s allows %s (%d of %d)", t.Failed, track, p.ErrorBudget, allowed, t.Members), now, c)
			return true
		}
	}
	return false
}

func (s *State) halt(reason string, now time.Time, c *Changes) {
	s.Status, s.Reason = Halted, reason
	c.Status = true
	c.Events = append(c.Events, Event{Time: now, Kind: EventHalted, Message: reason})
}

// advanceTrack moves one track's waves; it reports whether all passed.
func (s *State) advanceTrack(track string, now time.Time, c *Changes) bool {
	p := s.Policies[track]
	waves := s.Waves[track]
	blocked := s.blocked(track)
	all := true
	for i, w := range waves {
		if w.State == WavePassed {
			continue
		}
		if w.State == WaveHalted {
			return false
		}
		// An urgent rollout opens every wave at once.
		stop := func() bool {
			all = false
			return !s.Urgent
		}
		pw := &p.Waves[i]
		if w.State == WaveWaiting {
			if s.Status == Paused || (pw.Approval && !w.Approved && !s.Urgent) {
				return false
			}
			w.State, w.Opened = WaveOpen, now
			c.Waves = append(c.Waves, w)
			c.Events = append(c.Events, Event{Time: now, Kind: EventWaveOpened, Message: fmt.Sprintf("%s: wave %d (%s) opened", track, i+1, w.Name)})
		}
		n := s.WaveCounts(track, i)
		need := pw.SuccessThreshold.Of(n.Members)
		stuck := blocked[i]
		switch {
		case n.Failed+stuck > n.Members-need:
			w.State, w.Ended = WaveHalted, now
			w.Note = fmt.Sprintf("%d of %d device(s) failed (%s); the success threshold %s (%d healthy) can no longer be met",
				n.Failed, n.Members, gateSummary(n.FailedGates), pw.SuccessThreshold, need)
			if stuck > 0 {
				w.Note += fmt.Sprintf(" (%d more cannot update: failed devices hold their disruption budget)", stuck)
			}
			c.Waves = append(c.Waves, w)
			s.halt(fmt.Sprintf("%s: wave %d (%s): %s", track, i+1, w.Name, w.Note), now, c)
			return false
		case n.Healthy >= need:
			if s.Urgent || n.Members == 0 {
				w.State, w.Ended = WavePassed, now
				c.Waves = append(c.Waves, w)
				continue
			}
			if w.BakeStart.IsZero() {
				w.State, w.BakeStart = WaveBaking, now
				c.Waves = append(c.Waves, w)
				c.Events = append(c.Events, Event{Time: now, Kind: EventWaveBaking, Message: fmt.Sprintf("%s: wave %d (%s): %d of %d healthy; baking for %s", track, i+1, w.Name, n.Healthy, n.Members, pw.Bake.D())})
			}
			if now.Sub(w.BakeStart) < pw.Bake.D() {
				return false
			}
			w.State, w.Ended = WavePassed, now
			c.Waves = append(c.Waves, w)
			c.Events = append(c.Events, Event{Time: now, Kind: EventWavePassed, Message: fmt.Sprintf("%s: wave %d (%s) passed: %d of %d healthy after %s", track, i+1, w.Name, n.Healthy, n.Members, pw.Bake.D())})
		default:
			if !w.BakeStart.IsZero() || w.State == WaveBaking {
				// Fewer devices healthy than the threshold: the bake starts over.
				w.State, w.BakeStart = WaveOpen, time.Time{}
				c.Waves = append(c.Waves, w)
			}
			if stop() {
				return false
			}
		}
	}
	return all
}

// blocked counts, per wave of a track, the members that can never be
// admitted: their disruption budget is held for good by failed devices.
func (s *State) blocked(track string) map[int]int {
	p := s.Policies[track]
	if p == nil || p.Disruption == nil {
		return nil
	}
	failed, size := map[string]int{}, map[string]int{}
	for _, m := range s.Members {
		if m.Track != track {
			continue
		}
		k := p.Disruption.Key(m.Labels)
		size[k]++
		if m.Verdict == Failed {
			failed[k]++
		}
	}
	out := map[int]int{}
	for _, m := range s.Members {
		if m.Track != track || !m.Admitted.IsZero() {
			continue
		}
		if k := p.Disruption.Key(m.Labels); failed[k] >= p.Disruption.MaxUnavailable.Of(size[k]) {
			out[m.Wave]++
		}
	}
	return out
}

func gateSummary(g map[string]int) string {
	var parts []string
	for _, name := range Gates {
		if n := g[name]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d", name, n))
		}
	}
	if len(parts) == 0 {
		return "no gate"
	}
	return strings.Join(parts, ", ")
}

// admit admits the members of open waves, in order, that their disruption
// budget allows: a device counts as unavailable from its admission until it
// is healthy, and for good once it failed.
func (s *State) admit(now time.Time, c *Changes) {
	if !s.Open() {
		return
	}
	type key struct{ track, value string }
	unavailable := map[key]int{}
	size := map[key]int{}
	budget := func(m *Member) (key, *spec.Disruption) {
		p := s.Policies[m.Track]
		if p == nil || p.Disruption == nil {
			return key{}, nil
		}
		return key{m.Track, p.Disruption.Key(m.Labels)}, p.Disruption
	}
	members := s.sortedMembers()
	for _, m := range members {
		k, d := budget(m)
		if d == nil {
			continue
		}
		size[k]++
		if !m.Admitted.IsZero() && m.Verdict != Healthy {
			unavailable[k]++
		}
	}
	for _, m := range members {
		if !m.Admitted.IsZero() || !s.waveOpen(m) {
			continue
		}
		if k, d := budget(m); d != nil {
			if unavailable[k] >= d.MaxUnavailable.Of(size[k]) {
				continue
			}
			unavailable[k]++
		}
		m.Admitted = now
		if m.Why == "" {
			m.Why = WhyWave
			if s.Urgent {
				m.Why = WhyUrgent
			}
		}
		c.member(m)
		c.Admitted = append(c.Admitted, m)
	}
}

// waveOpen reports whether m's wave is open, baking or passed.
func (s *State) waveOpen(m *Member) bool {
	ws := s.Waves[m.Track]
	if m.Wave < 0 || m.Wave >= len(ws) {
		return false
	}
	switch ws[m.Wave].State {
	case WaveOpen, WaveBaking, WavePassed:
		return true
	}
	return false
}

// Wait says why a member that is not admitted must wait, and when it is
// worth asking again (it is poked when admitted).
func (s *State) Wait(m *Member, now time.Time) api.GrantWait {
	ws := s.Waves[m.Track]
	w := api.GrantWait{Track: m.Track, WaveIndex: m.Wave + 1, Waves: len(ws), RetryAfter: time.Minute}
	if m.Wave >= 0 && m.Wave < len(ws) {
		w.Wave = ws[m.Wave].Name
	}
	switch s.Status {
	case Halted:
		w.Reason, w.Message, w.RetryAfter = api.WaitHalted, "the rollout of "+short(s.Commit)+" is halted: "+s.Reason, 5*time.Minute
		return w
	case Aborted:
		w.Reason, w.Message, w.RetryAfter = api.WaitAborted, "the rollout of "+short(s.Commit)+" was aborted by an operator", 5*time.Minute
		return w
	case Paused:
		w.Reason, w.Message = api.WaitPaused, "the rollout of "+short(s.Commit)+" is paused by an operator"
		return w
	}
	if m.Wave < 0 || m.Wave >= len(ws) {
		w.Reason, w.Message, w.RetryAfter = api.WaitJoining, "the hub is placing this device in a wave of the rollout of "+short(s.Commit), 10*time.Second
		return w
	}
	p := s.Policies[m.Track]
	if s.waveOpen(m) {
		w.Reason = api.WaitBudget
		w.Message = fmt.Sprintf("wave %d (%s) is open, but the disruption budget of %s is used up", m.Wave+1, w.Wave, p.Disruption.Key(m.Labels))
		return w
	}
	// The first wave of the track that stands in the way.
	for i := 0; i < m.Wave; i++ {
		prev := ws[i]
		if prev.State == WavePassed {
			continue
		}
		w.Reason = api.WaitWave
		switch {
		case prev.State == WaveBaking:
			left := p.Waves[i].Bake.D() - now.Sub(prev.BakeStart)
			w.Message = fmt.Sprintf("wave %d (%s) opens after wave %d (%s) bakes: %s left", m.Wave+1, w.Wave, i+1, prev.Name, left.Round(time.Second))
			w.RetryAfter = max(min(left, w.RetryAfter), 5*time.Second)
		case prev.State == WaveOpen:
			n := s.WaveCounts(m.Track, i)
			w.Message = fmt.Sprintf("wave %d (%s) opens after wave %d (%s) is healthy: %d of %d healthy, %s needed", m.Wave+1, w.Wave, i+1, prev.Name, n.Healthy, n.Members, p.Waves[i].SuccessThreshold)
		case p.Waves[i].Approval && !prev.Approved:
			w.Reason = api.WaitApproval
			w.Message = fmt.Sprintf("wave %d (%s) waits for an operator to approve wave %d (%s)", m.Wave+1, w.Wave, i+1, prev.Name)
		default:
			w.Message = fmt.Sprintf("wave %d (%s) opens after wave %d (%s)", m.Wave+1, w.Wave, i+1, prev.Name)
		}
		return w
	}
	w.Reason = api.WaitApproval
	w.Message = fmt.Sprintf("wave %d (%s) waits for an operator's approval", m.Wave+1, w.Wave)
	return w
}

func short(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}
