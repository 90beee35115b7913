// Package agent is the Shoal device daemon: its config, its state dir, the
// loop (fetch → render → stages → status), the outbox that delivers status
// reports to the hub, and its metrics and health endpoints.
//
// The parts it drives (the fleet repo source, the container reconciler, the
// A/B updater, attestation, the hub client) sit behind small interfaces
// declared here; cmd/shoal-agent wires the real ones in.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/internal/backoff"
	"github.com/shoalfleet/shoal/internal/memtrim"
	"github.com/shoalfleet/shoal/internal/sdnotify"
	"github.com/shoalfleet/shoal/internal/version"
	"github.com/shoalfleet/shoal/source"
	"github.com/shoalfleet/shoal/spec"
)

// Fetcher is the fleet repo; *source.Source implements it.
type Fetcher interface {
	Fetch(ctx context.Context, since string) (*source.Revision, error)
	ImportBundle(ctx context.Context, path, since string) (*source.Revision, error)
	Open(commit string) (*source.Revision, error)
}

// Renderer renders this device's spec from a fleet repo tree.
type Renderer func(fsys fs.FS, deviceID string) (*spec.Device, error)

// RenderSpec loads the fleet repo with spec.Load and renders deviceID.
func RenderSpec(fsys fs.FS, deviceID string) (*spec.Device, error) {
	f, err := spec.Load(fsys)
	if err != nil {
		return nil, err
	}
	return f.Render(deviceID)
}

// Stage converges one part of the device on a rendered spec: containers,
// the OS update, attestation and the clock. The agent calls Converge only
// when there is something new (a new spec, a previous pass that did not
// converge, a drift trigger, or the first pass after start).
type Stage interface {
	Name() string
	Converge(ctx context.Context, t Target) (StageResult, error)
}

// Target is what a stage converges on.
type Target struct {
	Device *spec.Device
	FS     fs.FS // the fleet repo at Commit (image tars, release files)
	Commit string
	// CommitTime is the commit's committer time: a lower bound for a clock
	// with no RTC, once the commit has passed the signature policy.
	CommitTime time.Time
}

// StageResult is what a stage reports; the agent copies it into status.
// A returned error may implement Stalled() bool (needs a person) and
// Reason() string (a stable machine reason); otherwise it is retried.
type StageResult struct {
	Converged bool
	Summary   string
	Apps      []api.AppStatus
	Update    *api.UpdateStatus
	Clock     *api.ClockStatus
	Attest    *api.AttestStatus
}

// Poker waits for the hub's next poke after the one numbered after (long-poll).
// The hub client implements it; a nil poke means the poll timed out.
type Poker interface {
	WaitPoke(ctx context.Context, after int64) (*api.Poke, error)
}

// Options configure an Agent. Config and Source are required.
type Options struct {
	Config   *Config
	Source   Fetcher
	Render   Renderer // nil: RenderSpec
	Stages   []Stage
	Reporter Reporter // nil: reports wait in the outbox
	Poker    Poker    // nil: no pokes
	// Granter asks the hub for rollout grants; nil (no hub configured):
	// the fleet's rollout does not hold this device back.
	Granter Granter
	Logger  *slog.Logger
	Now     func() time.Time
	// Notify sends sd_notify states; nil: sdnotify.Notify.
	Notify func(state string) error
	// Collectors are the stages' metrics, served on the agent's /metrics.
	Collectors []prometheus.Collector
}

// Agent is the device daemon. New builds it, Pass runs one pass, Run loops.
type Agent struct {
	o       Options
	cfg     *Config
	log     *slog.Logger
	now     func() time.Time
	outbox  *Outbox
	metrics *metrics
	stateF  stateFile

	mu        sync.Mutex // guards state, last and busySince for readers (healthz)
	state     *State
	busySince time.Time

	triggers   chan string
	started    bool                   // a pass has run in this process
	results    map[string]StageResult // the stages' last results
	applied    *spec.Device           // the applied render, kept for groups and resync
	lastStatus *api.Status
	bundles    map[string]bool // bundle files seen: path|size|mtime
	// held is set by a pass that held a new commit back for a grant; retry
	// is when to ask again (0: back off, the hub is unreachable).
	held      bool
	holdRetry time.Duration
}

