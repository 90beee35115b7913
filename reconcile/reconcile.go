// Package reconcile converges the containers of one device on the apps its
// rendered spec declares, through the Docker Engine API: Observe what runs,
// Plan the actions (pure data, each with a reason a person reads), Apply them
// with a health-gated rollout and rollback, and Watch Docker events for drift.
//
// Everything it creates carries its labels; it never touches a container it does
// not own. The agent and the `shoal plan` command import it.
package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// Labels Shoal puts on what it creates. Ownership is decided by LabelManagedBy
// and LabelPrefix together, so several simulated devices can share one Engine.
const (
	LabelManagedBy = "io.shoal.managed-by" // always "shoal"
	LabelPrefix    = "io.shoal.prefix"     // Options.Prefix of the reconciler that owns it
	LabelApp       = "io.shoal.app"        // app name
	LabelHash      = "io.shoal.hash"       // per-app spec hash; a change means recreate
	LabelSpec      = "io.shoal.spec"       // the app's spec JSON, to explain what changed
	managedByValue = "shoal"
)

// Sentinel errors by what the caller does next.
var (
	// ErrEngine means the Docker Engine was unreachable or answered errors: retry
	// later. Its Reason is "engine-unavailable".
	ErrEngine error = &reasonError{"docker engine unavailable", ReasonEngineUnavailable}
	// ErrImageVerify means an image tar did not match its sha256: stalled until the spec changes.
	ErrImageVerify = errors.New("image verification failed")
	// ErrUnhealthy means a new version did not become healthy in time and was rolled back.
	ErrUnhealthy = errors.New("not healthy in time")
	// ErrNotOwned means a container name Shoal needs belongs to a container it does not own.
	ErrNotOwned = errors.New("container not owned by shoal")
)

// reasonError is a sentinel that also carries a stable machine reason.
type reasonError struct{ msg, reason string }

func (e *reasonError) Error() string  { return e.msg }
func (e *reasonError) Reason() string { return e.reason }

// Engine is the part of the Docker Engine API the reconciler calls.
// *client.Client implements it.
type Engine interface {
	Ping(ctx context.Context) (types.Ping, error)
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerCreate(ctx context.Context, config *container.Config, hostConfig *container.HostConfig, networkingConfig *network.NetworkingConfig, platform *ocispec.Platform, name string) (container.CreateResponse, error)
	ContainerStart(ctx context.Context, id string, options container.StartOptions) error
	ContainerStop(ctx context.Context, id string, options container.StopOptions) error
	ContainerRemove(ctx context.Context, id string, options container.RemoveOptions) error
	ContainerRename(ctx context.Context, id, newName string) error
	ContainerUnpause(ctx context.Context, id string) error
	ContainerLogs(ctx context.Context, id string, options container.LogsOptions) (io.ReadCloser, error)
	ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, ref string, options image.PullOptions) (io.ReadCloser, error)
	ImageLoad(ctx context.Context, input io.Reader, opts ...client.ImageLoadOption) (image.LoadResponse, error)
	ImageRemove(ctx context.Context, ref string, options image.RemoveOptions) ([]image.DeleteResponse, error)
	NetworkList(ctx context.Context, options network.ListOptions) ([]network.Summary, error)
	NetworkInspect(ctx context.Context, networkID string, options network.InspectOptions) (network.Inspect, error)
	NetworkCreate(ctx context.Context, name string, options network.CreateOptions) (network.CreateResponse, error)
	NetworkConnect(ctx context.Context, networkID, containerID string, config *network.EndpointSettings) error
	NetworkRemove(ctx context.Context, networkID string) error
	VolumeInspect(ctx context.Context, volumeID string) (volume.Volume, error)
	Events(ctx context.Context, options events.ListOptions) (<-chan events.Message, <-chan error)
}

