package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/reconcile"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// ContainerStage converges the device's containers through the reconciler.
type ContainerStage struct {
	R *reconcile.Reconciler

	mu   sync.Mutex
	last *reconcile.Result
}

// Name implements Stage.
func (s *ContainerStage) Name() string { return "containers" }

// Converge implements Stage.
func (s *ContainerStage) Converge(ctx context.Context, t Target) (StageResult, error) {
	res, err := s.R.ReconcileRepo(ctx, t.Device, t.FS)
	s.mu.Lock()
	s.last = res
	s.mu.Unlock()
	if res == nil {
		return StageResult{}, err
	}
	out := StageResult{Converged: err == nil && res.Converged(), Summary: res.Summary()}
	for _, a := range res.Apps {
		out.Apps = append(out.Apps, appStatus(a))
	}
	return out, err
}

// Healthy is the containers' part of the updater's health gate: every app
// of the last pass running and healthy, nothing rolled back.
func (s *ContainerStage) Healthy(context.Context) error {
	s.mu.Lock()
	res := s.last
	s.mu.Unlock()
	if res == nil {
		return errors.New("containers: not reconciled yet")
	}
	if !res.Converged() {
		return fmt.Errorf("containers: %s", res.Summary())
	}
	return nil
}

func appStatus(a reconcile.AppResult) api.AppStatus {
	st := api.AppStatus{
		Name:     a.App,
		Image:    a.Image,
		State:    a.State,
		Health:   a.Health,
		Drift:    a.Drift,
		Restarts: a.RestartCount,
	}
	if st.State == "" {
		st.State = "missing"
	}
	var msg []string
	if a.Error != nil {
		msg = append(msg, a.Error.Error())
	}
	switch a.Outcome {
	case reconcile.OutcomeRolledBack, reconcile.OutcomeFailed, reconcile.OutcomeHeld, reconcile.OutcomeDrift:
		msg = append([]string{a.Outcome}, msg...)
	}
	st.Message = strings.Join(msg, ": ")
	switch {
	case a.Rollback != nil:
		// The record the reconciler keeps: on the pass that rolled back and
		// on every later one, the same time, exit code and log lines.
		r := a.Rollback
		st.Rollback = &api.Rollback{Check: r.Reason, ExitCode: r.ExitCode, LogTail: r.Logs, Message: r.Message, Time: r.Time}
	case a.Outcome == reconcile.OutcomeRolledBack:
		rb := &api.Rollback{Check: "health", ExitCode: a.ExitCode, LogTail: a.Logs, Message: st.Message}
		if a.Error != nil {
			rb.Check = a.Error.Reason()
		}
		st.Rollback = rb
	}
	return st
}

// UpdateStage advances the A/B update state machine once per pass.
type UpdateStage struct {
	// U is the updater; nil on a device with no A/B slots configured,
	// which cannot take a release and says so.
	U *updater.Updater
	// GateFor returns the health gate a trial boot must pass before it is
	// committed, under the device's current spec (nil: no gate).
	GateFor func(d *spec.Device) updater.Gate
	// Logger gets the one line that says a release cannot be installed; nil discards.
	Logger *slog.Logger

	mu     sync.Mutex
	warned string // the release last said to be out of reach
}

// Name implements Stage.
func (s *UpdateStage) Name() string { return "update" }

// Converge implements Stage.
func (s *UpdateStage) Converge(ctx context.Context, t Target) (StageResult, error) {
	if s.U == nil {
		return s.noSlots(t.Device.Release), nil
	}
	// A relative release URL names a file of the fleet repo: the updater's
	// BaseDir is the checkout.
	var gate updater.Gate
	if s.GateFor != nil {
		gate = s.GateFor(t.Device)
	}
	st, err := s.U.Step(ctx, t.Device.Release, t.Device.Update, gate)
	out := StageResult{Update: updateStatus(st, t.Device.Release)}
	out.Converged = err == nil && converged(st, t.Device.Release)
	out.Summary = string(st.Phase)
	if st.Waiting != "" {
		out.Summary += " (" + st.Waiting + ")"
	}
	return out, err
}

// noSlots is the stage on a device with no A/B slots: there is nothing to
// install a release into, so a release in its spec is not its to take. That
// is said in the stage's summary on every report and logged once per
// release, and it does not hold the device back: its containers and trust
// converge as on any device.
func (s *UpdateStage) noSlots(rel *spec.Release) StageResult {
	if rel == nil {
		return StageResult{Converged: true, Summary: "no A/B updates configured"}
	}
	msg := fmt.Sprintf("release %q (%s) not installed: this device has no A/B slots (update.slot_a, slot_b and bootloader are not set in its config)", rel.Name, rel.Version)
	s.mu.Lock()
	first := s.warned != rel.Name
	s.warned = rel.Name
	s.mu.Unlock()
	if first && s.Logger != nil {
		s.Logger.Warn("the spec names a release this device cannot take; give it A/B slots (update.slot_a, update.slot_b, update.bootloader) to install releases",
			"release", rel.Name, "version", rel.Version)
	}
	return StageResult{Converged: true, Summary: msg}
}

// converged: the device runs the release it should, with no update under
// way. A rolled-back device runs its committed release again, so it has
// converged once the spec names that release (or none) rather than the one
// that failed: the updater keeps the rolled-back phase until the next release.
func converged(st updater.Status, want *spec.Release) bool {
	settled := st.Phase == updater.PhaseIdle || st.Phase == updater.PhaseCommitted || st.Phase == updater.PhaseRolledBack
	if want == nil {
		return settled
	}
	return st.Committed != nil && st.Committed.SHA256 == want.SHA256 && settled
}

