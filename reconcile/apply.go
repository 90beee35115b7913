package reconcile

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/shoalfleet/shoal/spec"
)

// AppError is a failure of one app, naming the spec field at fault and a
// stable machine code (image-verify-failed, port-conflict, health-failed, ...).
// The agent reads Reason and Stalled to decide whether to retry.
type AppError struct {
	App   string
	Field string
	Code  string
	Err   error
}

// Error names the app, then the field, then what went wrong.
func (e *AppError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("app %q: %s: %v", e.App, e.Field, e.Err)
	}
	return fmt.Sprintf("app %q: %v", e.App, e.Err)
}

// Unwrap gives errors.Is access to ErrUnhealthy, ErrImageVerify, ErrEngine and the Engine's error.
func (e *AppError) Unwrap() error { return e.Err }

// Reason is the stable machine reason for status reports.
func (e *AppError) Reason() string { return e.Code }

// Machine reasons an AppError carries (its Code), stable for status reports;
// each is explained in docs/guide/troubleshooting.md.
const (
	ReasonSpecInvalid          = "spec-invalid"           // the spec cannot be turned into a container (the Engine refused an argument, a bad image source)
	ReasonImageVerifyFailed    = "image-verify-failed"    // an image tar's sha256 differs from image.source.sha256
	ReasonImagePullFailed      = "image-pull-failed"      // pulling image.ref from its registry failed
	ReasonImageDownloadFailed  = "image-download-failed"  // fetching image.source.url failed
	ReasonImageLoadFailed      = "image-load-failed"      // the Engine refused the image tar
	ReasonImageMissing         = "image-missing"          // the image tar or the image it should provide is not there
	ReasonHealthFailed         = "health-failed"          // the new version did not become healthy in time and was rolled back
	ReasonDependencyFailed     = "dependency-failed"      // an app in depends_on is not healthy, or cannot be planned
	ReasonCreateFailed         = "create-failed"          // the Engine refused to create the container
	ReasonStartFailed          = "start-failed"           // the Engine refused to start the container
	ReasonNameConflict         = "name-conflict"          // a container Shoal does not own holds the name
	ReasonPortConflict         = "port-conflict"          // a host port is taken
	ReasonMountFailed          = "mount-failed"           // a bind source does not exist or a mount is invalid
	ReasonDeviceMissing        = "device-missing"         // a host device in devices is not there
	ReasonNetworkMissing       = "network-missing"        // a network the app joins does not exist
	ReasonNetworkCreateFailed  = "network-create-failed"  // a network could not be created
	ReasonNetworkConnectFailed = "network-connect-failed" // the container could not join a network
	ReasonUserInvalid          = "user-invalid"           // the image has no such user
	ReasonRemoveFailed         = "remove-failed"          // a container no longer wanted could not be removed
	ReasonEngineUnavailable    = "engine-unavailable"     // the Docker Engine did not answer
	ReasonEngineError          = "engine-error"           // the Engine answered an error while inspecting, renaming or stopping
	ReasonStateWriteFailed     = "state-write-failed"     // the reconciler's state file could not be written
	ReasonCanceled             = "canceled"               // the pass was cancelled (the agent is stopping)
)

// stalledCodes need a change to the spec (or a person) before a retry can help.
var stalledCodes = map[string]bool{
	ReasonSpecInvalid: true, ReasonImageVerifyFailed: true, ReasonHealthFailed: true,
	ReasonNameConflict: true, ReasonDependencyFailed: false,
}

// Stalled reports whether retrying the same spec cannot help.
func (e *AppError) Stalled() bool { return stalledCodes[e.Code] }

