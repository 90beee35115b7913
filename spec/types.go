package spec

import (
	"time"
)

// APIVersion is the version of the fleet repo format and of a rendered Device.
const APIVersion = "shoal/v1"

// Device is the rendered desired state of one device: what the agent converges on.
// It is produced by Render and never edited by hand; its canonical JSON (Canonical)
// and that JSON's sha256 (Hash) identify it.
type Device struct {
	APIVersion  string            `json:"api_version"`
	ID          string            `json:"id"`
	Labels      map[string]string `json:"labels,omitempty"`
	Groups      []string          `json:"groups,omitempty"` // matched groups, in render order
	Apps        []App             `json:"apps,omitempty"`   // sorted by Name
	Release     *Release          `json:"release,omitempty"`
	Hold        bool              `json:"hold,omitempty"` // pause applying container changes
	Network     string            `json:"network"`        // the fleet network apps join by default
	Update      UpdatePolicy      `json:"update"`
	Time        TimePolicy        `json:"time"`
	Attestation AttestationPolicy `json:"attestation"`
	// Rollout is how a commit that changes this spec reaches the device; nil
	// when the fleet declares no rollout for it. It is left out of the
	// canonical JSON and the hash on purpose (see Rollout).
	Rollout *Rollout `json:"-"`
}

