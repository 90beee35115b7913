package rollout

import (
	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/spec"
)

// Observation is what a device's latest report says that a rollout needs.
type Observation struct {
	Seq       uint64
	Attempted string
	Applied   string
	SpecHash  string
	State     api.State
	Problem   string // the problem's reason, if any
	// RolledBack names the apps whose last rollout was rolled back.
	RolledBack    []string
	UpdateState   string
	UpdateVersion string // the release the device runs
	UpdateTarget  string // the release it installs
	AttestOK      *bool
	ClockState    string
	Rollout       *api.RolloutStatus
}

// Observe reduces a status report to what the rollout reads.
func Observe(s *api.Status) Observation {
	o := Observation{Seq: s.Seq, Attempted: s.Commit.Attempted, Applied: s.Commit.Applied, SpecHash: s.Commit.SpecHash,
		State: s.State, Rollout: s.Rollout}
	if s.Problem != nil {
		o.Problem = s.Problem.Reason
	}
	for _, a := range s.Apps {
		if a.Rollback != nil {
			o.RolledBack = append(o.RolledBack, a.Name)
		}
	}
	if u := s.Update; u != nil {
		o.UpdateState, o.UpdateVersion, o.UpdateTarget = u.State, u.Version, u.Target
	}
	if a := s.Attest; a != nil {
		ok := a.OK
		o.AttestOK = &ok
	}
	if c := s.Clock; c != nil {
		o.ClockState = c.State
	}
	return o
}

// Verdict is a device's standing on a rollout's commit.
type Verdict string

// Verdicts.
const (
	Pending Verdict = "pending" // not on the commit yet, or on it and not yet healthy
	Healthy Verdict = "healthy" // every gate passes
	Failed  Verdict = "failed"  // a gate failed
)

// Gate names, as in the fleet repo's rollout.gates.
const (
	GateConverged   = "converged"
	GateApps        = "apps_healthy"
	GateOS          = "os_committed"
	GateAttestation = "attestation"
	GateClock       = "clock"
	// GateGranted fails a device that reports the commit applied though
	// the hub never granted it.
	GateGranted = "granted"
)

// Gates lists every gate.
var Gates = []string{GateConverged, GateApps, GateOS, GateAttestation, GateClock, GateGranted}

// Target is what a device should reach: the commit, and the OS release
// version the commit moves it to ("" when its release does not change).
type Target struct {
	Commit  string
	Release string
}

// Evaluate judges a device's latest report against the gates: failed (and
// which gates) when the device tried the commit and a gate says no,
// healthy when it runs the commit and every gate passes, else pending.
func Evaluate(g spec.Gates, t Target, o Observation) (Verdict, []string) {
	tried := o.Attempted == t.Commit || o.Applied == t.Commit
	if !tried {
		return Pending, nil
	}
	on := o.Applied == t.Commit
	var failed []string
	if g.Converged && !on && (o.State == api.StateStalled || o.State == api.StateDegraded) {
		failed = append(failed, GateConverged)
	}
	if g.Converged && on && o.State == api.StateDegraded {
		failed = append(failed, GateConverged)
	}
	if g.AppsHealthy && o.Attempted == t.Commit && len(o.RolledBack) > 0 {
		failed = append(failed, GateApps)
	}
	if g.OSCommitted && t.Release != "" && o.UpdateState == "rolled-back" && (o.UpdateTarget == t.Release || o.UpdateTarget == "") {
		failed = append(failed, GateOS)
	}
	if g.Attestation && on && o.AttestOK != nil && !*o.AttestOK {
		failed = append(failed, GateAttestation)
	}
	if g.Clock && on && (o.ClockState == "skewed" || o.ClockState == "untrusted") {
		failed = append(failed, GateClock)
	}
	if len(failed) > 0 {
		return Failed, failed
	}
	if !on {
		return Pending, nil
	}
	if g.Converged && o.State != api.StateConverged {
		return Pending, nil
	}
	if g.OSCommitted && t.Release != "" && (o.UpdateVersion != t.Release || (o.UpdateState != "idle" && o.UpdateState != "committed" && o.UpdateState != "")) {
		return Pending, nil
	}
	return Healthy, nil
}
