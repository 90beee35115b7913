package api

import "time"

// Status is one status report from a device. The agent numbers its reports
// with Seq, starting at 1 and increasing by one per report; the hub stores
// each (device, Seq) once, so a resent report is a harmless duplicate, and
// the device's current state is the report with the highest Seq.
//
// The device is identified by its client certificate; DeviceID is echoed for
// logs and must match the certificate when set.
type Status struct {
	APIVersion string    `json:"apiVersion"`
	DeviceID   string    `json:"deviceID,omitempty"`
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"` // device clock; see Clock.Trusted
	Agent      string    `json:"agent,omitempty"`
	// Groups are the fleet groups the device's render matched; the hub
	// uses them to target `shoal poke --group`.
	Groups []string `json:"groups,omitempty"`
	// Labels are the device's labels from its devices/<id> file.
	Labels map[string]string `json:"labels,omitempty"`
	// Stages are what each stage of the last pass said, in order.
	Stages []StageStatus `json:"stages,omitempty"`
	// Resources are the device's load, memory, disks and uptime at the pass.
	Resources *Resources `json:"resources,omitempty"`

	// State summarises the device for the fleet page.
	State State `json:"state"`

	Commit  CommitStatus  `json:"commit"`
	Apps    []AppStatus   `json:"apps,omitempty"`
	Update  *UpdateStatus `json:"update,omitempty"`
	Clock   *ClockStatus  `json:"clock,omitempty"`
	Attest  *AttestStatus `json:"attest,omitempty"`
	Problem *Problem      `json:"problem,omitempty"` // why the last pass did not converge
	Offline bool          `json:"offline,omitempty"` // work done from a USB bundle, reported late
	// Rollout is the device's standing on the newest commit it knows, while
	// the fleet declares a rollout: waiting for a grant (and why), granted,
	// or applied without one under the offline policy. A device holding a
	// commit still reports the state of the commit it runs.
	Rollout *RolloutStatus `json:"rollout,omitempty"`
}

// State is a device's summary state. It is the one vocabulary of device
// states: the agent reports it, the hub stores it, `shoal fleet status
// --state` filters on it and the status page names its chips and its table's
// State column with it.
type State string

// Device states.
const (
	StateConverged State = "converged" // running the applied commit, every stage converged
	StateUpdating  State = "updating"  // applying a commit or an OS update
	StateDegraded  State = "degraded"  // running the applied commit, but an app is unhealthy or has drifted
	StateStalled   State = "stalled"   // needs a person: invalid spec, bad signature, a version rolled back
	StateWaiting   State = "waiting"   // retrying: network, Docker daemon, hub, a hold or window
)

// States lists every valid State, in the order people are shown them.
var States = []State{StateConverged, StateUpdating, StateDegraded, StateStalled, StateWaiting}

var stateText = map[State][2]string{
	StateConverged: {"Converged", "runs the applied commit; every stage converged"},
	StateUpdating:  {"Updating", "applying a new commit or an OS update"},
	StateDegraded:  {"Degraded", "runs the applied commit, but an app is unhealthy or changed outside Shoal"},
	StateStalled:   {"Stalled", "needs a person: the newest commit or version was refused or rolled back; a new commit is needed"},
	StateWaiting:   {"Waiting", "will retry on its own: the network, the Docker daemon or the hub, a hold or an update window"},
}

// Valid reports whether s is one of States.
func (s State) Valid() bool {
	_, ok := stateText[s]
	return ok
}

// Label is the state's name as a heading or chip shows it ("Stalled").
func (s State) Label() string { return stateText[s][0] }

// Meaning says in a few words what the state means for an operator.
func (s State) Meaning() string { return stateText[s][1] }

// CommitStatus keeps the last attempted commit apart from the last applied one.
type CommitStatus struct {
	Attempted string `json:"attempted,omitempty"`
	Applied   string `json:"applied,omitempty"`
	SpecHash  string `json:"specHash,omitempty"` // spec.Device.Hash() of the applied render
}

// StageStatus is one stage's result in a pass (containers, trust, update).
type StageStatus struct {
	Name      string `json:"name"`
	Ran       bool   `json:"ran"` // false: nothing new, the stage was not called
	Converged bool   `json:"converged"`
	Summary   string `json:"summary,omitempty"`
	Error     string `json:"error,omitempty"`
}

// Resources are the device's resources; byte counts, 0 where unreadable.
type Resources struct {
	Load1           float64 `json:"load1"`
	CPUs            int     `json:"cpus"`
	MemTotal        uint64  `json:"memTotal"`
	MemAvailable    uint64  `json:"memAvailable"`
	StateDiskTotal  uint64  `json:"stateDiskTotal,omitempty"`
	StateDiskFree   uint64  `json:"stateDiskFree,omitempty"`
	DockerDiskTotal uint64  `json:"dockerDiskTotal,omitempty"`
	DockerDiskFree  uint64  `json:"dockerDiskFree,omitempty"`
	UptimeSeconds   int64   `json:"uptimeSeconds"`
	AgentRSS        uint64  `json:"agentRSS"`
}