// New opens the state dir (creating its layout) and the outbox.
func New(o Options) (*Agent, error) {
	if o.Config == nil || o.Source == nil {
		return nil, errors.New("agent: config and source are required")
	}
	if o.Render == nil {
		o.Render = RenderSpec
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Notify == nil {
		o.Notify = sdnotify.Notify
	}
	cfg := o.Config
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "images")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("agent: state dir: %w", err)
		}
	}
	if err := atomicfile.CleanTemp(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	st, err := ReadState(cfg.StateDir)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		// Atomic writes cannot leave this; a damaged card can. Keep the
		// evidence and start over: the next pass fetches and converges again.
		p := filepath.Join(cfg.StateDir, "state.json")
		aside := fmt.Sprintf("%s.corrupt-%d", p, o.Now().Unix())
		o.Logger.Error("state.json unreadable; set aside, starting from an empty state", "err", err, "moved_to", aside)
		if rerr := os.Rename(p, aside); rerr != nil {
			return nil, fmt.Errorf("agent: %w (and set aside: %w)", err, rerr)
		}
		st, err = &State{Version: StateVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{
		o: o, cfg: cfg, now: o.Now, state: st,
		log:      o.Logger.With("device", cfg.DeviceID),
		metrics:  newMetrics(),
		stateF:   stateFile{path: filepath.Join(cfg.StateDir, "state.json")},
		triggers: make(chan string, 1),
		results:  map[string]StageResult{},
		bundles:  map[string]bool{},
	}
	for _, c := range o.Collectors {
		if err := a.metrics.reg.Register(c); err != nil {
			return nil, fmt.Errorf("agent: register stage metrics: %w", err)
		}
	}
	a.outbox, err = OpenOutbox(filepath.Join(cfg.StateDir, "outbox"), cfg.OutboxMax, a.log)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.outbox.onDepth = func(depth int, dropped uint64) {
		a.metrics.outboxDepth.Set(float64(depth))
		a.metrics.setDropped(dropped)
	}
	a.outbox.changed()
	a.metrics.setCommit(st.Applied.Commit, st.Applied.SpecHash)
	return a, nil
}

// Outbox returns the agent's outbox.
func (a *Agent) Outbox() *Outbox { return a.outbox }

// State returns a copy of the agent's current state.
func (a *Agent) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return *a.state
}

// Trigger asks for a pass now and never blocks. reason is logged and
// reported; "drift" (a Docker event: a container changed outside Shoal) also
// makes the stages converge again even when the fleet repo has nothing new.
func (a *Agent) Trigger(reason string) {
	select {
	case a.triggers <- reason:
	default:
	}
}

// Converged reports whether r ended with the device converged on the applied commit.
func (r *Report) Converged() bool { return r.Status.State == api.StateConverged }

