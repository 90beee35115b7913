package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/rollout"
	"github.com/shoalfleet/shoal/spec"
)

// The rollout controller. Every hub follows the fleet repo (--fleet) and
// serves grants; one hub at a time, the holder of the lease in the store,
// decides: it starts a rollout for each new commit that declares one,
// judges each member device's latest report against the gates, steps the
// waves (rollout.State.Advance), writes what changed in one fenced
// transaction, and pokes the devices it admitted. Everything it decides
// on is in the store (rollouts, waves, members, reports), so a hub that
// takes over, or restarts after a kill -9, resumes where the last left.

const (
	leaseName = "rollout-controller"
	// viewTTL bounds how stale the rollout a hub serves grants and pages
	// from may be.
	viewTTL = time.Second
	// urgentTrailer in a commit message makes its rollout skip waves.
	urgentTrailer = "Shoal-Rollout: urgent"
)

// rollouts is one hub's part in staged rollouts.
type rollouts struct {
	h      *Hub
	fleet  *FleetPolicy
	holder string
	tick   time.Duration
	lease  time.Duration
	log    *slog.Logger
	wake   chan struct{}

	// The leader's state, touched only by run.
	leader   bool
	renewAt  time.Time
	st       *rollout.State
	obs      map[string]rollout.Observation
	verdicts map[string]store.DeviceLatest // the hub's attestation verdicts
	judged   map[string]judgedAt           // what the device was last judged on, for st

	renderMu  sync.Mutex
	renderRev string
	renders   map[string]*spec.Device
	renderErr map[string]error

	viewMu sync.Mutex
	view   *cachedView

	notTargetMu sync.Mutex
	notTarget   map[string]time.Time // device → last not-target event recorded
}

type cachedView struct {
	rec     store.RolloutRecord
	state   *rollout.State
	granted map[string]bool
	at      time.Time
}

func newRollouts(h *Hub, fleet *FleetPolicy, tick, lease time.Duration) *rollouts {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	// Run replaces the holder with the listening address, which is stable across restarts.
	if tick <= 0 {
		tick = 500 * time.Millisecond
	}
	if lease <= 0 {
		lease = 15 * time.Second
	}
	return &rollouts{h: h, fleet: fleet, holder: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b)),
		tick: tick, lease: lease, log: h.log.With("part", "rollout"), wake: make(chan struct{}, 1),
		obs: map[string]rollout.Observation{}, verdicts: map[string]store.DeviceLatest{}, judged: map[string]judgedAt{}, notTarget: map[string]time.Time{}}
}

// poke asks for a controller step soon.
func (r *rollouts) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run steps the controller every tick until ctx ends, then gives up the lease.
func (r *rollouts) run(ctx context.Context) {
	t := time.NewTicker(r.tick)
	defer t.Stop()
	var lastErr string
	for {
		start := time.Now()
		err := r.step(ctx)
		r.h.m.rolloutStep.Observe(time.Since(start).Seconds())
		if err != nil && ctx.Err() == nil {
			if errors.Is(err, store.ErrLeaseLost) {
				r.log.Warn("lost the rollout lease to another hub; serving only")
				r.leader, r.st = false, nil
			} else if err.Error() != lastErr {
				r.log.Warn("rollout step failed", "err", err)
			}
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			if r.leader {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				_ = r.h.st.ReleaseLease(rctx, leaseName, r.holder)
				cancel()
			}
			return
		case <-t.C:
		case <-r.wake:
		}
	}
}

func (r *rollouts) fence(now time.Time) store.Fence {
	return store.Fence{Name: leaseName, Holder: r.holder, Now: now, TTL: r.lease}
}