// MarshalJSON writes the error as {app, field, reason, message} for status reports.
func (e *AppError) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		App     string `json:"app"`
		Field   string `json:"field,omitempty"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}{e.App, e.Field, e.Code, e.Error()})
}

// Outcomes of one app in a pass.
const (
	OutcomeUnchanged  = "unchanged"
	OutcomeCreated    = "created"
	OutcomeUpdated    = "updated"
	OutcomeStarted    = "started"
	OutcomeRestored   = "restored"
	OutcomeRemoved    = "removed"
	OutcomeRolledBack = "rolled-back" // the new version failed; the previous one runs again
	OutcomeFailed     = "failed"
	OutcomeHeld       = "held"
	OutcomeDrift      = "drift" // changed outside Shoal and left alone (policy alert)
)

// AppResult is what happened to one app, ready to copy into a status report.
type AppResult struct {
	App          string    `json:"app"`
	Image        string    `json:"image,omitempty"` // the image ref the spec names
	Action       Kind      `json:"action"`
	Reason       string    `json:"reason"` // why the action was planned
	Outcome      string    `json:"outcome"`
	State        string    `json:"state,omitempty"`
	Health       string    `json:"health,omitempty"`
	RestartCount int       `json:"restart_count"`
	ExitCode     int       `json:"exit_code"`
	Drift        string    `json:"drift,omitempty"` // what changed outside Shoal, if anything
	Error        *AppError `json:"error,omitempty"`
	Logs         []string  `json:"logs,omitempty"` // last lines of the failed version, on rollback or failure
	// Rollback is set while the spec's version of the app stays rolled back:
	// on the pass that rolled it back and on every pass after, until the
	// spec changes. It says when, and keeps the exit code and log lines.
	Rollback *Rollback `json:"rollback,omitempty"`
}

// Result is the outcome of Apply.
type Result struct {
	Device string      `json:"device"`
	Held   bool        `json:"held,omitempty"`
	Plan   *Plan       `json:"plan"`
	Apps   []AppResult `json:"apps"`
	Drift  []Drift     `json:"drift,omitempty"`
	Errors []*AppError `json:"errors,omitempty"` // failures not tied to an app's rollout (networks, pruning, problems)
}

// Converged reports whether every app is as the spec says: nothing failed,
// nothing held, no drift left alone.
func (res *Result) Converged() bool {
	if res.Held || len(res.Errors) > 0 {
		return false
	}
	for _, a := range res.Apps {
		if a.Error != nil || a.Outcome == OutcomeDrift {
			return false
		}
	}
	return true
}

// Summary is one line for logs and status, e.g. "3 apps: 1 updated, 2 unchanged".
func (res *Result) Summary() string {
	counts := map[string]int{}
	for _, a := range res.Apps {
		counts[a.Outcome]++
	}
	var parts []string
	for _, o := range sortedKeys(counts) {
		parts = append(parts, fmt.Sprintf("%d %s", counts[o], o))
	}
	s := fmt.Sprintf("%d apps", len(res.Apps))
	if len(parts) > 0 {
		s += ": " + strings.Join(parts, ", ")
	}
	if res.Held {
		s += fmt.Sprintf(" (held; %d change(s) pending)", res.Plan.Changes())
	}
	if len(res.Drift) > 0 {
		s += fmt.Sprintf("; %d drifted", len(res.Drift))
	}
	return s
}

// Err joins every app failure, or is nil when all apps converged.
func (res *Result) Err() error {
	var errs []error
	for _, e := range res.Errors {
		errs = append(errs, e)
	}
	for _, a := range res.Apps {
		if a.Error != nil {
			errs = append(errs, a.Error)
		}
	}
	return errors.Join(errs...)
}

// logLines is how many lines of a failed container's log a result carries.
const logLines = 20

// Apply executes p for dev. Apps run in parallel within depends_on order; one
// app's failure does not stop the others. With p.Held nothing is changed.
func (r *Reconciler) Apply(ctx context.Context, dev *spec.Device, p *Plan) *Result {
	return r.apply(ctx, dev, p, r.o.RepoRoot)
}

// apply is Apply with image tar paths resolved in repo.
func (r *Reconciler) apply(ctx context.Context, dev *spec.Device, p *Plan, repo fs.FS) *Result {
	res := &Result{Device: dev.ID, Held: p.Held, Plan: p, Drift: p.Drift, Errors: p.Problems}
	byApp := map[string][]Action{}
	var order []string
	for _, a := range p.Actions {
		if a.App == "" || a.Kind == KindRemove && dev.App(a.App) == nil {
			continue
		}
		if _, ok := byApp[a.App]; !ok {
			order = append(order, a.App)
		}
		byApp[a.App] = append(byApp[a.App], a)
	}
	if p.Held {
		for _, name := range order {
			acts := byApp[name]
			last := acts[len(acts)-1]
			ar := AppResult{App: name, Image: dev.App(name).Image.Ref, Action: last.Kind, Reason: last.Reason, Outcome: OutcomeHeld}
			if c := p.observed[name]; c != nil {
				ar.State, ar.Health, ar.RestartCount, ar.ExitCode = c.State, c.Health, c.RestartCount, c.ExitCode
			}
			res.Apps = append(res.Apps, ar)
		}
		res.finish()
		return res
	}
	var mu sync.Mutex
	addErr := func(e *AppError) { mu.Lock(); res.Errors = append(res.Errors, e); mu.Unlock() }

	// Networks, then removals of unwanted containers (in parallel), then apps.
	for _, n := range p.dupNets {
		if err := r.dedupeNetwork(ctx, n); err != nil {
			addErr(&AppError{App: "", Field: "network", Code: ReasonNetworkCreateFailed, Err: err})
		}
	}
	for _, a := range p.Actions {
		if a.Kind == KindNetwork {
			if err := r.createNetwork(ctx, a.Target); err != nil {
				addErr(&AppError{App: "", Field: "network", Code: ReasonNetworkCreateFailed, Err: err})
			}
		}
	}
	var wg sync.WaitGroup
	for _, a := range p.Actions {
		if a.Kind != KindRemove || dev.App(a.App) != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ar := AppResult{App: a.App, Action: a.Kind, Reason: a.Reason, Outcome: OutcomeRemoved}
			if err := r.removeContainer(ctx, a.ContainerID); err != nil {
				ar.Outcome = OutcomeFailed
				ar.Error = &AppError{App: a.App, Code: ReasonRemoveFailed, Err: err}
			} else {
				r.remember(func(applied, failed map[string]string) {
					delete(applied, a.App)
					delete(failed, a.App)
				})
			}
			r.metrics.actions.WithLabelValues(string(a.Kind)).Inc()
			mu.Lock()
			res.Apps = append(res.Apps, ar)
			mu.Unlock()
		}()
	}
	wg.Wait()

	done := map[string]chan struct{}{}
	okApp := map[string]bool{}
	for _, name := range order {
		done[name] = make(chan struct{})
	}
	sem := make(chan struct{}, r.o.Parallel)
	for _, name := range order {
		app := dev.App(name)
		acts := byApp[name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[name])
			ar := r.applyApp(ctx, dev, repo, app, acts, p.hashes[name], p.observed[name], done, okApp, &mu, sem)
			mu.Lock()
			okApp[name] = ar.Error == nil
			res.Apps = append(res.Apps, ar)
			mu.Unlock()
		}()
	}
	wg.Wait()

	// Cleanup last, once no container of ours uses what goes. A failure here
	// (an image or network still used by a container Shoal does not own) is
	// logged and retried on a later pass; it harms no app.
	for _, a := range p.Actions {
		var err error
		switch a.Kind {
		case KindPrune:
			err = r.prune(ctx, a.Target)
		case KindNetRm:
			if err = r.eng.NetworkRemove(ctx, a.Target); cerrdefs.IsNotFound(err) {
				err = nil
			}
		default:
			continue
		}
		if err != nil {
			r.log.Warn("cleanup", "action", a.Kind, "target", a.Target, "err", err)
			continue
		}
		r.metrics.actions.WithLabelValues(string(a.Kind)).Inc()
	}
	res.finish()
	return res
}

// finish sorts the apps and attaches each app's drift.
func (res *Result) finish() {
	sort.Slice(res.Apps, func(i, j int) bool { return res.Apps[i].App < res.Apps[j].App })
	for _, d := range res.Drift {
		for i := range res.Apps {
			if res.Apps[i].App == d.App {
				res.Apps[i].Drift = d.What
			}
		}
	}
}

// applyApp waits for app's dependencies, then runs its actions.
func (r *Reconciler) applyApp(ctx context.Context, dev *spec.Device, repo fs.FS, app *spec.App, acts []Action, hash string, observed *Container,
	done map[string]chan struct{}, okApp map[string]bool, mu *sync.Mutex, sem chan struct{}) AppResult {
	main := acts[len(acts)-1]
	ar := AppResult{App: app.Name, Image: app.Image.Ref, Action: main.Kind, Reason: main.Reason}
	for _, d := range app.DependsOn {
		ch, ok := done[d]
		if !ok {
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			ar.Outcome, ar.Error = OutcomeFailed, &AppError{App: app.Name, Code: ReasonCanceled, Err: ctx.Err()}
			return ar
		}
		mu.Lock()
		depOK := okApp[d]
		mu.Unlock()
		if !depOK {
			ar.Outcome = OutcomeFailed
			ar.Error = &AppError{App: app.Name, Field: "depends_on", Code: ReasonDependencyFailed, Err: fmt.Errorf("dependency %q is not healthy", d)}
			return ar
		}
	}
	if main.Kind == KindKeep {
		ar.Outcome = OutcomeUnchanged
		switch {
		case strings.HasPrefix(main.Reason, reasonDriftAlert):
			ar.Outcome = OutcomeDrift
		case main.Reason == reasonFailedBefore:
			// The spec's version is not running: say so on every pass until
			// the spec changes, with when and why it was rolled back.
			ar.Outcome = OutcomeRolledBack
			what := "this version was rolled back"
			if rb, ok := r.rollbackOf(app.Name, hash); ok {
				ar.Rollback = &rb
				what = fmt.Sprintf("this version was rolled back at %s (%s)", rb.Time.UTC().Format(time.RFC3339), rb.Message)
			}
			ar.Error = &AppError{App: app.Name, Field: "healthcheck", Code: ReasonHealthFailed,
				Err: fmt.Errorf("%w: %s; the previous one keeps running until the spec changes", ErrUnhealthy, what)}
		}
		if len(acts) == 1 {
			// Report what Observe saw: a no-op pass makes no further Engine calls.
			if c := observed; c != nil {
				ar.State, ar.Health, ar.RestartCount, ar.ExitCode = c.State, c.Health, c.RestartCount, c.ExitCode
			}
			return ar
		}
	}
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		ar.Outcome, ar.Error = OutcomeFailed, &AppError{App: app.Name, Code: ReasonCanceled, Err: ctx.Err()}
		return ar
	}
	// The slot bounds concurrent Engine work; it is given back while waiting for health.
	release := sync.OnceFunc(func() { <-sem })
	defer release()
	log := r.log.With("app", app.Name)
	for _, a := range acts {
		if a.Kind != KindKeep {
			log.Info("apply", "action", a.Kind, "reason", a.Reason)
			r.metrics.actions.WithLabelValues(string(a.Kind)).Inc()
		}
		if a.Drift {
			r.metrics.drift.Inc()
		}
		var err error
		var id string
		switch a.Kind {
		case KindPull, KindLoad:
			err = r.ensureImage(ctx, app, a.Kind, repo)
		case KindCreate:
			ar.Outcome = OutcomeCreated
			id, err = r.create(ctx, dev, app, &ar, release)
		case KindRecreate:
			ar.Outcome = OutcomeUpdated
			id, err = r.recreate(ctx, dev, app, a.ContainerID, &ar, release)
		case KindStart:
			ar.Outcome = OutcomeStarted
			id, err = a.ContainerID, r.start(ctx, app, a.ContainerID, &ar, release)
		case KindRestore:
			ar.Outcome = OutcomeRestored
			id, err = a.ContainerID, r.restore(ctx, app, a.ContainerID)
		case KindRemove:
			err = r.removeContainer(ctx, a.ContainerID)
		case KindKeep:
			id = a.ContainerID
		}
		if err != nil {
			var ae *AppError
			if !errors.As(err, &ae) {
				ae = &AppError{App: app.Name, Code: ReasonEngineError, Err: err}
			}
			ar.Error = ae
			if ar.Outcome != OutcomeRolledBack {
				ar.Outcome = OutcomeFailed
			} else if ae.Code == ReasonHealthFailed {
				ar.Rollback = r.noteRollback(app.Name, hash, ae, &ar)
			}
			log.Warn("apply failed", "action", a.Kind, "err", err)
			return ar
		}
		if id != "" {
			r.fillState(ctx, &ar, id)
		}
	}
	r.remember(func(applied, failed map[string]string) {
		applied[app.Name] = hash
		delete(failed, app.Name)
	})
	return ar
}

func (r *Reconciler) fillState(ctx context.Context, ar *AppResult, id string) {
	if id == "" {
		return
	}
	c, err := r.inspectContainer(ctx, id)
	if err != nil {
		return
	}
	ar.State, ar.Health, ar.RestartCount, ar.ExitCode = c.State, c.Health, c.RestartCount, c.ExitCode
}

func (r *Reconciler) createNetwork(ctx context.Context, name string) error {
	_, err := r.eng.NetworkCreate(ctx, name, network.CreateOptions{Driver: "bridge", Labels: r.ownLabels()})
	if cerrdefs.IsConflict(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create network %q: %w", name, err)
	}
	return r.dedupeNetwork(ctx, name)
}

// dedupeNetwork settles a network name the Engine holds more than once.
// Agents sharing an Engine (devices simulated on one machine) may create
// the same network at the same moment, and the Engine then keeps both,
// which no container can join by name ("network is ambiguous"). Every
// agent picks the same copy to keep — the one containers already joined,
// else the oldest — and removes the copies it made itself, which nothing
// has joined.
func (r *Reconciler) dedupeNetwork(ctx context.Context, name string) error {
	ns, err := r.eng.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		return fmt.Errorf("list networks named %q: %w", name, err)
	}
	type copyOf struct {
		network.Inspect
		inUse bool
	}
	var same []copyOf
	for _, n := range ns {
		if n.Name != name { // the filter also matches longer names
			continue
		}
		ins, err := r.eng.NetworkInspect(ctx, n.ID, network.InspectOptions{})
		if cerrdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("inspect network %q (%.12s): %w", name, n.ID, err)
		}
		same = append(same, copyOf{ins, len(ins.Containers) > 0})
	}
	if len(same) < 2 {
		return nil
	}
	sort.Slice(same, func(i, j int) bool {
		a, b := same[i], same[j]
		switch {
		case a.inUse != b.inUse:
			return a.inUse
		case !a.Created.Equal(b.Created):
			return a.Created.Before(b.Created)
		}
		return a.ID < b.ID
	})
	var errs []error
	for _, n := range same[1:] {
		if n.inUse || n.Labels[LabelManagedBy] != managedByValue || n.Labels[LabelPrefix] != r.o.Prefix {
			continue // another agent's copy, or one in use: not ours to remove
		}
		if err := r.eng.NetworkRemove(ctx, n.ID); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove network %q (%.12s), a second copy: %w", name, n.ID, err))
			continue
		}
		r.log.Info("network made twice by agents sharing the Engine; removed this agent's copy", "network", name, "kept", same[0].ID[:12])
	}
	return errors.Join(errs...)
}

// createContainer creates app's container under name and joins its extra networks.
func (r *Reconciler) createContainer(ctx context.Context, dev *spec.Device, app *spec.App, name string) (string, error) {
	cfg, host, netCfg, err := r.containerConfig(dev, app)
	if err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			return "", &AppError{App: app.Name, Field: fe.field, Code: ReasonSpecInvalid, Err: errors.New(fe.msg)}
		}
		return "", &AppError{App: app.Name, Code: ReasonSpecInvalid, Err: err}
	}
	if err := r.keepLegacyVolumes(ctx, host.Mounts); err != nil {
		return "", &AppError{App: app.Name, Field: "volumes", Code: ReasonEngineUnavailable, Err: fmt.Errorf("%w: %w", ErrEngine, err)}
	}
	resp, err := r.eng.ContainerCreate(ctx, cfg, host, netCfg, nil, name)
	if err != nil {
		return "", r.engineError(app, "create", err)
	}
	for _, n := range networksOf(dev, app)[1:] {
		if err := r.eng.NetworkConnect(ctx, n, resp.ID, endpoint(n, app.Name)); err != nil {
			r.removeContainer(ctx, resp.ID)
			return "", &AppError{App: app.Name, Field: "networks", Code: ReasonNetworkConnectFailed, Err: fmt.Errorf("connect to %q: %w", n, err)}
		}
	}
	return resp.ID, nil
}

// keepLegacyVolumes points each named-volume mount at the unprefixed volume
// an agent made before volumes were prefixed, when that volume is this
// reconciler's (its prefix label) and the prefixed one does not exist yet:
// an upgrade must not leave an app's data behind in a volume nobody mounts.
func (r *Reconciler) keepLegacyVolumes(ctx context.Context, mounts []mount.Mount) error {
	for i := range mounts {
		m := &mounts[i]
		if m.Type != mount.TypeVolume || !strings.HasPrefix(m.Source, r.o.Prefix) {
			continue
		}
		legacy := strings.TrimPrefix(m.Source, r.o.Prefix)
		_, err := r.eng.VolumeInspect(ctx, m.Source)
		if err == nil {
			continue
		}
		if !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("inspect volume %q: %w", m.Source, err)
		}
		old, err := r.eng.VolumeInspect(ctx, legacy)
		if cerrdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("inspect volume %q: %w", legacy, err)
		}
		if old.Labels[LabelManagedBy] == managedByValue && old.Labels[LabelPrefix] == r.o.Prefix {
			r.log.Info("keeping a volume named before volumes were prefixed", "volume", legacy, "new_name", m.Source)
			m.Source = legacy
		}
	}
	return nil
}

// engineError turns an Engine error from creating or starting a container into
// an AppError naming the spec field it points at.
func (r *Reconciler) engineError(app *spec.App, op string, err error) *AppError {
	msg := err.Error()
	code := ReasonStartFailed
	if op == "create" {
		code = ReasonCreateFailed
	}
	ae := &AppError{App: app.Name, Code: code, Err: fmt.Errorf("%s: %w", op, err)}
	switch {
	case client.IsErrConnectionFailed(err) || cerrdefs.IsUnavailable(err):
		ae.Code, ae.Err = ReasonEngineUnavailable, fmt.Errorf("%s: %w: %w", op, ErrEngine, err)
	case cerrdefs.IsConflict(err) && strings.Contains(msg, "is already in use"):
		ae.Field, ae.Code = "name", ReasonNameConflict
		ae.Err = fmt.Errorf("%w: container name %q is taken: %w", ErrNotOwned, r.containerName(app.Name), err)
	case strings.Contains(msg, "port is already allocated") || strings.Contains(msg, "address already in use"):
		ae.Field, ae.Code = "ports", ReasonPortConflict
		for i, p := range app.Ports {
			if strings.Contains(msg, fmt.Sprintf(":%d", p.Host)) {
				ae.Field = fmt.Sprintf("ports[%d].host", i)
			}
		}
	case strings.Contains(msg, "bind source path does not exist") || strings.Contains(msg, "invalid mount config"):
		ae.Field, ae.Code = "volumes", ReasonMountFailed
		for i, v := range app.Volumes {
			if v.Source != "" && strings.Contains(msg, v.Source) {
				ae.Field = fmt.Sprintf("volumes[%d].source", i)
			}
		}
	case strings.Contains(msg, "No such image") || cerrdefs.IsNotFound(err) && strings.Contains(msg, "image"):
		ae.Field, ae.Code = "image.ref", ReasonImageMissing
	case strings.Contains(msg, "error gathering device information") || strings.Contains(msg, "no such file or directory") && len(app.Devices) > 0:
		ae.Field, ae.Code = "devices", ReasonDeviceMissing
	case strings.Contains(msg, "network") && cerrdefs.IsNotFound(err):
		ae.Field, ae.Code = "networks", ReasonNetworkMissing
	case strings.Contains(msg, "unable to find user") || strings.Contains(msg, "no matching entries in passwd"):
		ae.Field, ae.Code = "user", ReasonUserInvalid
	case cerrdefs.IsInvalidArgument(err):
		ae.Code = ReasonSpecInvalid
	}
	return ae
}

// create makes and starts a new app container, and waits for it to be healthy.
// A container that fails is removed, its exit code and last logs kept in ar.
func (r *Reconciler) create(ctx context.Context, dev *spec.Device, app *spec.App, ar *AppResult, release func()) (string, error) {
	id, err := r.createContainer(ctx, dev, app, r.containerName(app.Name))
	if err != nil {
		return "", err
	}
	if err := r.eng.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		r.capture(ctx, id, ar)
		r.removeContainer(ctx, id)
		return "", r.engineError(app, "start", err)
	}
	release()
	if err := r.waitHealthy(ctx, id, app); err != nil {
		r.capture(ctx, id, ar)
		r.removeContainer(ctx, id)
		r.markFailed(app, dev)
		return "", err
	}
	return id, nil
}

// recreate replaces old with a container for app. The old one is renamed aside
// and only removed once the new one is healthy; on any failure the new one is
// removed and the old one put back and started again.
func (r *Reconciler) recreate(ctx context.Context, dev *spec.Device, app *spec.App, oldID string, ar *AppResult, release func()) (string, error) {
	name, aside := r.containerName(app.Name), r.asideName(app.Name)
	old, err := r.eng.ContainerInspect(ctx, oldID)
	if err != nil {
		return "", &AppError{App: app.Name, Code: ReasonEngineError, Err: fmt.Errorf("inspect current container: %w", err)}
	}
	wasRunning := old.State != nil && (old.State.Running || old.State.Restarting)
	if err := r.eng.ContainerRename(ctx, oldID, aside); err != nil {
		return "", &AppError{App: app.Name, Code: ReasonEngineError, Err: fmt.Errorf("rename current container aside: %w", err)}
	}
	putBack := func() {
		// A fresh context: a canceled pass must still leave the last good version running.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if err := r.eng.ContainerRename(bctx, oldID, name); err != nil {
			r.log.Error("restore previous version", "app", app.Name, "err", err)
			return
		}
		if wasRunning {
			if err := r.eng.ContainerStart(bctx, oldID, container.StartOptions{}); err != nil {
				r.log.Error("restart previous version", "app", app.Name, "err", err)
				return
			}
			// Report only once the previous version serves again (its own healthcheck, if any).
			prev := *app
			if old.Config != nil && old.Config.Labels[LabelSpec] != "" {
				if c, err := r.inspectContainer(bctx, oldID); err == nil && c.Spec != nil {
					prev = *c.Spec
				}
			}
			if err := r.waitHealthy(bctx, oldID, &prev); err != nil {
				r.log.Error("previous version not healthy after restore", "app", app.Name, "err", err)
			}
		}
	}
	id, err := r.createContainer(ctx, dev, app, name)
	if err != nil {
		putBack()
		return "", err
	}
	rollback := func(cause error) error {
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		r.capture(bctx, id, ar)
		r.removeContainer(bctx, id)
		putBack()
		ar.Outcome = OutcomeRolledBack
		r.metrics.rollbacks.Inc()
		return cause
	}
	if wasRunning {
		if err := r.stop(ctx, oldID); err != nil {
			return "", rollback(&AppError{App: app.Name, Code: ReasonEngineError, Err: fmt.Errorf("stop previous version: %w", err)})
		}
	}
	if err := r.eng.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return "", rollback(r.engineError(app, "start", err))
	}
	release()
	if err := r.waitHealthy(ctx, id, app); err != nil {
		r.markFailed(app, dev)
		return "", rollback(err)
	}
	if err := r.removeContainer(ctx, oldID); err != nil {
		r.log.Warn("remove previous version", "app", app.Name, "err", err) // the next pass removes it
	}
	return id, nil
}

// noteRollback records that app's version hash failed its health gate and
// was rolled back just now, with what the failed container left (ar's exit
// code and log lines), and returns the record.
func (r *Reconciler) noteRollback(app, hash string, ae *AppError, ar *AppResult) *Rollback {
	rb := Rollback{Hash: hash, Time: r.o.Now().UTC(), Reason: ae.Code, ExitCode: ar.ExitCode, Logs: ar.Logs,
		Message: strings.TrimPrefix(ae.Err.Error(), ErrUnhealthy.Error()+": ")}
	r.remember(func(_, failed map[string]string) {
		failed[app] = hash
		r.rollbacks[app] = rb
	})
	return &rb
}

// rollbackOf returns the record of app's version hash being rolled back.
func (r *Reconciler) rollbackOf(app, hash string) (Rollback, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rb, ok := r.rollbacks[app]
	return rb, ok && rb.Hash == hash
}

func (r *Reconciler) markFailed(app *spec.App, dev *spec.Device) {
	r.remember(func(_, failed map[string]string) { failed[app.Name] = specHash(dev, app) })
}

// start starts (or unpauses) an existing container and waits for it to be healthy.
func (r *Reconciler) start(ctx context.Context, app *spec.App, id string, ar *AppResult, release func()) error {
	ins, err := r.eng.ContainerInspect(ctx, id)
	if err != nil {
		return &AppError{App: app.Name, Code: ReasonEngineError, Err: err}
	}
	if ins.State != nil && ins.State.Paused {
		err = r.eng.ContainerUnpause(ctx, id)
	} else {
		err = r.eng.ContainerStart(ctx, id, container.StartOptions{})
	}
	if err != nil {
		r.capture(ctx, id, ar)
		return r.engineError(app, "start", err)
	}
	release()
	if err := r.waitHealthy(ctx, id, app); err != nil {
		r.capture(ctx, id, ar)
		return err
	}
	return nil
}

// restore puts a container left aside by an interrupted rollout back under its name.
func (r *Reconciler) restore(ctx context.Context, app *spec.App, id string) error {
	if err := r.eng.ContainerRename(ctx, id, r.containerName(app.Name)); err != nil {
		return &AppError{App: app.Name, Code: ReasonEngineError, Err: fmt.Errorf("rename back: %w", err)}
	}
	if err := r.eng.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return r.engineError(app, "start", err)
	}
	return nil
}

func (r *Reconciler) stop(ctx context.Context, id string) error {
	secs := int(r.o.StopTimeout / time.Second)
	if err := r.eng.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}); err != nil && !cerrdefs.IsNotFound(err) {
		return err
	}
	return nil
}

func (r *Reconciler) removeContainer(ctx context.Context, id string) error {
	if err := r.stop(ctx, id); err != nil {
		return fmt.Errorf("stop %s: %w", short(id), err)
	}
	if err := r.eng.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove %s: %w", short(id), err)
	}
	return nil
}

// capture records a failed container's state and last log lines.
func (r *Reconciler) capture(ctx context.Context, id string, ar *AppResult) {
	r.fillState(ctx, ar, id)
	rc, err := r.eng.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(logLines)})
	if err != nil {
		return
	}
	defer rc.Close()
	pr, pw := io.Pipe()
	go func() {
		_, err := stdcopy.StdCopy(pw, pw, rc)
		pw.CloseWithError(err)
	}()
	sc := bufio.NewScanner(pr)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	pr.Close()
	if len(lines) > logLines {
		lines = lines[len(lines)-logLines:]
	}
	ar.Logs = lines
}

// waitHealthy waits until the container is healthy (or, with no healthcheck, has
// kept running for StableFor), up to the app's health timeout.
func (r *Reconciler) waitHealthy(ctx context.Context, id string, app *spec.App) error {
	limit := app.HealthWait.D()
	if limit <= 0 {
		limit = r.o.DefaultHealthWait
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var runningSince time.Time
	last := "not started"
	for {
		ins, err := r.eng.ContainerInspect(ctx, id)
		if err == nil && ins.State != nil {
			st := ins.State
			switch {
			case st.Health != nil && st.Health.Status != container.NoHealthcheck:
				if st.Health.Status == container.Healthy && st.Running {
					return nil
				}
				last = "health " + st.Health.Status
				if n := len(st.Health.Log); n > 0 {
					last += fmt.Sprintf(" (last probe exit %d: %s)", st.Health.Log[n-1].ExitCode, strings.TrimSpace(st.Health.Log[n-1].Output))
				}
			case st.Running && !st.Restarting:
				if runningSince.IsZero() {
					runningSince = r.o.Now()
				}
				if r.o.Now().Sub(runningSince) >= r.o.StableFor {
					return nil
				}
				last = "running"
			default:
				runningSince = time.Time{}
				last = fmt.Sprintf("%s (exit code %d)", st.Status, st.ExitCode)
			}
			// A container that exited and will not be restarted cannot become healthy.
			if (st.Status == "exited" || st.Status == "dead") && (app.Restart == "" || app.Restart == "no") {
				return &AppError{App: app.Name, Field: "healthcheck", Code: ReasonHealthFailed,
					Err: fmt.Errorf("%w: exited with code %d", ErrUnhealthy, st.ExitCode)}
			}
		}
		select {
		case <-ctx.Done():
			return &AppError{App: app.Name, Field: "healthcheck", Code: ReasonHealthFailed,
				Err: fmt.Errorf("%w: not healthy after %s: %s", ErrUnhealthy, limit, last)}
		case <-tick.C:
		}
	}
}