func updateStatus(st updater.Status, want *spec.Release) *api.UpdateStatus {
	out := &api.UpdateStatus{State: string(st.Phase), Slot: st.BootedSlot, Since: st.Since}
	if st.Committed != nil {
		out.Version = st.Committed.Version
	}
	if st.Target != nil {
		out.Target = st.Target.Version
	} else if want != nil && (st.Committed == nil || st.Committed.SHA256 != want.SHA256) {
		out.Target = want.Version
	}
	if p := st.Progress; p != nil && p.Total > 0 {
		out.Progress = float64(p.Bytes) / float64(p.Total)
	}
	if st.Phase == updater.PhaseRolledBack || st.Reason != "" {
		out.Rollback = &api.Rollback{Check: st.Reason, Message: st.Message}
		if st.Phase == updater.PhaseRolledBack {
			out.Rollback.Time = st.Since // when the phase began: the rollback
		}
	}
	if d := st.Delta; d != nil {
		out.Delta = &api.DeltaStatus{Mode: d.Mode, Why: d.Why, Image: d.Image, Fetch: d.Fetch, Full: d.Full,
			Seeded: d.Seeded, InPlace: d.InPlace, Fetched: d.Fetched, Refused: d.Refused}
	}
	return out
}

// Hub is the part of the hub client the trust stage uses for attestation.
type Hub interface {
	Nonce(ctx context.Context) (*api.Nonce, error)
	Attest(ctx context.Context, req *api.AttestRequest) (*api.AttestResult, error)
}

// TrustStage checks the clock against NTP (bounded below by the fleet
// commit's time and the release's build time), extends the application PCR
// with the applied spec and release, and attests to the hub when one is set.
type TrustStage struct {
	Clock    *attest.Clock
	Attester *attest.Attester // nil: no attestation
	Hub      Hub              // nil: quotes are not sent
	// RunningVersion returns the release version the device runs ("" if unknown).
	RunningVersion func() string

	mu       sync.Mutex
	last     attest.ClockStatus
	attested *api.AttestResult
}

// Name implements Stage.
func (s *TrustStage) Name() string { return "trust" }

// Converge implements Stage.
func (s *TrustStage) Converge(ctx context.Context, t Target) (StageResult, error) {
	d := t.Device
	s.Clock.SetTimePolicy(d.Time)
	if !t.CommitTime.IsZero() {
		s.Clock.SetLowerBound("fleet-commit", t.CommitTime)
	}
	if d.Release != nil && !d.Release.Built.IsZero() {
		s.Clock.SetLowerBound("release-build", d.Release.Built)
	}
	cs := s.Clock.Check(ctx)
	s.mu.Lock()
	s.last = cs
	s.mu.Unlock()
	out := StageResult{Clock: &api.ClockStatus{State: string(cs.State), Trusted: cs.State == attest.ClockOK, Skew: cs.Offset, Source: "ntp"}}
	// An unknown clock (no time server answered, as on many factory
	// networks) holds nothing back: only what needs a trusted time waits for
	// one, like a trial boot's commit under its health gate. A clock known
	// to be wrong, skewed or below its lower bound, is a problem to report.
	switch cs.State {
	case attest.ClockOK:
		out.Converged, out.Summary = true, "clock ok"
	case attest.ClockUnknown:
		out.Converged, out.Summary = true, "clock unknown (no time server answered)"
		if len(d.Time.Servers) == 0 {
			out.Summary = "clock unknown (no time servers configured)"
		}
	default:
		out.Summary = cs.Err().Error()
	}
	if s.Attester == nil {
		return out, nil
	}
	version := ""
	if s.RunningVersion != nil {
		version = s.RunningVersion()
	}
	as := &api.AttestStatus{Weak: s.Attester.Identity().Weak, Time: s.Clock.Now()}
	out.Attest = as
	if err := s.Attester.ExtendApp(ctx, d.Hash(), version); err != nil {
		as.Reasons = []string{ReasonExtendAppPCR}
		return out, fmt.Errorf("extend application PCR: %w", err)
	}
	if s.Hub == nil {
		out.Summary += ", attestation not sent (no hub)"
		return out, nil
	}
	res, err := s.attest(ctx, d, version)
	if err != nil {
		as.Reasons = []string{ReasonHubUnreachable}
		out.Converged = out.Converged && !d.Attestation.Required
		return out, nil // the hub being away is reported, not a failure of the device
	}
	as.OK, as.Reasons = res.OK, res.Reasons
	s.mu.Lock()
	s.attested = res
	s.mu.Unlock()
	if !res.OK {
		out.Converged = false
		out.Summary += ", attestation refused: " + strings.Join(res.Reasons, ", ")
	} else {
		out.Summary += ", attested"
	}
	return out, nil
}

func (s *TrustStage) attest(ctx context.Context, d *spec.Device, version string) (*api.AttestResult, error) {
	n, err := s.Hub.Nonce(ctx)
	if err != nil {
		return nil, err
	}
	q, err := s.Attester.Quote(ctx, n.Nonce, d.Attestation.PCRs)
	if err != nil {
		return nil, err
	}
	return s.Hub.Attest(ctx, &api.AttestRequest{
		APIVersion: api.Version, Nonce: n.Nonce, AKPublic: q.AK, Quote: q.Attest,
		Signature: q.Signature, PCRs: q.PCRs, SpecHash: d.Hash(), ReleaseVersion: version,
	})
}

// ClockOK is the clock's part of the health gate.
func (s *TrustStage) ClockOK(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last.Err()
}

// Attested is the attestation part of the health gate.
func (s *TrustStage) Attested(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.attested == nil {
		return errors.New("not attested yet")
	}
	if !s.attested.OK {
		return fmt.Errorf("attestation refused: %s", strings.Join(s.attested.Reasons, ", "))
	}
	return nil
}