// step is one turn of the controller.
func (r *rollouts) step(ctx context.Context) error {
	now := r.h.o.Now()
	if !r.leader || !now.Before(r.renewAt) {
		ok, err := r.h.st.AcquireLease(ctx, leaseName, r.holder, now, r.lease)
		if err != nil {
			return err
		}
		if !ok {
			if r.leader {
				r.log.Info("another hub decides rollouts now")
			}
			r.leader, r.st = false, nil
			r.h.m.rolloutLeader.Set(0)
			return nil
		}
		if !r.leader {
			r.log.Info("this hub decides rollouts", "holder", r.holder)
			r.obs, r.verdicts, r.judged, r.st = map[string]rollout.Observation{}, map[string]store.DeviceLatest{}, map[string]judgedAt{}, nil
		}
		r.leader, r.renewAt = true, now.Add(r.lease/3)
		r.h.m.rolloutLeader.Set(1)
	}
	f, rev, msg := r.fleet.Current()
	if f == nil || rev == "" {
		return nil
	}
	if r.st == nil {
		if err := r.resume(ctx); err != nil {
			return err
		}
	}
	fresh, err := r.observe(ctx)
	if err != nil {
		return err
	}
	if r.st == nil || r.st.Commit != rev {
		if !f.HasRollout() {
			return r.retire(ctx, now, rev)
		}
		return r.start(ctx, now, f, rev, msg)
	}
	c := &rollout.Changes{}
	if err := r.control(ctx, now, c); err != nil {
		return err
	}
	if err := r.place(ctx, now, f, rev, fresh, c); err != nil {
		return err
	}
	if err := r.judge(ctx, now, fresh, c); err != nil {
		return err
	}
	adv := r.st.Advance(now)
	c.Status = c.Status || adv.Status
	c.Waves = append(c.Waves, adv.Waves...)
	for _, m := range adv.Members {
		addMember(c, m)
	}
	c.Admitted = append(c.Admitted, adv.Admitted...)
	c.Events = append(c.Events, adv.Events...)
	return r.save(ctx, now, c)
}

func addMember(c *rollout.Changes, m *rollout.Member) {
	for _, x := range c.Members {
		if x == m {
			return
		}
	}
	c.Members = append(c.Members, m)
}

// save writes a step's changes (fenced) and pokes the devices admitted.
func (r *rollouts) save(ctx context.Context, now time.Time, c *rollout.Changes) error {
	if !c.Status && len(c.Waves) == 0 && len(c.Members) == 0 && len(c.Events) == 0 {
		return nil
	}
	st := store.RolloutStep{RolloutID: r.st.ID, Status: r.st.Status, Reason: r.st.Reason}
	for _, w := range c.Waves {
		st.Waves = append(st.Waves, storeWave(r.st.ID, w))
	}
	for _, m := range c.Members {
		st.Members = append(st.Members, storeMember(r.st.ID, m))
	}
	for _, e := range c.Events {
		st.Events = append(st.Events, store.RolloutEvent{RolloutID: r.st.ID, Time: e.Time, DeviceID: e.Device, Kind: e.Kind, Message: e.Message})
		if e.Device == "" {
			r.log.Info("rollout", "commit", short(r.st.Commit), "event", e.Kind, "msg", e.Message)
		}
	}
	if err := r.h.st.SaveRolloutStep(ctx, r.fence(now), st); err != nil {
		return err
	}
	r.invalidate()
	return r.pokeAdmitted(ctx, now, c.Admitted)
}

func (r *rollouts) pokeAdmitted(ctx context.Context, now time.Time, ms []*rollout.Member) error {
	if len(ms) == 0 {
		return nil
	}
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.Device
	}
	sort.Strings(ids)
	for len(ids) > 0 {
		n := min(len(ids), 10000)
		if _, err := r.h.Poke(ctx, store.Poke{Devices: ids[:n], Commit: r.st.Commit, Reason: "rollout", Time: now}); err != nil {
			return fmt.Errorf("poke admitted devices: %w", err)
		}
		ids = ids[n:]
	}
	r.h.m.rolloutAdmitted.Add(float64(len(ms)))
	return nil
}

func storeWave(id int64, w *rollout.Wave) store.RolloutWave {
	return store.RolloutWave{RolloutID: id, Track: w.Track, Index: w.Index, Name: w.Name, State: w.State, Opened: w.Opened,
		BakeStart: w.BakeStart, Ended: w.Ended, Note: w.Note, Approved: w.Approved}
}

