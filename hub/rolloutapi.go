package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/rollout"
	"github.com/shoalfleet/shoal/spec"
)

// handleGrant answers a device that asks whether it may converge on a
// commit: a grant signed by the hub CA key, or why to wait. A commit that
// is not the one the hub rolls out is refused (409 not-target) and recorded.
func (h *Hub) handleGrant(w http.ResponseWriter, r *http.Request, d store.Device) {
	var req api.GrantRequest
	if !decode(w, r, api.MaxGrantBytes, &req) {
		h.m.rolloutGrants.WithLabelValues("bad-request").Inc()
		return
	}
	ctx := r.Context()
	now := h.o.Now()
	asked := time.Now()
	ro := h.ro
	if ro == nil {
		h.grant(w, r, d, &req, nil, "no-rollout")
		return
	}
	f, rev, _ := ro.fleet.Current()
	if f != nil && rev != "" && req.Commit != rev {
		// The device may have fetched a commit this hub has not read yet
		// (a push and its poke race the hub's refresh): read the fleet repo
		// once, for every request that comes meanwhile, before refusing.
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		if err := ro.fleet.RefreshSince(rctx, asked); err != nil && rctx.Err() == nil {
			ro.log.Warn("fleet refresh for a grant request failed", "err", err)
		}
		cancel()
		f, rev, _ = ro.fleet.Current()
	}
	switch {
	case f == nil:
		writeError(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "the hub has not read the fleet repo yet")
		return
	case rev == "":
		// A directory has no commits to hold devices to.
		h.grant(w, r, d, &req, nil, "no-rollout")
		return
	case req.Commit != rev:
		ro.recordNotTarget(ctx, d.ID, req.Commit, rev, now)
		h.m.rolloutGrants.WithLabelValues("refused").Inc()
		writeError(w, http.StatusConflict, api.ReasonNotTarget,
			fmt.Sprintf("commit %s is not the commit this hub rolls out (%s), nor the newest of the fleet repo it just read", short(req.Commit), short(rev)))
		return
	case !f.HasRollout():
		h.grant(w, r, d, &req, nil, "no-rollout")
		return
	}
	v, err := ro.current(ctx)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	if v == nil || v.rec.Commit != rev {
		ro.poke()
		h.wait(w, api.GrantWait{Reason: api.WaitJoining, Message: "the hub is starting the rollout of " + short(rev), RetryAfter: 5 * time.Second})
		return
	}
	m, err := h.st.RolloutMember(ctx, v.rec.ID, d.ID)
	if errors.Is(err, store.ErrNotFound) {
		dev, rerr := ro.renderAt(f, rev, d.ID)
		if rerr != nil || dev == nil || dev.Rollout == nil || dev.Hash() == req.AppliedSpec {
			// Not a device this rollout holds back.
			h.grant(w, r, d, &req, v, "no-rollout")
			return
		}
		jm := store.RolloutMember{RolloutID: v.rec.ID, DeviceID: d.ID, Track: dev.Rollout.Track, Labels: dev.Labels, FromSpec: req.AppliedSpec, ToSpec: dev.Hash()}
		if dev.Release != nil {
			jm.Release = dev.Release.Version
		}
		if _, err := h.st.JoinRollout(ctx, jm); err != nil {
			h.internal(w, r, err)
			return
		}
		ro.poke()
		h.wait(w, api.GrantWait{Reason: api.WaitJoining, Rollout: v.rec.ID, Track: jm.Track, RetryAfter: 5 * time.Second,
			Message: "the hub is placing this device in a wave of the rollout of " + short(rev)})
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	if reason, blocked := v.blocked(); blocked && m.Why != rollout.WhyRevert && m.Granted.IsZero() {
		wt := v.state.Wait(toMember(m), now)
		if wt.Reason != reason {
			wt.Reason = reason
			wt.Message = "the rollout of " + short(rev) + " is " + strings.TrimPrefix(reason, "rollout-")
		}
		wt.Rollout = v.rec.ID
		h.wait(w, wt)
		return
	}
	if m.Admitted.IsZero() {
		wt := v.state.Wait(toMember(m), now)
		wt.Rollout = v.rec.ID
		h.wait(w, wt)
		return
	}
	h.grant(w, r, d, &req, v, m.Why)
}

func toMember(m store.RolloutMember) *rollout.Member {
	return &rollout.Member{Device: m.DeviceID, Labels: m.Labels, Track: m.Track, Wave: m.Wave, Why: m.Why, Admitted: m.Admitted, Verdict: rollout.Verdict(m.Verdict)}
}

func (h *Hub) wait(w http.ResponseWriter, wt api.GrantWait) {
	h.m.rolloutGrants.WithLabelValues("waiting").Inc()
	writeJSON(w, http.StatusOK, &api.GrantResponse{APIVersion: api.Version, Wait: &wt})
}

// grant signs a grant for the request. In a rollout (v non-nil and why a
// member's reason) the member's grant is recorded once: asking again gets
// the same grant ID, newly signed over the new nonce.
func (h *Hub) grant(w http.ResponseWriter, r *http.Request, d store.Device, req *api.GrantRequest, v *cachedView, why string) {
	body := api.GrantBody{Device: d.ID, Commit: req.Commit, SpecHash: req.SpecHash, Why: why, Nonce: req.Nonce, Issued: h.o.Now()}
	if v != nil && why != "no-rollout" {
		m, fresh, err := h.st.GrantMember(r.Context(), v.rec.ID, d.ID, newGrantID(), h.o.Now())
		if err != nil {
			h.internal(w, r, err)
			return
		}
		if m.GrantID == "" {
			// Not admitted after all (a race with a new rollout): ask again.
			h.wait(w, api.GrantWait{Reason: api.WaitJoining, Rollout: v.rec.ID, Message: "ask again", RetryAfter: 5 * time.Second})
			return
		}
		body.ID, body.Rollout, body.Track, body.Issued = m.GrantID, v.rec.ID, m.Track, m.Granted
		if ws := v.state.Waves[m.Track]; m.Wave >= 0 && m.Wave < len(ws) {
			body.Wave = ws[m.Wave].Name
		}
		if fresh {
			h.m.rolloutGrants.WithLabelValues("granted").Inc()
			h.log.Info("rollout grant", "device", d.ID, "commit", short(req.Commit), "rollout", v.rec.ID, "wave", body.Wave, "why", why, "grant", m.GrantID)
		} else {
			h.m.rolloutGrants.WithLabelValues("granted-again").Inc()
		}
	} else {
		body.ID = newGrantID()
		h.m.rolloutGrants.WithLabelValues("no-rollout").Inc()
	}
	g, err := rollout.Sign(h.ca.key, body)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, &api.GrantResponse{APIVersion: api.Version, Grant: g})
}