// Pass runs one pass: fetch (or import a new bundle), render, converge the
// stages when something is new, then persist state and queue a status
// report. Problems of the device end up in the report; the error is only for
// a cancelled ctx or a state dir that cannot be written.
func (a *Agent) Pass(ctx context.Context, trigger string) (*Report, error) {
	start := a.now()
	a.setBusy(start)
	defer a.setBusy(time.Time{})
	force := !a.started || trigger == "drift"
	a.started = true

	a.mu.Lock()
	st := *a.state
	a.mu.Unlock()
	rep := &Report{Trigger: trigger, Stages: map[string]StageReport{}}
	var problem *api.Problem
	var specErrs []string
	attempted := st.Attempted

	// 1. The fleet repo.
	var rev *source.Revision
	var err error
	if b := a.nextBundle(); b != "" {
		rep.Trigger = "bundle"
		a.log.Info("importing bundle", "file", b)
		rev, err = a.o.Source.ImportBundle(ctx, b, st.Applied.Commit)
	} else {
		rev, err = a.o.Source.Fetch(ctx, st.Applied.Commit)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var cand *source.Revision
	switch {
	case err != nil:
		a.metrics.errors.WithLabelValues("fetch").Inc()
		problem = sourceProblem(err)
		if rev != nil { // refused by policy: that commit is the attempt
			attempted = Attempt{Commit: rev.Commit, Time: start, Problem: problem}
			// Said once per commit and reason, as a render failure is.
			if prev := st.Attempted; prev.Commit != rev.Commit || prev.Problem == nil || prev.Problem.Reason != problem.Reason {
				a.log.Warn("commit refused by policy; keeping the applied commit",
					"commit", rev.Commit, "applied", st.Applied.Commit, "reason", problem.Reason, "err", err)
			}
		}
	default:
		cand = rev
	}

	// 2. Render the candidate, unless it is the applied commit or a commit
	// already found invalid (not retried until a new commit).
	var work *source.Revision
	var dev *spec.Device
	if cand != nil {
		switch {
		case cand.Commit == st.Applied.Commit:
			work = cand
			attempted = Attempt{Commit: cand.Commit, Time: start}
		case cand.Commit == st.Attempted.Commit && renderStalled(st.Attempted.Problem):
			problem, specErrs = st.Attempted.Problem, st.Attempted.Errors
		default:
			d, err := a.o.Render(cand.FS, a.cfg.DeviceID)
			if err != nil {
				a.metrics.errors.WithLabelValues("render").Inc()
				problem, specErrs = renderProblem(cand.Commit, err)
				attempted = Attempt{Commit: cand.Commit, Time: start, Problem: problem, Errors: specErrs}
				a.log.Warn("commit does not render; keeping the applied commit",
					"commit", cand.Commit, "applied", st.Applied.Commit, "errors", len(specErrs), "first", first(specErrs, problem.Message))
			} else {
				work, dev = cand, d
				attempted = Attempt{Commit: cand.Commit, Time: start}
			}
		}
	}
	// 2b. While the fleet declares a rollout, a commit that changes the
	// spec waits for the hub's grant; a held commit leaves the device on the
	// applied one (converged again below when it may have drifted).
	a.held, a.holdRetry = false, 0
	if work != nil && dev != nil && work == cand && dev.Hash() != st.Applied.SpecHash {
		switch {
		case dev.Rollout == nil || a.o.Granter == nil:
			st.Rollout, st.GrantedSpec = nil, ""
		default:
			ok, rs, retry := a.grantFor(ctx, rep.Trigger, dev, work, &st)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			st.Rollout, st.GrantedSpec = rs, ""
			if rs.State == api.RolloutGranted {
				st.GrantedSpec = dev.Hash()
			}
			if !ok {
				a.held, a.holdRetry = true, retry
				a.log.Info("holding commit for the rollout", "commit", work.Commit, "reason", rs.Reason, "wave", rs.Wave, "msg", rs.Message)
				work, dev = nil, nil
			}
		}
	}
	if a.held {
		a.metrics.holding.Set(1)
	} else {
		a.metrics.holding.Set(0)
	}

	// Without a usable new commit, the applied one is converged again when
	// the stages may have drifted from it (start, a failed pass, drift).
	if work == nil && st.Applied.Commit != "" && (force || !st.Converged) {
		if r, err := a.o.Source.Open(st.Applied.Commit); err == nil {
			work = r
		} else {
			a.log.Warn("applied commit unreadable", "commit", st.Applied.Commit, "err", err)
		}
	}
	if work != nil && dev == nil && work.Commit == st.Applied.Commit && a.applied != nil {
		dev = a.applied
	}
	if work != nil && dev == nil {
		if dev, err = a.o.Render(work.FS, a.cfg.DeviceID); err != nil {
			a.log.Warn("applied commit no longer renders", "commit", work.Commit, "err", err)
			work = nil
		}
	}

	// 3. The stages, only when something is new.
	if work != nil && dev != nil {
		hash := dev.Hash()
		if hash == st.Applied.SpecHash && st.Converged && !force {
			// A new commit that changes nothing for this device.
			st.Applied.Commit, st.Applied.CommitTime = work.Commit, work.Time
			for _, s := range a.o.Stages {
				rep.Stages[s.Name()] = StageReport{Ran: false, Converged: true, Summary: "spec unchanged"}
			}
		} else {
			ok, sp := a.converge(ctx, dev, work, rep)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if ok {
				if st.Applied.Commit != work.Commit {
					a.log.Info("applied commit", "commit", work.Commit, "spec_hash", hash, "previous", st.Applied.Commit)
				}
				// Applied.Time is when this commit's spec was applied: a
				// pass that converges it again (drift, a restart, a refused
				// newer commit) does not move it.
				if st.Applied.Commit != work.Commit || st.Applied.SpecHash != hash || st.Applied.Time.IsZero() {
					st.Applied = Applied{Commit: work.Commit, SpecHash: hash, CommitTime: work.Time, Time: a.now()}
				}
				st.Converged = true
				a.applied = dev
			} else {
				st.Converged = false
				if problem == nil {
					problem = sp
				}
				if attempted.Commit == work.Commit {
					attempted.Problem = sp
				}
			}
		}
	} else {
		for _, s := range a.o.Stages {
			rep.Stages[s.Name()] = StageReport{Ran: false, Converged: st.Converged}
		}
	}
	if attempted.Commit == st.Applied.Commit && problem == nil {
		attempted.Problem, attempted.Errors = nil, nil
	}
	st.Attempted = attempted

	// 4. Status: queued in the outbox, then state.json.
	rep.Resources = ReadResources(a.cfg.StateDir, a.cfg.DockerRoot)
	rep.Status = a.status(&st, problem, specErrs)
	rep.Status.Stages = stageStatuses(a.o.Stages, rep.Stages)
	rep.Status.Resources = rep.Resources.api()
	rep.Duration = a.now().Sub(start)
	keep := a.lastStatus == nil || transition(a.lastStatus, &rep.Status)
	seq, err := a.outbox.Enqueue(rep.Status, keep)
	if err != nil {
		a.metrics.errors.WithLabelValues("outbox").Inc()
		return rep, err
	}
	rep.Status.Seq = seq
	a.lastStatus = &rep.Status
	st.Passes++
	st.LastPass = rep
	if err := a.stateF.write(&st); err != nil {
		a.metrics.errors.WithLabelValues("state").Inc()
		return rep, err
	}
	a.mu.Lock()
	a.state = &st
	a.mu.Unlock()

	a.metrics.passSeconds.Observe(rep.Duration.Seconds())
	a.metrics.passes.WithLabelValues(string(rep.Status.State)).Inc()
	if rep.Converged() {
		a.metrics.lastSuccess.Set(float64(a.now().Unix()))
	}
	a.metrics.setCommit(st.Applied.Commit, st.Applied.SpecHash)
	return rep, nil
}

// converge runs every stage in order; a failed stage does not stop the others.
func (a *Agent) converge(ctx context.Context, dev *spec.Device, work *source.Revision, rep *Report) (bool, *api.Problem) {
	ok := true
	var problem *api.Problem
	for _, s := range a.o.Stages {
		a.setBusy(a.now())
		res, err := s.Converge(ctx, Target{Device: dev, FS: work.FS, Commit: work.Commit, CommitTime: work.Time})
		sr := StageReport{Ran: true, Converged: err == nil && res.Converged, Summary: res.Summary}
		a.results[s.Name()] = res
		if err != nil {
			sr.Error = err.Error()
			a.metrics.errors.WithLabelValues(s.Name()).Inc()
			if problem == nil {
				problem = stageProblem(s.Name(), err)
			}
			a.log.Warn("stage failed", "stage", s.Name(), "commit", work.Commit, "err", err)
		} else if !res.Converged && problem == nil {
			problem = &api.Problem{Kind: "waiting", Reason: stageReason(s.Name(), false), Message: s.Name() + ": " + res.Summary}
		}
		ok = ok && sr.Converged
		rep.Stages[s.Name()] = sr
	}
	return ok, problem
}

func (a *Agent) status(st *State, problem *api.Problem, specErrs []string) api.Status {
	s := api.Status{
		APIVersion: api.Version,
		DeviceID:   a.cfg.DeviceID,
		Time:       a.now().UTC(),
		Agent:      version.String(),
		Commit:     api.CommitStatus{Attempted: st.Attempted.Commit, Applied: st.Applied.Commit, SpecHash: st.Applied.SpecHash},
		Rollout:    st.Rollout,
	}
	if a.applied != nil {
		s.Groups = a.applied.Groups
		s.Labels = a.applied.Labels
	}
	names := make([]string, 0, len(a.results))
	for n := range a.results {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r := a.results[n]
		s.Apps = append(s.Apps, r.Apps...)
		if r.Update != nil {
			s.Update = r.Update
		}
		if r.Clock != nil {
			s.Clock = r.Clock
		}
		if r.Attest != nil {
			s.Attest = r.Attest
		}
	}
	if problem != nil {
		p := *problem
		if len(specErrs) > 0 {
			p.Message = strings.Join(specErrs, "\n")
		}
		s.Problem = &p
	}
	switch {
	case problem != nil && problem.Kind == "stalled":
		s.State = api.StateStalled
	case problem != nil:
		s.State = api.StateWaiting
	case st.Converged:
		s.State = api.StateConverged
	default:
		s.State = api.StateUpdating
	}
	if s.Update != nil {
		switch s.Update.State {
		case "downloading", "installed", "rebooting", "trial":
			if s.State == api.StateConverged {
				s.State = api.StateUpdating
			}
		}
	}
	// Degraded: what the applied commit asks for is in place, but an app
	// is unhealthy or was changed by hand and left so (drift policy alert).
	// Nothing retries that on its own, unlike waiting; no commit was refused,
	// unlike stalled.
	if len(degradedApps(s.Apps)) > 0 && (s.State == api.StateConverged || s.State == api.StateWaiting && problem.Reason == "containers-not-converged") {
		s.State = api.StateDegraded
	}
	return s
}

// degradedApps names the apps that make a device degraded: unhealthy, or
// drifted from the spec.
func degradedApps(apps []api.AppStatus) []string {
	var out []string
	for _, a := range apps {
		switch {
		case a.Health == "unhealthy":
			out = append(out, fmt.Sprintf("app %q unhealthy", a.Name))
		case a.Drift != "":
			out = append(out, fmt.Sprintf("app %q drifted: %s", a.Name, a.Drift))
		}
	}
	return out
}

// transition reports whether next says something prev did not (beyond time
// and resources): such a report is kept when the outbox is full.
func transition(prev, next *api.Status) bool {
	reason := func(p *api.Problem) string {
		if p == nil {
			return ""
		}
		return p.Kind + "/" + p.Reason + "/" + p.Message
	}
	standing := func(r *api.RolloutStatus) string {
		if r == nil {
			return ""
		}
		return r.Commit + "/" + r.State + "/" + r.Reason + "/" + r.Wave
	}
	return prev.State != next.State || prev.Commit != next.Commit || reason(prev.Problem) != reason(next.Problem) ||
		standing(prev.Rollout) != standing(next.Rollout)
}

func sourceProblem(err error) *api.Problem {
	kind := "waiting"
	if source.Stalled(err) {
		kind = "stalled"
	}
	return &api.Problem{Kind: kind, Reason: source.Reason(err), Message: err.Error()}
}

func renderProblem(commit string, err error) (*api.Problem, []string) {
	var lines []string
	var es spec.Errors
	var e *spec.Error
	switch {
	case errors.As(err, &es):
		for _, x := range es {
			lines = append(lines, x.Error())
		}
	case errors.As(err, &e):
		lines = []string{e.Error()}
	default:
		lines = []string{err.Error()}
	}
	reason := ReasonSpecInvalid
	if errors.Is(err, spec.ErrUnknownDevice) {
		reason = ReasonDeviceUnknown
	}
	kind := "stalled"
	if !errors.Is(err, spec.ErrInvalid) && !errors.Is(err, spec.ErrUnknownDevice) {
		kind = "waiting" // e.g. a read error: may pass on retry
		reason = ReasonRenderFailed
	}
	return &api.Problem{Kind: kind, Reason: reason,
		Message: fmt.Sprintf("commit %s: %s", short(commit), strings.Join(lines, "; "))}, lines
}

// renderStalled reports whether p says the commit itself does not render:
// the same commit will never render, so it is not tried again.
func renderStalled(p *api.Problem) bool {
	return p != nil && p.Kind == "stalled" && (p.Reason == ReasonSpecInvalid || p.Reason == ReasonDeviceUnknown)
}

// Machine reasons of the problems the agent reports itself (api.Problem.Reason
// and api.AttestStatus.Reasons); a stage's error may carry its own reason
// instead (reconcile's, source's). Each is explained in
// docs/guide/troubleshooting.md.
const (
	ReasonSpecInvalid            = "spec-invalid"   // the commit does not validate or render for this device
	ReasonDeviceUnknown          = "device-unknown" // the fleet repo has no devices/<id> file for this device
	ReasonRenderFailed           = "render-failed"  // rendering failed for another cause (a read error): retried
	ReasonContainersFailed       = "containers-failed"
	ReasonContainersNotConverged = "containers-not-converged"
	ReasonUpdateFailed           = "update-failed"
	ReasonUpdateNotConverged     = "update-not-converged"
	ReasonTrustFailed            = "trust-failed"
	ReasonTrustNotConverged      = "trust-not-converged"
	ReasonStageFailed            = "stage-failed"        // a stage not of this package failed
	ReasonStageNotConverged      = "stage-not-converged" // a stage not of this package did not converge
	ReasonExtendAppPCR           = "extend-app-pcr"      // the TPM refused to extend the application PCR
	ReasonHubUnreachable         = "hub-unreachable"     // no quote was sent: the hub did not answer
)

// stageReason is the reason of a stage's error that has none of its own
// (failed) or of a stage that did not converge.
func stageReason(stage string, failed bool) string {
	reasons := map[string][2]string{
		"containers": {ReasonContainersFailed, ReasonContainersNotConverged},
		"update":     {ReasonUpdateFailed, ReasonUpdateNotConverged},
		"trust":      {ReasonTrustFailed, ReasonTrustNotConverged},
	}
	r, ok := reasons[stage]
	if !ok {
		r = [2]string{ReasonStageFailed, ReasonStageNotConverged}
	}
	if failed {
		return r[0]
	}
	return r[1]
}

func stageProblem(name string, err error) *api.Problem {
	kind := "waiting"
	var st interface{ Stalled() bool }
	if errors.As(err, &st) && st.Stalled() {
		kind = "stalled"
	}
	reason := stageReason(name, true)
	var r interface{ Reason() string }
	if errors.As(err, &r) {
		reason = r.Reason()
	}
	return &api.Problem{Kind: kind, Reason: reason, Message: fmt.Sprintf("%s: %v", name, err)}
}

func first(xs []string, def string) string {
	if len(xs) > 0 {
		return xs[0]
	}
	return def
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func (a *Agent) setBusy(t time.Time) {
	a.mu.Lock()
	a.busySince = t
	a.mu.Unlock()
}

// nextBundle returns a *.bundle file in the bundle dir not imported yet by this process.
func (a *Agent) nextBundle() string {
	if a.cfg.BundleDir == "" {
		return ""
	}
	ms, _ := filepath.Glob(filepath.Join(a.cfg.BundleDir, "*.bundle"))
	sort.Strings(ms)
	for _, m := range ms {
		fi, err := os.Stat(m)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		key := fmt.Sprintf("%s|%d|%d", m, fi.Size(), fi.ModTime().UnixNano())
		if !a.bundles[key] {
			a.bundles[key] = true
			return m
		}
	}
	return ""
}

// hasNewBundle reports whether nextBundle would return a file, without taking it.
func (a *Agent) hasNewBundle() bool {
	if a.cfg.BundleDir == "" {
		return false
	}
	ms, _ := filepath.Glob(filepath.Join(a.cfg.BundleDir, "*.bundle"))
	for _, m := range ms {
		fi, err := os.Stat(m)
		if err == nil && fi.Mode().IsRegular() && !a.bundles[fmt.Sprintf("%s|%d|%d", m, fi.Size(), fi.ModTime().UnixNano())] {
			return true
		}
	}
	return false
}

// Run loops until ctx is done: a pass, then wait for the poll interval (with
// jitter), a retry backoff after a waiting problem, a trigger, a poke or a
// new bundle. It delivers the outbox and serves pokes alongside, and returns
// once every goroutine it started has stopped.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if a.o.Reporter != nil {
		wg.Go(func() { a.deliver(ctx) })
	}
	if a.o.Poker != nil {
		wg.Go(func() { a.pokes(ctx) })
	}
	if wd := sdnotify.WatchdogInterval(); wd > 0 {
		wg.Go(func() { a.watchdog(ctx, wd) })
	}
	bo := backoff.New(a.cfg.RetryMin.D(), a.cfg.RetryMax.D(), 0.2)
	trigger := "start"
	ready := false
	for {
		rep, err := a.Pass(ctx, trigger)
		if ctx.Err() != nil {
			_ = a.o.Notify("STOPPING=1")
			return nil
		}
		var wait time.Duration
		switch {
		case err != nil:
			a.log.Error("pass failed", "err", err)
			wait = bo.Next()
		case rep.Status.Problem != nil && rep.Status.Problem.Kind == "waiting":
			wait = bo.Next()
			a.log.Info("pass waiting; retrying", "reason", rep.Status.Problem.Reason, "in", wait.Round(time.Millisecond), "failures", bo.Failures())
		case a.held && a.holdRetry == 0:
			// Held because the hub is out of reach: back off as for any wait.
			wait = bo.Next()
		case a.held:
			// Held for the rollout: the hub pokes when the wave opens; ask
			// again by then anyway, in case the poke is lost.
			bo.Reset()
			wait = min(backoff.Jitter(a.cfg.PollInterval.D(), a.cfg.PollJitter, nil), backoff.Jitter(a.holdRetry, 0.2, nil))
		default:
			bo.Reset()
			wait = backoff.Jitter(a.cfg.PollInterval.D(), a.cfg.PollJitter, nil)
		}
		if err == nil {
			a.log.Debug("pass done", "trigger", rep.Trigger, "state", rep.Status.State, "took", rep.Duration)
		}
		if !ready {
			ready = true
			_ = a.o.Notify("READY=1")
		}
		trigger = a.wait(ctx, wait)
		if trigger == "" {
			_ = a.o.Notify("STOPPING=1")
			return nil
		}
	}
}