// AppStatus is one container app.
type AppStatus struct {
	Name    string `json:"name"`
	Image   string `json:"image,omitempty"`
	State   string `json:"state"`            // running | exited | missing | starting
	Health  string `json:"health,omitempty"` // healthy | unhealthy | starting | none
	Drift   string `json:"drift,omitempty"`  // what changed outside Shoal, if anything
	Message string `json:"message,omitempty"`
	// Restarts counts the container's restarts by the Engine.
	Restarts int `json:"restarts,omitempty"`
	// Rollback explains why the app's last rollout was rolled back, if it was.
	Rollback *Rollback `json:"rollback,omitempty"`
}

// UpdateStatus is the A/B updater's state.
type UpdateStatus struct {
	State    string    `json:"state"` // idle | downloading | installed | rebooting | trial | committed | rolled-back
	Slot     string    `json:"slot,omitempty"`
	Version  string    `json:"version,omitempty"` // running release version
	Target   string    `json:"target,omitempty"`  // release being installed
	Progress float64   `json:"progress,omitempty"`
	Since    time.Time `json:"since,omitempty"`
	Rollback *Rollback `json:"rollback,omitempty"`
	// Delta is how the install in flight, or the last one, got its image
	// when the release has a chunk index.
	Delta *DeltaStatus `json:"delta,omitempty"`
}

// DeltaStatus says how an OS install of a release with a chunk index gets its
// image: the bytes it planned to fetch before it fetched any, against the full
// image download, and why it downloads the full image when it does.
type DeltaStatus struct {
	Mode    string `json:"mode"`              // delta | full
	Why     string `json:"why,omitempty"`     // why the full image: a machine reason (delta-above-share, …)
	Image   int64  `json:"image"`             // bytes of the image
	Fetch   int64  `json:"fetch"`             // bytes planned to fetch
	Full    int64  `json:"full"`              // bytes of the full image download
	Seeded  int64  `json:"seeded,omitempty"`  // bytes from the running slot
	InPlace int64  `json:"inPlace,omitempty"` // bytes already in the target slot
	Fetched int64  `json:"fetched"`           // bytes downloaded so far
	Refused int    `json:"refused,omitempty"` // chunks refused as bad and fetched again
}

// Saved is the share of the full download a delta does not fetch; 0 for a
// full download.
func (d *DeltaStatus) Saved() float64 {
	if d == nil || d.Mode != "delta" || d.Full <= 0 {
		return 0
	}
	return 1 - float64(d.Fetch)/float64(d.Full)
}

// Rollback explains the last rollback: the failed check, exit code and last
// log lines, and when it happened. The agent repeats it in every report for
// as long as the rolled-back version is the one the spec asks for.
type Rollback struct {
	Check    string    `json:"check"`
	ExitCode int       `json:"exitCode,omitempty"`
	LogTail  []string  `json:"logTail,omitempty"`
	Message  string    `json:"message,omitempty"`
	Time     time.Time `json:"time,omitzero"` // device clock; zero if not known
}

// ClockStatus is the device's view of its clock.
type ClockStatus struct {
	// State is ok, skewed, unknown (no time server answered) or untrusted
	// (the clock is below what verified data says it must be at least).
	State   string        `json:"state,omitempty"`
	Trusted bool          `json:"trusted"`
	Skew    time.Duration `json:"skew,omitempty"` // nanoseconds against NTP; 0 if unmeasured
	Source  string        `json:"source,omitempty"`
}

// AttestStatus is the device's last attestation as it knows it.
type AttestStatus struct {
	OK      bool      `json:"ok"`
	Time    time.Time `json:"time,omitempty"`
	Reasons []string  `json:"reasons,omitempty"`
	Weak    bool      `json:"weak,omitempty"` // software key, no TPM
}

// Problem is a typed error from the agent loop.
type Problem struct {
	Kind    string `json:"kind"`   // stalled | waiting (the State the problem puts the device in)
	Reason  string `json:"reason"` // stable machine reason, e.g. spec-invalid
	Message string `json:"message"`
}

// Validate checks a report before it is stored.
func (s *Status) Validate() error {
	if s == nil {
		return invalid("status: empty")
	}
	if err := checkVersion(s.APIVersion); err != nil {
		return err
	}
	if s.DeviceID != "" && !ValidDeviceID(s.DeviceID) {
		return invalid("deviceID %q", s.DeviceID)
	}
	if s.Seq == 0 || s.Seq > 1<<62 {
		return invalid("seq %d: must be in 1..2^62", s.Seq)
	}
	if s.Time.IsZero() {
		return invalid("time: missing")
	}
	if !s.State.Valid() {
		return invalid("state %q", s.State)
	}
	if len(s.Groups) > 100 {
		return invalid("groups: %d entries, at most 100", len(s.Groups))
	}
	if len(s.Apps) > 1000 {
		return invalid("apps: %d entries, at most 1000", len(s.Apps))
	}
	for i, a := range s.Apps {
		if a.Name == "" {
			return invalid("apps[%d]: name missing", i)
		}
	}
	if s.Problem != nil && s.Problem.Kind != "stalled" && s.Problem.Kind != "waiting" {
		return invalid("problem.kind %q: want stalled or waiting", s.Problem.Kind)
	}
	return nil
}

// StatusAck is the hub's answer to a status report.
type StatusAck struct {
	APIVersion string `json:"apiVersion"`
	Seq        uint64 `json:"seq"`
	Duplicate  bool   `json:"duplicate,omitempty"` // this Seq was already stored
	Latest     uint64 `json:"latest"`              // highest Seq the hub holds for the device
}