// NewClient connects to the Engine named by the environment (DOCKER_HOST or the
// default socket), negotiating the API version (Docker 20.10 speaks 1.41).
func NewClient() (*client.Client, error) {
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return c, nil
}

// Options configure a Reconciler. The zero value works but for Prefix, which
// defaults to "shoal-".
type Options struct {
	// Prefix starts every container and named volume name and scopes
	// ownership, so several simulated devices can share one Engine.
	Prefix string
	// RepoRoot is the fleet repo checkout that image tar paths are relative to.
	RepoRoot fs.FS
	// ImageCache holds downloaded image tars and the record of images Shoal loaded
	// (pruned when no longer referenced). Empty: no URL sources, no pruning record.
	ImageCache string
	// StateFile remembers, across restarts, which version of each app was applied
	// and which failed its health gate (so it is not retried blindly). Empty:
	// ImageCache/reconcile.json, or memory only when ImageCache is empty too.
	StateFile string
	// Labels are added to everything created (containers, networks, volumes).
	Labels map[string]string
	// Logger gets one line per action; nil discards.
	Logger *slog.Logger
	// Registerer, if set, gets the shoal_reconcile_* metrics.
	Registerer prometheus.Registerer
	// HTTPClient downloads image tars given by URL; nil uses http.DefaultClient.
	HTTPClient *http.Client
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Parallel bounds concurrent app rollouts; 0 means 8.
	Parallel int
	// StopTimeout is the grace period given to a container being replaced; 0 means 10s.
	StopTimeout time.Duration
	// StableFor is how long a container with no healthcheck must keep running to
	// count as healthy; 0 means 1s.
	StableFor time.Duration
	// DefaultHealthWait applies when an app's healthTimeout is zero; 0 means 60s.
	DefaultHealthWait time.Duration
	// Debounce coalesces bursts of Docker events in Watch; 0 means 2s.
	Debounce time.Duration
	// Retry is the backoff for Engine errors in Reconcile: first wait, cap, attempts.
	// Zero values mean 500ms, 30s, 5.
	RetryInitial, RetryMax time.Duration
	RetryAttempts          int
}

// Reconciler converges one device's containers. It is safe for one pass at a
// time; Watch may run concurrently with passes.
type Reconciler struct {
	eng     Engine
	o       Options
	log     *slog.Logger
	metrics *metrics
	images  *imageStore

	mu      sync.Mutex
	applied map[string]string // app -> spec hash last applied (to tell "removed by hand" from "new")
	failed  map[string]string // app -> spec hash that failed its health gate and was rolled back
	// rollbacks say when and why each failed hash was rolled back; a record
	// lives as long as its app's entry in failed.
	rollbacks map[string]Rollback
}

// Rollback is what Shoal keeps of an app version that failed its health
// gate and was rolled back, so every later pass can still say when and why.
type Rollback struct {
	Hash     string    `json:"hash"` // the spec hash of the version rolled back
	Time     time.Time `json:"time"`
	Reason   string    `json:"reason"` // the AppError's code, e.g. health-failed
	ExitCode int       `json:"exit_code"`
	Logs     []string  `json:"logs,omitempty"` // the failed container's last lines
	Message  string    `json:"message"`        // what failed, e.g. "exited with code 3"
}