// idleRelease is the shortest wait before which the agent gives memory
// back; while it waits, it does so again every releaseEvery.
const (
	idleRelease  = 10 * time.Second
	releaseEvery = time.Minute
)

// release gives back, before a long wait, what the pass left resident: the
// heap CUE's load and render grew (tens of MB), and the binary's code pages
// the pass brought in (most of the binary: Git, CUE, Docker, TPM and TLS
// code). A device is idle for minutes between passes; the next pass faults
// back in only the code it runs.
func (a *Agent) release() {
	start := time.Now()
	st, err := memtrim.Release()
	if err != nil {
		a.log.Debug("release memory", "err", err)
		return
	}
	a.log.Debug("released memory", "code_mappings", st.Mappings, "code_bytes", st.Bytes, "took", time.Since(start))
}

// wait returns what ended the wait, or "" when ctx is done.
func (a *Agent) wait(ctx context.Context, d time.Duration) string {
	t := time.NewTimer(d)
	defer t.Stop()
	var bundleTick, releaseTick <-chan time.Time
	if a.cfg.BundleDir != "" {
		tk := time.NewTicker(2 * time.Second)
		defer tk.Stop()
		bundleTick = tk.C
	}
	if d >= idleRelease {
		// Idle for a while: give back what the pass left, and again now
		// and then for what scrapes, deliveries and long polls touch.
		a.release()
		tk := time.NewTicker(releaseEvery)
		defer tk.Stop()
		releaseTick = tk.C
	}
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-releaseTick:
			a.release()
		case <-t.C:
			return "poll"
		case r := <-a.triggers:
			return r
		case <-bundleTick:
			if a.hasNewBundle() {
				return "bundle"
			}
		}
	}
}

