package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/shoalfleet/shoal/api"
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
	if a.Outcome == reconcile.OutcomeRolledBack {
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
	U *updater.Updater
	// Gate is the health gate a trial boot must pass before it is committed.
	Gate updater.Gate
}

// Name implements Stage.
func (s *UpdateStage) Name() string { return "update" }

// Converge implements Stage.
func (s *UpdateStage) Converge(ctx context.Context, t Target) (StageResult, error) {
	// A relative release URL names a file of the fleet repo: the updater's
	// BaseDir is the checkout.
	st, err := s.U.Step(ctx, t.Device.Release, t.Device.Update, s.Gate)
	out := StageResult{Update: updateStatus(st, t.Device.Release)}
	out.Converged = err == nil && converged(st, t.Device.Release)
	out.Summary = string(st.Phase)
	if st.Waiting != "" {
		out.Summary += " (" + st.Waiting + ")"
	}
	return out, err
}

func converged(st updater.Status, want *spec.Release) bool {
	if want == nil {
		return st.Phase == updater.PhaseIdle || st.Phase == updater.PhaseCommitted
	}
	return st.Committed != nil && st.Committed.SHA256 == want.SHA256 &&
		(st.Phase == updater.PhaseIdle || st.Phase == updater.PhaseCommitted)
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
	}
	return out
}