func storeMember(id int64, m *rollout.Member) store.RolloutMember {
	return store.RolloutMember{RolloutID: id, DeviceID: m.Device, Track: m.Track, Wave: m.Wave, Labels: m.Labels, FromSpec: m.FromSpec,
		ToSpec: m.ToSpec, Release: m.Release, Why: m.Why, Admitted: m.Admitted, Verdict: string(m.Verdict), Gates: m.Gates, Flag: m.Flag,
		Granted: m.Granted, GrantID: m.GrantID}
}

// loadState builds a rollout's State from the store.
func loadState(ctx context.Context, st store.Store, rec store.RolloutRecord) (*rollout.State, error) {
	var policies map[string]*spec.Rollout
	if err := json.Unmarshal(rec.Policies, &policies); err != nil {
		return nil, fmt.Errorf("rollout %d: policies: %w", rec.ID, err)
	}
	// Members before waves: the controller writes both in one transaction,
	// so waves read after the members are at least as new, and a view
	// never shows devices admitted by a wave it shows still closed.
	ms, err := st.RolloutMembers(ctx, rec.ID)
	if err != nil {
		return nil, err
	}
	ws, err := st.RolloutWaves(ctx, rec.ID)
	if err != nil {
		return nil, err
	}
	s := &rollout.State{ID: rec.ID, Commit: rec.Commit, Status: rec.Status, Urgent: rec.Urgent, Reason: rec.Reason,
		Policies: policies, Waves: map[string][]*rollout.Wave{}, Members: make(map[string]*rollout.Member, len(ms))}
	for _, w := range ws {
		s.Waves[w.Track] = append(s.Waves[w.Track], &rollout.Wave{Track: w.Track, Index: w.Index, Name: w.Name, State: w.State,
			Opened: w.Opened, BakeStart: w.BakeStart, Ended: w.Ended, Approved: w.Approved, Note: w.Note})
	}
	for _, m := range ms {
		s.Members[m.DeviceID] = &rollout.Member{Device: m.DeviceID, Labels: m.Labels, Track: m.Track, Wave: m.Wave, FromSpec: m.FromSpec,
			ToSpec: m.ToSpec, Release: m.Release, Why: m.Why, Admitted: m.Admitted, Granted: m.Granted, GrantID: m.GrantID,
			Verdict: rollout.Verdict(m.Verdict), Gates: m.Gates, Flag: m.Flag}
	}
	return s, nil
}