// App is one container the device runs.
type App struct {
	Name        string            `json:"name"`
	Image       Image             `json:"image"`
	Command     []string          `json:"command,omitempty"`
	Entrypoint  []string          `json:"entrypoint,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Ports       []Port            `json:"ports,omitempty"`
	Volumes     []Volume          `json:"volumes,omitempty"`
	Networks    []string          `json:"networks,omitempty"` // empty: the fleet network
	Restart     string            `json:"restart"`            // no | always | unless-stopped | on-failure
	Healthcheck *Healthcheck      `json:"healthcheck,omitempty"`
	DependsOn   []string          `json:"depends_on,omitempty"`
	Devices     []string          `json:"devices,omitempty"` // host[:container[:perms]]
	CapAdd      []string          `json:"cap_add,omitempty"`
	CapDrop     []string          `json:"cap_drop,omitempty"`
	User        string            `json:"user,omitempty"`
	ReadOnly    bool              `json:"read_only,omitempty"`
	Memory      int64             `json:"memory,omitempty"` // bytes; 0 = unlimited
	CPUs        float64           `json:"cpus,omitempty"`   // 0 = unlimited
	Logging     Logging           `json:"logging"`
	Labels      map[string]string `json:"labels,omitempty"`
	Drift       string            `json:"drift"`          // revert | alert
	HealthWait  Duration          `json:"health_timeout"` // how long a rollout waits for healthy
}

// Image says which image an app runs and where it comes from when no registry is reachable.
type Image struct {
	Ref    string       `json:"ref"`              // name[:tag][@sha256:digest]
	Source *ImageSource `json:"source,omitempty"` // a tar to load instead of pulling
}

// ImageSource is an image tar in the fleet repo (Path) or at a URL, with its sha256.
type ImageSource struct {
	Path   string `json:"path,omitempty"` // relative to the fleet repo root
	URL    string `json:"url,omitempty"`
	SHA256 string `json:"sha256"`
}

// Port publishes a container port on the host.
type Port struct {
	Host      int    `json:"host"`
	Container int    `json:"container"`
	Protocol  string `json:"protocol"` // tcp | udp
	HostIP    string `json:"host_ip,omitempty"`
}

// Volume mounts a named volume or a host path into the container.
type Volume struct {
	Type     string `json:"type"`   // volume | bind
	Source   string `json:"source"` // volume name or absolute host path
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Healthcheck is the container's health probe, as Docker runs it.
type Healthcheck struct {
	Test        []string `json:"test"` // e.g. ["CMD", "/app", "-health"]
	Interval    Duration `json:"interval"`
	Timeout     Duration `json:"timeout"`
	Retries     int      `json:"retries"`
	StartPeriod Duration `json:"start_period"`
}

// Logging bounds the container's json-file log.
type Logging struct {
	MaxSize  string `json:"max_size"` // e.g. "10m"
	MaxFiles int    `json:"max_files"`
}

// Release is one OS image for the A/B updater.
type Release struct {
	Name       string            `json:"name"` // file name under releases/, without extension
	Version    string            `json:"version"`
	URL        string            `json:"url"` // http(s)://, file:// or a path relative to the fleet repo
	Size       int64             `json:"size"`
	SHA256     string            `json:"sha256"`
	Signature  string            `json:"signature"` // base64, over the release's signed payload (see updater)
	MinVersion string            `json:"min_version,omitempty"`
	Built      time.Time         `json:"built,omitempty"` // build time: a lower bound for the device clock
	PCRs       map[string]string `json:"pcrs,omitempty"`  // PCR index -> expected hex digest (sha256 bank)
	Chunks     *ChunkManifest    `json:"chunks,omitempty"`
	Delta      *Delta            `json:"delta,omitempty"`
}

// Delta points at a chunk index (casync's .caibx) of the release's image and
// the chunk store that holds its chunks, so a device fetches only the chunks
// it lacks. The index's sha256 is signed; where the files are is not: they
// may move to a mirror, a relay or a USB stick.
type Delta struct {
	Index  string `json:"index"`  // http(s)://, file:// or a path relative to the fleet repo
	SHA256 string `json:"sha256"` // of the index file
	Store  string `json:"store"`  // the chunk store: a directory or an http(s) URL
}

// ChunkManifest lets an interrupted download resume from the last verified chunk.
type ChunkManifest struct {
	Size   int64    `json:"size"`   // bytes per chunk; the last may be shorter
	SHA256 []string `json:"sha256"` // one hex digest per chunk of the uncompressed image
}

// UpdatePolicy governs when and how the OS is updated.
type UpdatePolicy struct {
	Hold                  bool        `json:"hold,omitempty"` // no new installs until lifted
	AllowDowngrade        bool        `json:"allow_downgrade,omitempty"`
	Windows               []Window    `json:"windows,omitempty"` // empty: any time
	DownloadOutsideWindow bool        `json:"download_outside_window"`
	TrialTimeout          Duration    `json:"trial_timeout"` // health gate limit after a trial boot
	BootLimit             int         `json:"boot_limit"`    // trial boots before the bootloader falls back
	OfflineOK             bool        `json:"offline_ok,omitempty"`
	Delta                 DeltaPolicy `json:"delta"`
}

// DeltaPolicy governs installs from a release's chunk index.
type DeltaPolicy struct {
	// Enabled uses a release's delta when it has one; nil means yes.
	Enabled *bool `json:"enabled,omitempty"`
	// FallbackShare: when the delta would fetch more than this share of the
	// image (0 to 1), download the full image instead. 1: always the delta;
	// 0: the default, 0.8.
	FallbackShare float64 `json:"fallback_share,omitempty"`
	// Budget bounds the bytes one install may download, delta or full; an
	// install above it waits, reported, until the policy or release changes.
	// 0: no budget.
	Budget Size `json:"budget,omitempty"`
}

// On reports whether deltas are enabled.
func (p DeltaPolicy) On() bool { return p.Enabled == nil || *p.Enabled }

// Share is the fallback share, its default filled in.
func (p DeltaPolicy) Share() float64 {
	if p.FallbackShare <= 0 {
		return 0.8
	}
	return p.FallbackShare
}

// Window is a weekly maintenance window in a time zone, e.g. days [mon, tue], 02:00-04:00 Europe/Berlin.
type Window struct {
	Days     []string `json:"days,omitempty"` // mon..sun; empty = every day
	Start    string   `json:"start"`          // HH:MM
	End      string   `json:"end"`            // HH:MM; may be before Start (crosses midnight)
	Timezone string   `json:"timezone"`       // IANA name
}

// TimePolicy configures clock checking.
type TimePolicy struct {
	Servers []string `json:"servers,omitempty"` // host or host:port
	MaxSkew Duration `json:"max_skew"`
}

// AttestationPolicy says whether and over what the device attests.
type AttestationPolicy struct {
	Required bool  `json:"required,omitempty"`
	PCRs     []int `json:"pcrs,omitempty"` // sha256 bank; the application PCR is added by attest
}