// New returns a Reconciler working through eng.
func New(eng Engine, o Options) (*Reconciler, error) {
	if o.Prefix == "" {
		o.Prefix = "shoal-"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.StableFor <= 0 {
		o.StableFor = time.Second
	}
	if o.DefaultHealthWait <= 0 {
		o.DefaultHealthWait = 60 * time.Second
	}
	if o.Debounce <= 0 {
		o.Debounce = 2 * time.Second
	}
	if o.RetryInitial <= 0 {
		o.RetryInitial = 500 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 30 * time.Second
	}
	if o.RetryAttempts <= 0 {
		o.RetryAttempts = 5
	}
	if o.StateFile == "" && o.ImageCache != "" {
		o.StateFile = filepath.Join(o.ImageCache, "reconcile.json")
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	r := &Reconciler{
		eng:       eng,
		o:         o,
		log:       o.Logger.With("component", "reconcile", "prefix", o.Prefix),
		metrics:   m,
		images:    &imageStore{dir: o.ImageCache},
		applied:   map[string]string{},
		failed:    map[string]string{},
		rollbacks: map[string]Rollback{},
	}
	r.loadMemory()
	return r, nil
}

// stateVersion versions the StateFile format.
const stateVersion = 1

type memoryFile struct {
	Version int               `json:"version"`
	Applied map[string]string `json:"applied"` // app -> spec hash
	Failed  map[string]string `json:"failed"`  // app -> spec hash rolled back
	// Rollbacks came later in version 1: a file without them reads as
	// rollbacks whose time and cause are not known.
	Rollbacks map[string]Rollback `json:"rollbacks,omitempty"`
}

// loadMemory reads StateFile. A missing or damaged file starts empty: it only
// refines drift reports and retries, and must never stop the agent.
func (r *Reconciler) loadMemory() {
	if r.o.StateFile == "" {
		return
	}
	b, err := os.ReadFile(r.o.StateFile)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("read reconcile state; starting empty", "err", err)
		}
		return
	}
	var m memoryFile
	if err := json.Unmarshal(b, &m); err != nil || m.Version != stateVersion {
		r.log.Warn("reconcile state unreadable; starting empty", "file", r.o.StateFile, "err", err, "version", m.Version)
		return
	}
	for k, v := range m.Applied {
		r.applied[k] = v
	}
	for k, v := range m.Failed {
		r.failed[k] = v
	}
	for k, v := range m.Rollbacks {
		if r.failed[k] == v.Hash {
			r.rollbacks[k] = v
		}
	}
}

// remember changes the applied/failed memory under r.mu and persists it
// when it changed. A rollback record goes with its app's failed entry.
func (r *Reconciler) remember(f func(applied, failed map[string]string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a0, f0, rb0 := cloneMap(r.applied), cloneMap(r.failed), maps.Clone(r.rollbacks)
	f(r.applied, r.failed)
	for app, rb := range r.rollbacks {
		if r.failed[app] != rb.Hash {
			delete(r.rollbacks, app)
		}
	}
	same := func(a, b Rollback) bool { return a.Hash == b.Hash && a.Time.Equal(b.Time) }
	if r.o.StateFile == "" || (maps.Equal(a0, r.applied) && maps.Equal(f0, r.failed) && maps.EqualFunc(rb0, r.rollbacks, same)) {
		return
	}
	b, err := json.Marshal(memoryFile{Version: stateVersion, Applied: r.applied, Failed: r.failed, Rollbacks: r.rollbacks})
	if err == nil {
		if err = os.MkdirAll(filepath.Dir(r.o.StateFile), 0o755); err == nil {
			err = atomicfile.WriteFile(r.o.StateFile, b, 0o644)
		}
	}
	if err != nil {
		r.log.Warn("write reconcile state", "err", err)
	}
}

// containerName is the Docker name of app's container.
func (r *Reconciler) containerName(app string) string { return r.o.Prefix + app }

// volumeName is the Docker name of a named volume the spec calls source:
// prefixed like the containers, so two devices sharing one Engine never
// share a volume.
func (r *Reconciler) volumeName(source string) string { return r.o.Prefix + source }

// asideName is where the running version waits while its replacement proves healthy.
func (r *Reconciler) asideName(app string) string { return r.o.Prefix + app + "--prev" }

// ownLabels are the labels on everything this reconciler creates.
func (r *Reconciler) ownLabels() map[string]string {
	l := map[string]string{LabelManagedBy: managedByValue, LabelPrefix: r.o.Prefix}
	for k, v := range r.o.Labels {
		l[k] = v
	}
	return l
}