// resume takes up the newest rollout from the store, as a hub that just
// became leader (or restarted) must: admitted devices not yet granted are
// poked again, in case the last leader died between admitting and poking.
func (r *rollouts) resume(ctx context.Context) error {
	rec, err := r.h.st.CurrentRollout(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.Status == rollout.Superseded {
		return nil
	}
	s, err := loadState(ctx, r.h.st, rec)
	if err != nil {
		return err
	}
	r.st = s
	var again []*rollout.Member
	for _, m := range s.Members {
		if !m.Admitted.IsZero() && m.Granted.IsZero() {
			again = append(again, m)
		}
	}
	r.log.Info("resuming rollout", "id", s.ID, "commit", short(s.Commit), "status", s.Status, "members", len(s.Members), "repoke", len(again))
	return r.pokeAdmitted(ctx, r.h.o.Now(), again)
}

// observe reads the latest report of every device whose latest seq moved
// since the last step, and the hub's attestation verdicts, and returns the
// devices with news.
func (r *rollouts) observe(ctx context.Context) ([]string, error) {
	var refs []store.ReportRef
	var news []string
	err := r.h.st.LatestSeqs(ctx, func(d store.DeviceLatest) {
		if d.Seq > 0 && d.Seq > r.obs[d.ID].Seq {
			refs = append(refs, store.ReportRef{DeviceID: d.ID, Seq: d.Seq})
		}
		if v, ok := r.verdicts[d.ID]; d.AttestOK != nil && (!ok || !v.AttestTime.Equal(d.AttestTime)) {
			r.verdicts[d.ID] = d
			news = append(news, d.ID)
		}
	})
	if err != nil {
		return nil, err
	}
	if len(refs) > 0 {
		bodies, err := r.h.st.ReportBodies(ctx, refs)
		if err != nil {
			return nil, err
		}
		for ref, b := range bodies {
			var s api.Status
			if err := json.Unmarshal(b, &s); err != nil {
				continue // stored after validation: cannot happen
			}
			o := rollout.Observe(&s)
			o.Seq = ref.Seq
			r.obs[ref.DeviceID] = o
			news = append(news, ref.DeviceID)
		}
		r.h.m.rolloutReports.Add(float64(len(bodies)))
	}
	sort.Strings(news)
	return slices.Compact(news), nil
}

// renderAt returns device id rendered at the fleet revision rev, cached per revision.
func (r *rollouts) renderAt(f *spec.Fleet, rev, id string) (*spec.Device, error) {
	r.renderMu.Lock()
	defer r.renderMu.Unlock()
	if r.renderRev != rev {
		r.renderRev, r.renders, r.renderErr = rev, map[string]*spec.Device{}, map[string]error{}
	}
	if d, ok := r.renders[id]; ok {
		return d, r.renderErr[id]
	}
	d, err := f.Render(id)
	r.renders[id], r.renderErr[id] = d, err
	return d, err
}

// renderAll renders every device of the fleet at rev into the cache.
func (r *rollouts) renderAll(f *spec.Fleet, rev string) {
	res := f.RenderAll(2)
	r.renderMu.Lock()
	defer r.renderMu.Unlock()
	r.renderRev, r.renders, r.renderErr = rev, make(map[string]*spec.Device, len(res)), map[string]error{}
	for _, x := range res {
		r.renders[x.ID] = x.Device
		if x.Err != nil {
			r.renderErr[x.ID] = x.Err
		}
	}
}

// member makes the rollout member for device id at rev, or nil when the
// commit does not change it or the fleet does not gate it.
func (r *rollouts) member(f *spec.Fleet, rev, id string, fromSpec, running string) *rollout.Member {
	d, err := r.renderAt(f, rev, id)
	if err != nil || d == nil || d.Rollout == nil {
		return nil
	}
	to := d.Hash()
	if to == fromSpec {
		return nil
	}
	m := &rollout.Member{Device: id, Labels: d.Labels, Track: d.Rollout.Track, Wave: -1, FromSpec: fromSpec, ToSpec: to}
	if d.Release != nil && d.Release.Version != running {
		m.Release = d.Release.Version
	}
	return m
}

// start begins the rollout of rev: every enrolled device the commit
// changes becomes a member, placed in its track's waves. A member whose
// spec at rev is one it ran before a commit it was granted goes at once
// (a revert); so does every member when the commit message carries the
// urgent trailer. The rollout it replaces is superseded, and says so.
func (r *rollouts) start(ctx context.Context, now time.Time, f *spec.Fleet, rev, msg string) error {
	r.renderAll(f, rev)
	prior, err := r.h.st.GrantedFromSpecs(ctx, 1<<62)
	if err != nil {
		return err
	}
	var ids []string
	if err := r.h.st.LatestSeqs(ctx, func(d store.DeviceLatest) { ids = append(ids, d.ID) }); err != nil {
		return err
	}
	policies := map[string]*spec.Rollout{}
	var members []*rollout.Member
	reverts := 0
	for _, id := range ids {
		o := r.obs[id]
		m := r.member(f, rev, id, o.SpecHash, o.UpdateVersion)
		if m == nil {
			continue
		}
		for _, s := range prior[id] {
			if s == m.ToSpec {
				m.Why = rollout.WhyRevert
				reverts++
			}
		}
		d, _ := r.renderAt(f, rev, id)
		policies[m.Track] = d.Rollout
		members = append(members, m)
	}
	urgent := strings.Contains(msg, urgentTrailer)
	s := rollout.NewState(rev, policies, members)
	s.Urgent = urgent
	var waves []store.RolloutWave
	for _, ws := range s.Waves {
		for _, w := range ws {
			waves = append(waves, storeWave(0, w))
		}
	}
	sms := make([]store.RolloutMember, 0, len(members))
	for _, m := range members {
		sms = append(sms, storeMember(0, m))
	}
	pj, err := json.Marshal(policies)
	if err != nil {
		return err
	}
	why := "commit " + short(rev) + " replaces it: the rollout restarts for the new commit"
	prev := r.st
	id, err := r.h.st.CreateRollout(ctx, r.fence(now), store.RolloutRecord{Commit: rev, Status: rollout.Running, Urgent: urgent, Created: now, Policies: pj}, waves, sms, why)
	if err != nil {
		return err
	}
	s.ID = id
	r.st = s
	r.judged = map[string]judgedAt{}
	tracks := make([]string, 0, len(policies))
	for t := range policies {
		tracks = append(tracks, fmt.Sprintf("%s (%d waves)", t, len(s.Waves[t])))
	}
	sort.Strings(tracks)
	text := fmt.Sprintf("rollout of %s started: %d device(s) change, in %s", short(rev), len(members), strings.Join(tracks, ", "))
	if len(members) == 0 {
		text = fmt.Sprintf("rollout of %s started: it changes no device", short(rev))
	}
	if reverts > 0 {
		text += fmt.Sprintf("; %d device(s) go at once: the commit reverts them to a spec they ran before", reverts)
	}
	if urgent {
		text += "; urgent (" + urgentTrailer + "): every wave opens at once"
	}
	events := []store.RolloutEvent{{RolloutID: id, Time: now, Kind: rollout.EventStarted, Message: text}}
	if prev != nil && prev.Status != rollout.Superseded {
		events = append(events, store.RolloutEvent{RolloutID: prev.ID, Time: now, Kind: rollout.EventSuperseded, Message: why})
		text += fmt.Sprintf("; it supersedes the rollout of %s (%s)", short(prev.Commit), prev.Status)
		events[0].Message = text
	}
	if err := r.h.st.AddRolloutEvents(ctx, events); err != nil {
		return err
	}
	r.log.Info("rollout started", "id", id, "commit", short(rev), "members", len(members), "tracks", len(policies), "reverts", reverts, "urgent", urgent)
	r.invalidate()
	// Judge what the devices already said, then take the first step at once.
	c := &rollout.Changes{}
	all := make([]string, 0, len(r.obs))
	for id := range r.obs {
		all = append(all, id)
	}
	if err := r.judge(ctx, now, all, c); err != nil {
		return err
	}
	adv := s.Advance(now)
	for _, m := range adv.Members {
		addMember(c, m)
	}
	c.Status, c.Waves, c.Admitted, c.Events = adv.Status, adv.Waves, adv.Admitted, append(c.Events, adv.Events...)
	return r.save(ctx, now, c)
}

// retire supersedes the current rollout when the fleet's newest commit
// declares none.
func (r *rollouts) retire(ctx context.Context, now time.Time, rev string) error {
	if r.st == nil {
		return nil
	}
	if r.st.Status == rollout.Running || r.st.Status == rollout.Paused || r.st.Status == rollout.Done {
		r.st.Status, r.st.Reason = rollout.Superseded, "commit "+short(rev)+" declares no rollout"
		c := &rollout.Changes{Status: true, Events: []rollout.Event{{Time: now, Kind: rollout.EventSuperseded, Message: r.st.Reason}}}
		if err := r.save(ctx, now, c); err != nil {
			return err
		}
	}
	r.st = nil
	return nil
}

// control applies the operator's pause, resume, abort and approvals.
func (r *rollouts) control(ctx context.Context, now time.Time, c *rollout.Changes) error {
	rec, err := r.h.st.RolloutByID(ctx, r.st.ID)
	if err != nil {
		return err
	}
	s := r.st
	switch {
	case rec.Aborted && s.Status != rollout.Aborted && s.Status != rollout.Superseded:
		s.Status, s.Reason = rollout.Aborted, "aborted by an operator"
		c.Status = true
	case rec.Paused && s.Status == rollout.Running:
		s.Status = rollout.Paused
		c.Status = true
	case !rec.Paused && s.Status == rollout.Paused:
		s.Status = rollout.Running
		c.Status = true
	}
	ws, err := r.h.st.RolloutWaves(ctx, r.st.ID)
	if err != nil {
		return err
	}
	for _, w := range ws {
		if tw := s.Waves[w.Track]; w.Index < len(tw) {
			tw[w.Index].Approved = w.Approved
		}
	}
	return nil
}

// place puts devices that joined (asked for a grant, or reported, while not
// members) in their waves.
func (r *rollouts) place(ctx context.Context, now time.Time, f *spec.Fleet, rev string, fresh []string, c *rollout.Changes) error {
	joined, err := r.h.st.UnplacedMembers(ctx, r.st.ID)
	if err != nil {
		return err
	}
	add := func(m *rollout.Member) {
		r.st.Join(m)
		if r.st.Policies[m.Track] == nil {
			d, _ := r.renderAt(f, rev, m.Device)
			r.st.Policies[m.Track] = d.Rollout
			r.st.Waves[m.Track] = nil
			for i, w := range d.Rollout.Waves {
				r.st.Waves[m.Track] = append(r.st.Waves[m.Track], &rollout.Wave{Track: m.Track, Index: i, Name: w.Name, State: rollout.WaveWaiting})
			}
			c.Waves = append(c.Waves, r.st.Waves[m.Track]...)
			r.st.Join(m)
		}
		addMember(c, m)
	}
	for _, j := range joined {
		if r.st.Members[j.DeviceID] != nil && r.st.Members[j.DeviceID].Wave >= 0 {
			continue
		}
		m := r.member(f, rev, j.DeviceID, j.FromSpec, r.obs[j.DeviceID].UpdateVersion)
		if m == nil {
			// The commit does not change it after all: let it go at once.
			m = &rollout.Member{Device: j.DeviceID, Track: j.Track, Wave: -1, FromSpec: j.FromSpec, ToSpec: j.ToSpec}
			if r.st.Policies[m.Track] == nil {
				m.Track = r.anyTrack()
			}
		}
		add(m)
	}
	for _, id := range fresh {
		if r.st.Members[id] != nil {
			continue
		}
		o := r.obs[id]
		if o.Applied == rev {
			continue
		}
		if m := r.member(f, rev, id, o.SpecHash, o.UpdateVersion); m != nil {
			add(m)
		}
	}
	return nil
}

func (r *rollouts) anyTrack() string {
	for t := range r.st.Policies {
		return t
	}
	return ""
}

// judge evaluates the members with news against their track's gates, and
// flags a member that reports the commit applied without a grant.
func (r *rollouts) judge(ctx context.Context, now time.Time, fresh []string, c *rollout.Changes) error {
	s := r.st
	for _, id := range fresh {
		m := s.Members[id]
		o, ok := r.obs[id]
		verdict := r.verdicts[id]
		at := judgedAt{seq: o.Seq, attest: verdict.AttestTime}
		if m == nil || !ok || r.judged[id] == at {
			continue
		}
		r.judged[id] = at
		// The attestation gate takes the hub's own verdict on a quote made
		// since the device was granted the commit, not the device's word:
		// a device that cannot reach the hub has no verdict, not a failed one.
		o.AttestOK = nil
		if since := m.Granted; !since.IsZero() && verdict.AttestOK != nil && verdict.AttestTime.After(since) {
			o.AttestOK = verdict.AttestOK
		}
		p := s.Policies[m.Track]
		if p == nil {
			continue
		}
		if o.Applied == s.Commit && m.Granted.IsZero() {
			// Grants are written by whichever hub answered: read it back.
			sm, err := r.h.st.RolloutMember(ctx, s.ID, m.Device)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			m.Granted, m.GrantID = sm.Granted, sm.GrantID
		}
		// A member the hub knew to run another spec when the rollout began
		// must have been granted the commit before it runs it.
		if o.Applied == s.Commit && o.SpecHash != m.FromSpec && m.FromSpec != "" && m.Granted.IsZero() && m.Flag == "" && m.Why != rollout.WhyRevert {
			r.checkUngranted(now, m, p, o, c)
		}
		if m.Flag != "" {
			continue
		}
		v, gates := rollout.Evaluate(p.Gates, rollout.Target{Commit: s.Commit, Release: m.Release}, o)
		s.Observe(m, v, gates, c, now)
	}
	return nil
}

// judgedAt is what a member was last judged on: its report and the hub's
// attestation verdict.
type judgedAt struct {
	seq    uint64
	attest time.Time
}

// checkUngranted refuses the report of a member that runs the commit with
// no grant on record, unless its offline policy (apply) or a USB bundle
// explains it: the member is flagged, counted failed, and the lie recorded.
func (r *rollouts) checkUngranted(now time.Time, m *rollout.Member, p *spec.Rollout, o rollout.Observation, c *rollout.Changes) {
	if ro := o.Rollout; ro != nil && ro.Commit == r.st.Commit {
		if ro.State == api.RolloutBundle || (ro.State == api.RolloutOfflineApplied && p.Offline == spec.OfflineApply) {
			return
		}
	}
	m.Flag, m.Verdict, m.Gates = "ungranted", rollout.Failed, []string{rollout.GateGranted}
	addMember(c, m)
	claim := "no rollout status"
	if o.Rollout != nil {
		claim = fmt.Sprintf("rollout status %q, grant %q", o.Rollout.State, o.Rollout.Grant)
	}
	c.Events = append(c.Events, rollout.Event{Time: now, Device: m.Device, Kind: rollout.EventUngranted,
		Message: fmt.Sprintf("device %q reports commit %s applied (report %d, %s), but the hub never granted it; its report is not counted as healthy", m.Device, short(r.st.Commit), o.Seq, claim)})
	r.h.m.rolloutRefused.WithLabelValues("ungranted").Inc()
	r.log.Warn("device reports a commit it was never granted", "device", m.Device, "commit", short(r.st.Commit), "seq", o.Seq)
}

// invalidate drops the cached view, so this hub's next grant or page reads the store.
func (r *rollouts) invalidate() {
	r.viewMu.Lock()
	r.view = nil
	r.viewMu.Unlock()
}

// current returns the newest rollout as this hub serves it, at most viewTTL old.
func (r *rollouts) current(ctx context.Context) (*cachedView, error) {
	r.viewMu.Lock()
	defer r.viewMu.Unlock()
	now := time.Now()
	if r.view != nil && now.Sub(r.view.at) < viewTTL {
		return r.view, nil
	}
	rec, err := r.h.st.CurrentRollout(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	v, err := r.load(ctx, rec)
	if err != nil {
		return nil, err
	}
	v.at = now
	r.view = v
	return v, nil
}

func (r *rollouts) load(ctx context.Context, rec store.RolloutRecord) (*cachedView, error) {
	s, err := loadState(ctx, r.h.st, rec)
	if err != nil {
		return nil, err
	}
	v := &cachedView{rec: rec, state: s, granted: map[string]bool{}}
	for id, m := range s.Members {
		if !m.Granted.IsZero() {
			v.granted[id] = true
		}
	}
	return v, nil
}

// blocked reports whether v's rollout may grant nothing now but reverts.
func (v *cachedView) blocked() (string, bool) {
	switch {
	case v.rec.Aborted || v.state.Status == rollout.Aborted:
		return api.WaitAborted, true
	case v.state.Status == rollout.Halted:
		return api.WaitHalted, true
	case v.rec.Paused || v.state.Status == rollout.Paused:
		return api.WaitPaused, true
	case v.state.Status == rollout.Superseded:
		return api.WaitHalted, true
	}
	return "", false
}

func short(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}
