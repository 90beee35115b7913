package api

import (
	"encoding/json"
	"time"
)

// MaxGrantBytes bounds a grant request body.
const MaxGrantBytes = 16 << 10

// Stable reasons of the grant API and of a device's rollout status.
const (
	// ReasonNotTarget: the device asked for a grant for a commit that is
	// not the one the hub rolls out (refused and recorded).
	ReasonNotTarget = "not-target"
	// ReasonNoRollout: the hub has no rollout running (no --fleet, or the
	// fleet repo is a directory rather than Git).
	ReasonNoRollout = "no-rollout"
)

// Wait reasons: why a device may not converge on a commit yet.
const (
	WaitWave        = "wave-waiting"      // its wave has not opened: an earlier wave is updating or baking
	WaitApproval    = "wave-approval"     // its wave waits for an operator's approval
	WaitBudget      = "disruption-budget" // its wave is open, but its site has as many devices unavailable as it may
	WaitPaused      = "rollout-paused"    // an operator paused the rollout
	WaitHalted      = "rollout-halted"    // a wave missed its success threshold, or the error budget is spent
	WaitAborted     = "rollout-aborted"   // an operator aborted the rollout
	WaitJoining     = "rollout-joining"   // the device is new to the rollout; the hub is placing it in a wave
	WaitUnreachable = "hub-unreachable"   // the device cannot reach the hub and its offline policy is wait
	WaitRefused     = "grant-refused"     // the hub refused the request (not the target commit)
	WaitInvalid     = "grant-invalid"     // the hub's answer was not a grant this device can trust
)

// Rollout states a device reports for the newest commit it knows.
const (
	RolloutWaiting        = "waiting"         // holding the commit: Reason says why
	RolloutGranted        = "granted"         // the hub granted the commit (Grant names the grant)
	RolloutOfflineApplied = "offline-applied" // the hub was unreachable and the offline policy is apply
	RolloutBundle         = "bundle"          // the commit came on a signed USB bundle: the bundle is the authority
)

// GrantRequest asks the hub whether the device may converge on Commit, a
// commit that changes its spec while the fleet declares a rollout. It goes
// over the device's mutual-TLS connection (to the hub or through a relay,
// which forwards it as it is).
type GrantRequest struct {
	APIVersion string `json:"apiVersion"`
	Commit     string `json:"commit"`
	SpecHash   string `json:"specHash"` // the device's render of Commit
	// Applied and AppliedSpec are what the device runs now.
	Applied     string `json:"applied,omitempty"`
	AppliedSpec string `json:"appliedSpec,omitempty"`
	// Nonce is fresh for each request; a grant answering it carries it back,
	// so an old grant cannot be replayed to the device.
	Nonce []byte `json:"nonce"`
}