func newGrantID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// recordNotTarget records, at most once a minute per device, a grant
// request for a commit other than the one rolled out.
func (r *rollouts) recordNotTarget(ctx context.Context, device, commit, target string, now time.Time) {
	r.notTargetMu.Lock()
	last := r.notTarget[device]
	if now.Sub(last) < time.Minute {
		r.notTargetMu.Unlock()
		return
	}
	r.notTarget[device] = now
	r.notTargetMu.Unlock()
	r.h.m.rolloutRefused.WithLabelValues("not-target").Inc()
	r.log.Warn("device asked for a grant for a commit that is not the target", "device", device, "commit", short(commit), "target", short(target))
	v, err := r.current(ctx)
	if err != nil || v == nil {
		return
	}
	_ = r.h.st.AddRolloutEvents(ctx, []store.RolloutEvent{{RolloutID: v.rec.ID, Time: now, DeviceID: device, Kind: rollout.EventNotTarget,
		Message: fmt.Sprintf("device %q asked for a grant for commit %s, which is not the commit rolled out (%s); refused", device, short(commit), short(target))}})
}

// notFound is an error meaning "no such thing"; it says so to callers that
// cannot import this package (the status page) through NotFound.
type notFound string

func (e notFound) Error() string  { return string(e) }
func (e notFound) NotFound() bool { return true }

// ErrNoRollout is returned by the rollout operations of a hub that has no
// rollout to show or act on.
var ErrNoRollout error = notFound("no rollout")

// RolloutView returns the rollout of commit (a prefix will do; "" for the
// newest) as the operator API and the status page show it.
func (h *Hub) RolloutView(ctx context.Context, commit string, devices bool) (api.RolloutView, error) {
	rec, err := h.findRollout(ctx, commit)
	if err != nil {
		return api.RolloutView{}, err
	}
	var v *cachedView
	if h.ro != nil {
		if cur, err := h.ro.current(ctx); err == nil && cur != nil && cur.rec.ID == rec.ID {
			v = cur
		}
	}
	if v == nil {
		if v, err = h.roLoad(ctx, rec); err != nil {
			return api.RolloutView{}, err
		}
	}
	events, err := h.st.RolloutEvents(ctx, rec.ID, 50)
	if err != nil {
		return api.RolloutView{}, err
	}
	return buildView(v, events, h.o.Now(), devices), nil
}

