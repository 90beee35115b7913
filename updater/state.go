package updater

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/spec"
)

// Phase is a state of the A/B update state machine.
type Phase string

// The phases, in the order an update goes through them.
const (
	PhaseIdle        Phase = "idle"
	PhaseDownloading Phase = "downloading" // streaming into the inactive slot
	PhaseInstalled   Phase = "installed"   // slot written and verified; env untouched
	PhaseRebooting   Phase = "rebooting"   // env set to try the new slot; reboot requested
	PhaseTrial       Phase = "trial"       // booted the new slot; health gate pending
	PhaseCommitted   Phase = "committed"   // the new slot is the default
	PhaseRolledBack  Phase = "rolled-back" // back on the previous slot; release marked bad
)

// stateFormat is the version of state.json's layout.
const stateFormat = 1

// ReleaseRef names a release and the slot it is in.
type ReleaseRef struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version"`
	SHA256  string `json:"sha256,omitempty"`
	Size    int64  `json:"size,omitempty"`
	Slot    string `json:"slot"`
}

func refOf(rel *spec.Release, slot string) *ReleaseRef {
	return &ReleaseRef{Name: rel.Name, Version: rel.Version, SHA256: rel.SHA256, Size: rel.Size, Slot: slot}
}

// state is what the updater persists before each transition takes effect.
type state struct {
	Format     int               `json:"format"`
	Phase      Phase             `json:"phase"`
	Committed  *ReleaseRef       `json:"committed,omitempty"` // what the default slot runs
	Previous   *ReleaseRef       `json:"previous,omitempty"`  // what it ran before the current target
	Target     *ReleaseRef       `json:"target,omitempty"`    // the release being installed or tried
	Release    *spec.Release     `json:"release,omitempty"`   // the target's full release, for resume
	Check      checkpoint        `json:"checkpoint"`
	Compressed bool              `json:"compressed,omitempty"`
	Delta      *DeltaStatus      `json:"delta,omitempty"`  // how the install gets its image, if the release has a delta
	BootID     string            `json:"bootID,omitempty"` // the boot in which a reboot was requested
	TrialStart time.Time         `json:"trialStart,omitzero"`
	Bad        map[string]string `json:"bad,omitempty"`      // release sha256 -> why it failed its trial
	BadSlots   map[string]string `json:"badSlots,omitempty"` // slot -> why its content is not trusted
	Reason     string            `json:"reason,omitempty"`   // machine reason of the last failure
	Error      string            `json:"error,omitempty"`
	Changed    time.Time         `json:"changed"`
}

func loadState(path string) (*state, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("update state: %w", err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("update state %s: %w", path, err)
	}
	if s.Format != stateFormat {
		return nil, fmt.Errorf("update state %s: format %d, want %d", path, s.Format, stateFormat)
	}
	return &s, nil
}

func saveState(path string, s *state) error {
	s.Format = stateFormat
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("update state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("update state: %w", err)
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}