func (a *Agent) deliver(ctx context.Context) {
	bo := backoff.New(a.cfg.RetryMin.D(), a.cfg.RetryMax.D(), 0.2)
	for {
		_, err := a.outbox.Flush(ctx, a.o.Reporter)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.metrics.errors.WithLabelValues("deliver").Inc()
			d := bo.Next()
			a.log.Info("status delivery failed; retrying", "err", err, "in", d.Round(time.Millisecond), "queued", a.outbox.Depth())
			if backoff.Wait(ctx, d) != nil {
				return
			}
			continue
		}
		bo.Reset()
		select {
		case <-ctx.Done():
			return
		case <-a.outbox.Wake():
		}
	}
}

func (a *Agent) pokes(ctx context.Context) {
	bo := backoff.New(a.cfg.RetryMin.D(), a.cfg.RetryMax.D(), 0.2)
	var after int64
	for {
		began := time.Now()
		p, err := a.o.Poker.WaitPoke(ctx, after)
		if ctx.Err() != nil {
			return
		}
		if err == nil && p == nil && time.Since(began) < time.Second {
			// A long-poll that returns at once with nothing would spin.
			if backoff.Wait(ctx, a.cfg.RetryMin.D()) != nil {
				return
			}
			continue
		}
		if err == nil && p != nil {
			err = p.Validate()
		}
		if err != nil {
			a.log.Debug("poke poll failed", "err", err)
			if backoff.Wait(ctx, bo.Next()) != nil {
				return
			}
			continue
		}
		bo.Reset()
		if p != nil && p.ID > after {
			after = p.ID
			a.log.Info("poked by the hub", "id", p.ID, "reason", p.Reason, "commit", p.Commit)
			a.Trigger("poke")
		}
	}
}