func (h *Hub) roLoad(ctx context.Context, rec store.RolloutRecord) (*cachedView, error) {
	r := h.ro
	if r == nil {
		r = &rollouts{h: h}
	}
	return r.load(ctx, rec)
}

// findRollout finds the newest rollout whose commit starts with commit.
func (h *Hub) findRollout(ctx context.Context, commit string) (store.RolloutRecord, error) {
	if commit == "" {
		rec, err := h.st.CurrentRollout(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return rec, fmt.Errorf("%w: the hub has started none (it needs --fleet with a Git URL whose fleet repo declares a rollout)", ErrNoRollout)
		}
		return rec, err
	}
	rs, err := h.st.ListRollouts(ctx, 1000)
	if err != nil {
		return store.RolloutRecord{}, err
	}
	for _, rec := range rs {
		if strings.HasPrefix(rec.Commit, strings.ToLower(commit)) {
			return rec, nil
		}
	}
	return store.RolloutRecord{}, fmt.Errorf("%w of commit %s", ErrNoRollout, commit)
}

// RolloutAct applies an operator's action to a rollout and returns the rollout's view.
func (h *Hub) RolloutAct(ctx context.Context, a api.RolloutAction) (api.RolloutView, error) {
	rec, err := h.findRollout(ctx, a.Commit)
	if err != nil {
		return api.RolloutView{}, err
	}
	now := h.o.Now()
	var msg, kind string
	switch a.Action {
	case "pause":
		err, kind, msg = h.st.SetRolloutControl(ctx, rec.ID, true, rec.Aborted), rollout.EventPaused, "paused by an operator"
	case "resume":
		err, kind, msg = h.st.SetRolloutControl(ctx, rec.ID, false, rec.Aborted), rollout.EventResumed, "resumed by an operator"
	case "abort":
		err, kind, msg = h.st.SetRolloutControl(ctx, rec.ID, rec.Paused, true), rollout.EventAborted, "aborted by an operator: no device gets the commit from this rollout any more"
	case "approve":
		kind = rollout.EventApproved
		msg, err = h.approve(ctx, rec, a)
	}
	if err != nil {
		return api.RolloutView{}, err
	}
	if a.Reason != "" {
		msg += ": " + a.Reason
	}
	if err := h.st.AddRolloutEvents(ctx, []store.RolloutEvent{{RolloutID: rec.ID, Time: now, Kind: kind, Message: msg}}); err != nil {
		return api.RolloutView{}, err
	}
	h.log.Info("rollout action", "rollout", rec.ID, "commit", short(rec.Commit), "action", a.Action, "msg", msg)
	if h.ro != nil {
		h.ro.invalidate()
		h.ro.poke()
	}
	return h.RolloutView(ctx, rec.Commit, false)
}

// ErrNoWave is returned when an approval names no wave that waits for one.
var ErrNoWave error = notFound("no such wave")

func (h *Hub) approve(ctx context.Context, rec store.RolloutRecord, a api.RolloutAction) (string, error) {
	v, err := h.roLoad(ctx, rec)
	if err != nil {
		return "", err
	}
	var done []string
	for _, track := range sortedTracks(v.state) {
		if a.Track != "" && a.Track != track {
			continue
		}
		p := v.state.Policies[track]
		for i, w := range v.state.Waves[track] {
			match := false
			switch {
			case a.Wave == "":
				match = p.Waves[i].Approval && !w.Approved && w.State == rollout.WaveWaiting
			case a.Wave == w.Name || a.Wave == strconv.Itoa(i+1):
				match = true
			}
			if !match {
				continue
			}
			if err := h.st.ApproveWave(ctx, rec.ID, track, i); err != nil {
				return "", err
			}
			done = append(done, fmt.Sprintf("%s wave %d (%s)", track, i+1, w.Name))
			if a.Wave == "" {
				break
			}
		}
	}
	if len(done) == 0 {
		if a.Wave == "" {
			return "", fmt.Errorf("%w: no wave of the rollout of %s waits for approval", ErrNoWave, short(rec.Commit))
		}
		return "", fmt.Errorf("%w: the rollout of %s has no wave %q", ErrNoWave, short(rec.Commit), a.Wave)
	}
	return "approved by an operator: " + strings.Join(done, ", "), nil
}