var hexRE = func(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Validate checks a grant request.
func (r *GrantRequest) Validate() error {
	if r == nil {
		return invalid("grant request: empty")
	}
	if err := checkVersion(r.APIVersion); err != nil {
		return err
	}
	if !hexRE(r.Commit, 64) {
		return invalid("commit %q: want a hex commit id", r.Commit)
	}
	if !hexRE(r.SpecHash, 64) {
		return invalid("specHash %q: want a hex sha256", r.SpecHash)
	}
	if r.Applied != "" && !hexRE(r.Applied, 64) {
		return invalid("applied %q: want a hex commit id", r.Applied)
	}
	if r.AppliedSpec != "" && !hexRE(r.AppliedSpec, 64) {
		return invalid("appliedSpec %q: want a hex sha256", r.AppliedSpec)
	}
	if len(r.Nonce) < 16 || len(r.Nonce) > 64 {
		return invalid("nonce: %d bytes, want 16..64", len(r.Nonce))
	}
	return nil
}

// GrantResponse is the hub's answer: a grant, or why to wait.
type GrantResponse struct {
	APIVersion string     `json:"apiVersion"`
	Grant      *Grant     `json:"grant,omitempty"`
	Wait       *GrantWait `json:"wait,omitempty"`
}

// Validate checks the shape of a grant response (not the grant's signature:
// rollout/grant does that).
func (r *GrantResponse) Validate() error {
	if r == nil {
		return invalid("grant response: empty")
	}
	if err := checkVersion(r.APIVersion); err != nil {
		return err
	}
	if (r.Grant == nil) == (r.Wait == nil) {
		return invalid("grant response: want exactly one of grant and wait")
	}
	if r.Grant != nil && (len(r.Grant.Body) == 0 || len(r.Grant.Body) > 8<<10 || len(r.Grant.Signature) == 0 || len(r.Grant.Signature) > 512) {
		return invalid("grant: body or signature missing or too long")
	}
	if r.Wait != nil && (r.Wait.Reason == "" || len(r.Wait.Message) > 4096) {
		return invalid("wait: reason missing or message too long")
	}
	return nil
}

// Grant is a grant signed by the hub. Body is the JSON of a GrantBody,
// kept as signed; Signature is the hub CA key's ECDSA signature (ASN.1)
// over the sha256 of "shoal/grant/v1\x00" followed by Body. The device
// holds the CA certificate from its enrolment, so it can check a grant
// itself, whoever carried it.
type Grant struct {
	Body      json.RawMessage `json:"body"`
	Signature []byte          `json:"signature"`
}

// GrantBody is what a grant says.
type GrantBody struct {
	Version  int       `json:"version"` // 1
	ID       string    `json:"id"`      // stable per rollout and device: asking again gives the same grant
	Device   string    `json:"device"`
	Commit   string    `json:"commit"`
	SpecHash string    `json:"specHash"`
	Rollout  int64     `json:"rollout"`
	Track    string    `json:"track,omitempty"`
	Wave     string    `json:"wave,omitempty"`
	Why      string    `json:"why"` // wave | revert | urgent | no-rollout
	Nonce    []byte    `json:"nonce"`
	Issued   time.Time `json:"issued"`
}

// GrantWait says why the device must wait, and when to ask again (it is
// also poked when its wave opens).
type GrantWait struct {
	Reason     string        `json:"reason"` // one of the Wait* reasons
	Rollout    int64         `json:"rollout,omitempty"`
	Track      string        `json:"track,omitempty"`
	Wave       string        `json:"wave,omitempty"`
	WaveIndex  int           `json:"waveIndex,omitempty"` // 1-based
	Waves      int           `json:"waves,omitempty"`
	Message    string        `json:"message"`
	RetryAfter time.Duration `json:"retryAfter,omitempty"` // nanoseconds
}

// RolloutStatus is what a device reports about the newest commit it knows
// while the fleet declares a rollout.
type RolloutStatus struct {
	Commit  string `json:"commit"`
	State   string `json:"state"` // waiting | granted | offline-applied | bundle
	Reason  string `json:"reason,omitempty"`
	Track   string `json:"track,omitempty"`
	Wave    string `json:"wave,omitempty"`
	Message string `json:"message,omitempty"`
	Grant   string `json:"grant,omitempty"` // the grant's ID when granted
}

// RolloutAction is an operator's request on a rollout (approve, pause, resume, abort).
type RolloutAction struct {
	APIVersion string `json:"apiVersion"`
	Action     string `json:"action"`           // approve | pause | resume | abort
	Commit     string `json:"commit,omitempty"` // the rollout's commit (default: the current rollout); a prefix will do
	Wave       string `json:"wave,omitempty"`   // approve: the wave (name or 1-based index; default: the next that waits for approval)
	Track      string `json:"track,omitempty"`  // approve: the track (default: every track with that wave)
	Reason     string `json:"reason,omitempty"` // recorded with the action
}

// Validate checks an operator's rollout action.
func (a *RolloutAction) Validate() error {
	if a == nil {
		return invalid("rollout action: empty")
	}
	if err := checkVersion(a.APIVersion); err != nil {
		return err
	}
	switch a.Action {
	case "approve", "pause", "resume", "abort":
	default:
		return invalid("action %q: want approve, pause, resume or abort", a.Action)
	}
	if a.Commit != "" && !hexRE(a.Commit, 64) {
		return invalid("commit %q: want a hex commit id or prefix", a.Commit)
	}
	if len(a.Wave) > 64 || len(a.Track) > 256 || len(a.Reason) > 1024 {
		return invalid("wave, track or reason too long")
	}
	return nil
}

// RolloutView is a rollout as the operator API (shoal rollout status) and
// the status page show it.
type RolloutView struct {
	APIVersion string    `json:"apiVersion"`
	ID         int64     `json:"id"`
	Commit     string    `json:"commit"`
	Status     string    `json:"status"` // running | paused | halted | aborted | done | superseded
	Reason     string    `json:"reason,omitempty"`
	Urgent     bool      `json:"urgent,omitempty"`
	Paused     bool      `json:"paused,omitempty"`  // an operator asked for a pause
	Aborted    bool      `json:"aborted,omitempty"` // an operator aborted it
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	// Now is the hub's time the view was made at (bake time left is from it).
	Now    time.Time          `json:"now"`
	Counts RolloutCounts      `json:"counts"`
	Tracks []RolloutTrackView `json:"tracks"`
	Events []RolloutEventView `json:"events,omitempty"`
}

// RolloutCounts counts devices by their standing on the rollout's commit.
type RolloutCounts struct {
	Members  int `json:"members"`
	Healthy  int `json:"healthy"`
	Failed   int `json:"failed"`
	Pending  int `json:"pending"`
	Admitted int `json:"admitted"`
	Granted  int `json:"granted"`
	// FailedGates counts failed devices by the gate they failed.
	FailedGates map[string]int `json:"failedGates,omitempty"`
}

// RolloutTrackView is one track: devices under one policy, with its waves.
type RolloutTrackView struct {
	Name  string            `json:"name"`
	Waves []RolloutWaveView `json:"waves"`
}

// RolloutWaveView is one wave.
type RolloutWaveView struct {
	Index     int                 `json:"index"` // 1-based
	Name      string              `json:"name"`
	State     string              `json:"state"` // waiting | open | baking | passed | halted
	Approval  bool                `json:"approval,omitempty"`
	Approved  bool                `json:"approved,omitempty"`
	Opened    time.Time           `json:"opened,omitempty"`
	BakeStart time.Time           `json:"bakeStart,omitempty"`
	Ended     time.Time           `json:"ended,omitempty"`
	Bake      time.Duration       `json:"bake"`               // nanoseconds
	BakeLeft  time.Duration       `json:"bakeLeft,omitempty"` // while baking
	Threshold string              `json:"threshold"`
	Note      string              `json:"note,omitempty"`
	Counts    RolloutCounts       `json:"counts"`
	Devices   []RolloutDeviceView `json:"devices,omitempty"`
}

// RolloutDeviceView is one member device.
type RolloutDeviceView struct {
	ID       string   `json:"id"`
	Verdict  string   `json:"verdict"` // pending | healthy | failed
	Gates    []string `json:"gates,omitempty"`
	Admitted bool     `json:"admitted,omitempty"`
	Granted  bool     `json:"granted,omitempty"`
	Why      string   `json:"why,omitempty"`  // wave | revert | urgent
	Flag     string   `json:"flag,omitempty"` // ungranted
}

// RolloutEventView is one thing that happened in a rollout.
type RolloutEventView struct {
	Time    time.Time `json:"time"`
	Device  string    `json:"device,omitempty"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
}