// passLimit is how long one pass may run before the watchdog stops vouching for the agent.
const passLimit = time.Hour

func (a *Agent) watchdog(ctx context.Context, interval time.Duration) {
	tk := time.NewTicker(interval / 2)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			if a.alive() {
				_ = a.o.Notify("WATCHDOG=1")
			} else {
				a.log.Error("a pass has run too long; letting the watchdog restart the agent", "limit", passLimit)
			}
		}
	}
}

// alive reports whether the loop is idle or in a pass that has not run past passLimit.
func (a *Agent) alive() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.busySince.IsZero() || a.now().Sub(a.busySince) < passLimit
}

// ConvergedCheck is a health-gate check: nil when the last pass converged on
// the applied commit, else an error naming what did not. The updater's gate
// composes it with attest's checks before committing a trial boot.
func (a *Agent) ConvergedCheck(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st := a.State()
	switch {
	case st.LastPass == nil:
		return errors.New("agent: no pass has run since start")
	case !st.LastPass.Converged():
		if d := degradedApps(st.LastPass.Status.Apps); len(d) > 0 && st.LastPass.Status.State == api.StateDegraded {
			return fmt.Errorf("agent: %s: %s", st.LastPass.Status.State, strings.Join(d, "; "))
		}
		if p := st.LastPass.Status.Problem; p != nil {
			return fmt.Errorf("agent: %s: %s: %s", st.LastPass.Status.State, p.Reason, first(strings.Split(p.Message, "\n"), ""))
		}
		return fmt.Errorf("agent: %s", st.LastPass.Status.State)
	}
	return nil
}
