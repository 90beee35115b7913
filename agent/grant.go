package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/rollout/grant"
	"github.com/shoalfleet/shoal/source"
	"github.com/shoalfleet/shoal/spec"
)

// Granter asks the hub whether the device may converge on a commit, and
// holds the hub CA certificate a grant is checked against. The hub client
// implements it; an agent with a hub configured but not enrolled yet gets
// one whose calls fail (the offline policy then decides).
type Granter interface {
	Grant(ctx context.Context, req *api.GrantRequest) (*api.GrantResponse, error)
	HubCA() []byte
}

// holdRetryMax caps how long a held commit waits before the agent asks
// again with no poke; the hub pokes a device when its wave opens.
const holdRetryMax = 5 * time.Minute

// grantFor decides whether the device may converge on dev (rendered from
// rev), which changes its spec while the fleet declares a rollout. It
// returns whether to go ahead, the standing to report, and, when held, when
// to ask again. A grant is checked here: signed by the hub CA, for this
// device, commit and spec, answering this request's nonce.
func (a *Agent) grantFor(ctx context.Context, trigger string, dev *spec.Device, rev *source.Revision, st *State) (bool, *api.RolloutStatus, time.Duration) {
	hash := dev.Hash()
	rs := &api.RolloutStatus{Commit: rev.Commit, Track: dev.Rollout.Track}
	if trigger == "bundle" {
		// A signed USB bundle is the operator's own hand: it needs no grant.
		rs.State = api.RolloutBundle
		return true, rs, 0
	}
	if r := st.Rollout; r != nil && r.Commit == rev.Commit && r.State == api.RolloutGranted && st.GrantedSpec == hash {
		return true, r, 0 // granted before (a failed stage is being retried)
	}
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		rs.State, rs.Reason, rs.Message = api.RolloutWaiting, api.WaitUnreachable, "no randomness for a grant nonce: "+err.Error()
		return false, rs, time.Minute
	}
	req := &api.GrantRequest{APIVersion: api.Version, Commit: rev.Commit, SpecHash: hash, Applied: st.Applied.Commit, AppliedSpec: st.Applied.SpecHash, Nonce: nonce}
	res, err := a.o.Granter.Grant(ctx, req)
	var ae *api.Error
	switch {
	case errors.As(err, &ae) && ae.Status == http.StatusConflict:
		a.metrics.grants.WithLabelValues("refused").Inc()
		rs.State, rs.Reason, rs.Message = api.RolloutWaiting, api.WaitRefused, ae.Message
		a.log.Warn("hub refused a grant; holding the commit", "commit", rev.Commit, "reason", ae.Reason, "msg", ae.Message)
		return false, rs, time.Minute
	case err != nil:
		a.metrics.grants.WithLabelValues("unreachable").Inc()
		if dev.Rollout.Offline == spec.OfflineApply {
			rs.State, rs.Reason, rs.Message = api.RolloutOfflineApplied, api.WaitUnreachable, "hub unreachable; the offline policy is apply: "+err.Error()
			a.log.Warn("hub unreachable for a grant; applying under the offline policy", "commit", rev.Commit, "err", err)
			return true, rs, 0
		}
		rs.State, rs.Reason, rs.Message = api.RolloutWaiting, api.WaitUnreachable, "hub unreachable; the offline policy is wait: "+err.Error()
		return false, rs, 0
	case res.Wait != nil:
		a.metrics.grants.WithLabelValues("waiting").Inc()
		w := res.Wait
		rs.State, rs.Reason, rs.Message, rs.Wave = api.RolloutWaiting, w.Reason, w.Message, w.Wave
		if w.Track != "" {
			rs.Track = w.Track
		}
		retry := w.RetryAfter
		if retry <= 0 || retry > holdRetryMax {
			retry = holdRetryMax
		}
		return false, rs, retry
	}
	ck, err := grant.NewChecker(a.o.Granter.HubCA())
	var body *api.GrantBody
	if err == nil {
		body, err = ck.Check(res.Grant, grant.Expect{Device: a.cfg.DeviceID, Commit: rev.Commit, SpecHash: hash, Nonce: nonce})
	}
	if err != nil {
		a.metrics.grants.WithLabelValues("invalid").Inc()
		rs.State, rs.Reason, rs.Message = api.RolloutWaiting, grant.Reason(err), "grant refused: "+err.Error()
		a.log.Error("the hub's answer is not a grant this device can trust; holding the commit", "commit", rev.Commit, "reason", rs.Reason, "err", err)
		return false, rs, time.Minute
	}
	a.metrics.grants.WithLabelValues("granted").Inc()
	rs.State, rs.Grant, rs.Wave = api.RolloutGranted, body.ID, body.Wave
	if body.Track != "" {
		rs.Track = body.Track
	}
	a.log.Info("granted", "commit", rev.Commit, "grant", body.ID, "wave", body.Wave, "why", body.Why)
	return true, rs, 0
}
