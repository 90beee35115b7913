package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// StateVersion is the version of state.json's format.
const StateVersion = 1

// State is what the agent keeps across restarts in state.json, and what
// `shoal-agent status` prints.
type State struct {
	Version int `json:"version"`
	// Applied is the commit the device runs: rendered, valid and converged.
	Applied Applied `json:"applied"`
	// Attempted is the newest commit the agent tried, with why it is not applied when it is not.
	Attempted Attempt `json:"attempted"`
	// Converged: the last pass brought every stage to the applied spec.
	Converged bool `json:"converged"`
	// Passes counts completed passes over the agent's life.
	Passes uint64 `json:"passes"`
	// LastPass is the last pass's summary, as reported.
	LastPass *Report `json:"lastPass,omitempty"`
	// Rollout is the device's standing on the newest commit it knows while
	// the fleet declares a rollout: held (and why), granted, or applied
	// offline; reported with every status.
	Rollout *api.RolloutStatus `json:"rollout,omitempty"`
	// GrantedSpec is the spec hash Rollout's grant was for, so the same
	// commit is not asked for again.
	GrantedSpec string `json:"grantedSpec,omitempty"`
}

// Applied is the last good commit.
type Applied struct {
	Commit     string    `json:"commit,omitempty"`
	SpecHash   string    `json:"specHash,omitempty"`
	CommitTime time.Time `json:"commitTime,omitempty"` // a lower bound for the clock
	Time       time.Time `json:"time,omitempty"`       // when it was applied
}

// Attempt is the last commit tried.
type Attempt struct {
	Commit string    `json:"commit,omitempty"`
	Time   time.Time `json:"time,omitempty"`
	// Problem says why Commit is not applied; nil when it is.
	Problem *api.Problem `json:"problem,omitempty"`
	// Errors are the spec's validation errors, each with file:line:col.
	Errors []string `json:"errors,omitempty"`
}

// Report is one pass's full account: the status sent to the hub plus what
// only the device keeps (per-stage results, resources).
type Report struct {
	Status    api.Status             `json:"status"`
	Trigger   string                 `json:"trigger"`
	Duration  time.Duration          `json:"duration"`
	Stages    map[string]StageReport `json:"stages,omitempty"`
	Resources *Resources             `json:"resources,omitempty"`
}

// StageReport is what one stage said in a pass.
type StageReport struct {
	Ran       bool   `json:"ran"` // false: nothing new, the stage was not called
	Converged bool   `json:"converged"`
	Summary   string `json:"summary,omitempty"`
	Error     string `json:"error,omitempty"`
}

// stageStatuses lists the stages' reports in the order the stages run.
func stageStatuses(stages []Stage, reports map[string]StageReport) []api.StageStatus {
	var out []api.StageStatus
	for _, s := range stages {
		r, ok := reports[s.Name()]
		if !ok {
			continue
		}
		out = append(out, api.StageStatus{Name: s.Name(), Ran: r.Ran, Converged: r.Converged, Summary: r.Summary, Error: r.Error})
	}
	return out
}

// ReadState reads state.json from stateDir; a missing file gives an empty State.
func ReadState(stateDir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return &State{Version: StateVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(stateDir, "state.json"), err)
	}
	if s.Version != StateVersion {
		return nil, fmt.Errorf("state.json version %d: this agent reads version %d", s.Version, StateVersion)
	}
	return &s, nil
}

// stateFile writes state.json atomically, and only when it changed, to spare flash.
type stateFile struct {
	path string
	last []byte
}

func (f *stateFile) write(s *State) error {
	s.Version = StateVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if bytes.Equal(b, f.last) {
		return nil
	}
	if err := atomicfile.WriteFile(f.path, b, 0o600); err != nil {
		return err
	}
	f.last = b
	return nil
}