func sortedTracks(s *rollout.State) []string {
	out := make([]string, 0, len(s.Waves))
	for t := range s.Waves {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

func apiCounts(c rollout.Counts, granted int) api.RolloutCounts {
	out := api.RolloutCounts{Members: c.Members, Healthy: c.Healthy, Failed: c.Failed, Pending: c.Pending, Admitted: c.Admitted, Granted: granted}
	if len(c.FailedGates) > 0 {
		out.FailedGates = c.FailedGates
	}
	return out
}

// buildView makes the API view of a rollout at now.
func buildView(v *cachedView, events []store.RolloutEvent, now time.Time, devices bool) api.RolloutView {
	s := v.state
	out := api.RolloutView{APIVersion: api.Version, ID: v.rec.ID, Commit: v.rec.Commit, Status: s.Status, Reason: s.Reason, Urgent: s.Urgent,
		Paused: v.rec.Paused, Aborted: v.rec.Aborted, Created: v.rec.Created, Updated: v.rec.Updated, Now: now,
		Counts: apiCounts(s.Totals(), len(v.granted))}
	if v.rec.Paused && s.Status == rollout.Running {
		out.Status = rollout.Paused
	}
	for _, track := range sortedTracks(s) {
		p := s.Policies[track]
		tv := api.RolloutTrackView{Name: track}
		for i, w := range s.Waves[track] {
			var pw spec.Wave
			if p != nil && i < len(p.Waves) {
				pw = p.Waves[i]
			}
			wv := api.RolloutWaveView{Index: i + 1, Name: w.Name, State: w.State, Approval: pw.Approval, Approved: w.Approved, Opened: w.Opened,
				BakeStart: w.BakeStart, Ended: w.Ended, Bake: pw.Bake.D(), Threshold: pw.SuccessThreshold.String(), Note: w.Note}
			if w.State == rollout.WaveBaking {
				wv.BakeLeft = max(pw.Bake.D()-now.Sub(w.BakeStart), 0)
			}
			granted := 0
			var ms []*rollout.Member
			for _, m := range s.Members {
				if m.Track == track && m.Wave == i {
					ms = append(ms, m)
					if v.granted[m.Device] {
						granted++
					}
				}
			}
			wv.Counts = apiCounts(s.WaveCounts(track, i), granted)
			sort.Slice(ms, func(a, b int) bool {
				// Failed first, then pending, then healthy; by ID within.
				ra, rb := verdictRank(ms[a]), verdictRank(ms[b])
				if ra != rb {
					return ra < rb
				}
				return ms[a].Device < ms[b].Device
			})
			for _, m := range ms {
				if !devices && m.Verdict != rollout.Failed && m.Flag == "" {
					continue
				}
				wv.Devices = append(wv.Devices, api.RolloutDeviceView{ID: m.Device, Verdict: string(m.Verdict), Gates: m.Gates,
					Admitted: !m.Admitted.IsZero(), Granted: v.granted[m.Device], Why: m.Why, Flag: m.Flag})
			}
			tv.Waves = append(tv.Waves, wv)
		}
		out.Tracks = append(out.Tracks, tv)
	}
	for _, e := range events {
		out.Events = append(out.Events, api.RolloutEventView{Time: e.Time, Device: e.DeviceID, Kind: e.Kind, Message: e.Message})
	}
	return out
}

func verdictRank(m *rollout.Member) int {
	switch {
	case m.Verdict == rollout.Failed || m.Flag != "":
		return 0
	case m.Verdict == rollout.Pending:
		return 1
	}
	return 2
}

func (h *Hub) handleRolloutStatus(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	commit := q.Get("commit")
	if len(commit) > 64 {
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, "commit too long")
		return
	}
	v, err := h.RolloutView(r.Context(), commit, q.Get("devices") != "")
	if errors.Is(err, ErrNoRollout) {
		writeError(w, http.StatusNotFound, api.ReasonNotFound, err.Error())
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, &v)
}

func (h *Hub) handleRolloutAction(w http.ResponseWriter, r *http.Request) {
	var a api.RolloutAction
	if !decode(w, r, api.MaxPokeBytes, &a) {
		return
	}
	v, err := h.RolloutAct(r.Context(), a)
	switch {
	case errors.Is(err, ErrNoRollout), errors.Is(err, ErrNoWave):
		writeError(w, http.StatusNotFound, api.ReasonNotFound, err.Error())
		return
	case err != nil:
		h.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, &v)
}
