// Package updater installs OS releases into A/B slots and drives the trial
// boot: a verified streaming install into the inactive slot, a bootloader env
// that tries the new slot a bounded number of times, a health gate that commits
// or rolls back, update windows, holds and anti-rollback. Its state machine,
//
//	idle → downloading → installed → rebooting → trial → committed | rolled-back
//
// is persisted (atomically) before each transition takes effect, and each
// transition changes the bootloader env in at most one write, so a power cut
// at any instant leaves a slot that boots and verifies.
//
// The agent and the shoal-agent CLI import it. Of Shoal's packages it imports
// spec, its own bootenv and delta, and internal/atomicfile.
package updater

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/Masterminds/semver/v3"

	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater/bootenv"
)

// Errors by category, checked with errors.Is. Signature, version and bad-release
// refusals need a new release (the agent's "stalled"); a failed download is
// retried (its "waiting").
var (
	ErrSignature      = errors.New("release signature invalid")
	ErrInvalidRelease = errors.New("release invalid")
	ErrVerify         = errors.New("image verification failed")
	ErrDowngrade      = errors.New("release older than the committed one")
	ErrReleaseBad     = errors.New("release failed its trial before")
	ErrRolledBack     = errors.New("update rolled back")
	ErrNothingToDo    = errors.New("no update in a state that allows this")
	ErrDeltaIndex     = errors.New("delta index refused")
)

// Machine reasons in Status.Reason, stable for the hub.
const (
	ReasonSignature   = "signature-invalid"
	ReasonVerify      = "image-verify-failed"
	ReasonDowngrade   = "downgrade-refused"
	ReasonBad         = "release-bad"
	ReasonDownload    = "download-interrupted"
	ReasonHealth      = "health-gate-failed"
	ReasonFallback    = "bootloader-fallback"
	ReasonOperator    = "operator-rollback"
	ReasonWindow      = "waiting-for-window"
	ReasonHeld        = "held"
	ReasonHealthWait  = "waiting-for-health"
	ReasonMinVersion  = "min-version-not-met"
	ReasonInvalid     = "release-invalid"
	defaultTrial      = 10 * time.Minute
	defaultBootLimit  = 3
	maxBootLimit      = 9 // the GRUB snippet counts boots with a lookup up to 10
	defaultBuffer     = 4 << 20
	defaultCheckpoint = 64 << 20
)

// Gate is the health check after a trial boot, supplied by the agent; nil passes.
type Gate func(ctx context.Context) error

// Options configures an Updater. Zero values pick the real device's defaults.
type Options struct {
	StateDir   string            // holds update.json and update.lock
	Slots      map[string]string // SlotA and SlotB -> block device or file
	Env        bootenv.Env       // the bootloader environment
	UBoot      bool              // set altbootcmd for U-Boot's bootcount fallback
	TrustRoots []crypto.PublicKey
	Rebooter   Rebooter               // nil: SystemdReboot
	BootID     func() (string, error) // nil: BootIDFromKernel
	BootedSlot func() (string, error) // nil: BootedSlotFromCmdline
	// RunningVersion is the version of the OS running now; it seeds the
	// committed release on the first run (anti-rollback needs it).
	RunningVersion  string
	BaseDir         string       // resolves release URLs that are relative paths
	HTTPClient      *http.Client // nil: http.DefaultClient
	Now             func() time.Time
	Logger          *slog.Logger
	Progress        io.Writer // a terminal to draw a progress bar on; nil: none
	BufferSize      int       // bytes per write; default 4 MiB
	CheckpointEvery int64     // bytes between resume checkpoints; default 64 MiB
	// ChunkStores are tried for a delta's chunks before the release's own
	// store: directories (a USB bundle's chunks) or http(s) URLs (a relay).
	ChunkStores []string
}

// Updater drives the A/B update state machine of one device.
type Updater struct {
	o     Options
	path  string
	log   *slog.Logger
	m     *metrics
	prog  progress
	fault func(point string) // test hook: a power cut may happen here
}

// New checks o and returns an Updater. It does no I/O.
func New(o Options) (*Updater, error) {
	if o.StateDir == "" {
		return nil, errors.New("updater: no state directory")
	}
	if o.Slots[SlotA] == "" || o.Slots[SlotB] == "" {
		return nil, errors.New("updater: slots a and b must both be configured")
	}
	if o.Env == nil {
		return nil, errors.New("updater: no bootloader env")
	}
	if o.Rebooter == nil {
		o.Rebooter = SystemdReboot{}
	}
	if o.BootID == nil {
		o.BootID = BootIDFromKernel
	}
	if o.BootedSlot == nil {
		o.BootedSlot = BootedSlotFromCmdline
	}
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.BufferSize <= 0 {
		o.BufferSize = defaultBuffer
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = defaultCheckpoint
	}
	return &Updater{
		o:     o,
		path:  filepath.Join(o.StateDir, "update.json"),
		log:   o.Logger.With("part", "updater"),
		m:     newMetrics(),
		fault: func(string) {},
	}, nil
}

// Status is what the updater reports; the agent copies it into its status report.
type Status struct {
	Phase      Phase             `json:"phase"`
	Since      time.Time         `json:"since,omitzero"` // when the phase was last persisted
	BootedSlot string            `json:"bootedSlot,omitempty"`
	Committed  *ReleaseRef       `json:"committed,omitempty"`
	Target     *ReleaseRef       `json:"target,omitempty"`
	Waiting    string            `json:"waiting,omitempty"` // ReasonWindow, ReasonHeld, ReasonHealthWait
	NextWindow time.Time         `json:"nextWindow,omitzero"`
	Progress   *Progress         `json:"progress,omitempty"`
	Reason     string            `json:"reason,omitempty"` // machine reason of the last failure
	Message    string            `json:"message,omitempty"`
	Bad        map[string]string `json:"bad,omitempty"` // release sha256 -> why
	// Delta is how the install in flight, or the last one, of a release
	// with a chunk index gets its image: planned bytes, fetched bytes, and
	// why it downloads the full image if it does.
	Delta *DeltaStatus `json:"delta,omitempty"`
}

// session is one call's view: the state, the boot and the env, locked.
type session struct {
	st     *state
	booted string
	bootID string
	vars   map[string]string
	next   time.Time // when the next update window opens, while waiting for it
	unlock func()
	// through: a delta install goes on after its plan in the same step
	// (a manual install), instead of reporting the plan first.
	through bool
}

func (u *Updater) open() (*session, error) {
	if err := os.MkdirAll(u.o.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("updater: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(u.o.StateDir, "update.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("updater: lock: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		lf.Close()
		return nil, fmt.Errorf("updater: lock: %w", err)
	}
	s := &session{unlock: func() { lf.Close() }}
	fail := func(err error) (*session, error) { s.unlock(); return nil, err }
	if s.booted, err = u.o.BootedSlot(); err != nil {
		return fail(err)
	}
	if s.bootID, err = u.o.BootID(); err != nil {
		return fail(err)
	}
	if s.vars, err = u.o.Env.Load(); err != nil {
		return fail(fmt.Errorf("updater: read bootloader env: %w", err))
	}
	if s.st, err = loadState(u.path); err != nil {
		return fail(err)
	}
	if s.st == nil {
		s.st = &state{Phase: PhaseIdle, Committed: &ReleaseRef{Version: u.o.RunningVersion, Slot: s.booted}}
	}
	u.m.setPhase(s.st.Phase)
	return s, nil
}

func (u *Updater) save(st *state) error {
	st.Changed = u.o.Now().UTC()
	if err := saveState(u.path, st); err != nil {
		return err
	}
	u.m.setPhase(st.Phase)
	return nil
}

// saveEnv writes the env once and names the transition in the log.
func (u *Updater) saveEnv(s *session, why string, change func(map[string]string)) error {
	vars := maps.Clone(s.vars)
	change(vars)
	if maps.Equal(vars, s.vars) {
		return nil
	}
	if err := u.o.Env.Save(vars); err != nil {
		return fmt.Errorf("updater: %s: write bootloader env: %w", why, err)
	}
	s.vars = vars
	u.log.Info("bootloader env written", "why", why, VarSlot, vars[VarSlot], VarUpgrade, vars[VarUpgrade])
	return nil
}

func commitVars(slot string) func(map[string]string) {
	return func(v map[string]string) {
		v[VarSlot] = slot
		v[VarUpgrade] = "0"
		v[VarCount] = "0"
		delete(v, VarTry)
	}
}

func trialID(t *ReleaseRef) string {
	return t.Slot + ":" + strings.ToLower(t.SHA256)[:min(16, len(t.SHA256))]
}

func (u *Updater) status(s *session) Status {
	st := s.st
	out := Status{Phase: st.Phase, Since: st.Changed, BootedSlot: s.booted, Committed: st.Committed, Target: st.Target, Reason: st.Reason, Message: st.Error, NextWindow: s.next}
	switch st.Reason {
	case ReasonWindow, ReasonHeld, ReasonHealthWait, ReasonBudget:
		out.Waiting = st.Reason
	}
	if st.Delta != nil {
		d := *st.Delta
		out.Delta = &d
	}
	if len(st.Bad) > 0 {
		out.Bad = maps.Clone(st.Bad)
	}
	if st.Phase == PhaseDownloading {
		out.Progress = u.prog.snapshot(st.Check.Offset, st.Target.Size)
	}
	return out
}

// Status reports the persisted state without changing anything.
func (u *Updater) Status(ctx context.Context) (Status, error) {
	s, err := u.open()
	if err != nil {
		return Status{}, err
	}
	defer s.unlock()
	return u.status(s), nil
}

// Step advances the state machine as far as it can in one pass towards rel
// (nil: no release wanted) under policy pol. It may download and install, set
// the env and reboot (outside windows and holds), run the health gate of a
// trial boot, and commit or roll back. The returned Status is valid with an error too.
//
// A delta install reports its plan first: the step that plans it returns
// with the plan in Status.Delta, and the next step fetches.
func (u *Updater) Step(ctx context.Context, rel *spec.Release, pol spec.UpdatePolicy, gate Gate) (Status, error) {
	return u.run(ctx, rel, pol, gate, false)
}

// Install is the manual install: the same signature, version and bad-release
// checks as Step, but windows and holds do not apply, since a person asked,
// and a delta install goes on after its plan.
func (u *Updater) Install(ctx context.Context, rel *spec.Release, pol spec.UpdatePolicy) (Status, error) {
	pol.Hold, pol.Windows, pol.DownloadOutsideWindow = false, nil, true
	return u.run(ctx, rel, pol, nil, true)
}

func (u *Updater) run(ctx context.Context, rel *spec.Release, pol spec.UpdatePolicy, gate Gate, through bool) (Status, error) {
	s, err := u.open()
	if err != nil {
		return Status{}, err
	}
	defer s.unlock()
	s.through = through
	err = u.step(ctx, s, rel, pol, gate)
	return u.status(s), err
}

func (u *Updater) step(ctx context.Context, s *session, rel *spec.Release, pol spec.UpdatePolicy, gate Gate) error {
	st := s.st
	// First settle what the last boot left.
	switch st.Phase {
	case PhaseRebooting:
		if s.bootID == st.BootID { // the reboot was asked for but has not happened
			return u.flip(ctx, s, pol)
		}
		if s.booted != st.Target.Slot || s.vars[VarUpgrade] != "1" {
			if s.vars[VarTry] != trialID(st.Target) {
				// The power went out before the trial env reached the medium: try again.
				return u.flip(ctx, s, pol)
			}
			return u.fellBack(s, fmt.Sprintf("the bootloader started slot %s instead of %s", s.booted, st.Target.Slot))
		}
		st.Phase, st.TrialStart = PhaseTrial, u.o.Now()
		if err := u.save(st); err != nil {
			return err
		}
		u.fault("state:trial")
		fallthrough
	case PhaseTrial:
		if s.booted != st.Target.Slot {
			return u.fellBack(s, fmt.Sprintf("the bootloader fell back to slot %s during the trial", s.booted))
		}
		return u.trial(ctx, s, pol, gate)
	case PhaseCommitted:
		switch {
		case s.booted == st.Committed.Slot:
			// A power cut between the state write and the env write leaves the trial set: finish the commit.
			if err := u.saveEnv(s, "finish commit", commitVars(s.booted)); err != nil {
				return err
			}
		case st.Previous != nil && s.booted == st.Previous.Slot:
			st.Phase, st.Target = PhaseRolledBack, st.Committed
			st.Committed, st.Previous = st.Previous, nil
			st.Reason, st.Error = ReasonFallback, "the bootloader fell back before the commit reached its env"
			if err := u.save(st); err != nil {
				return err
			}
			if err := u.saveEnv(s, "settle fallback", commitVars(s.booted)); err != nil {
				return err
			}
		}
	case PhaseRolledBack:
		if st.Target != nil && s.booted == st.Target.Slot { // the rollback has not taken effect yet
			return u.rebootTo(ctx, s, st.Committed.Slot, "finish rollback")
		}
		if s.vars[VarUpgrade] == "1" || s.vars[VarSlot] != s.booted {
			if err := u.saveEnv(s, "settle rollback", commitVars(s.booted)); err != nil {
				return err
			}
		}
	}

	// Then move towards the wanted release.
	if rel == nil {
		if st.Phase == PhaseDownloading || st.Phase == PhaseInstalled {
			return u.cancel(st)
		}
		return nil
	}
	if st.Committed != nil && strings.EqualFold(rel.SHA256, st.Committed.SHA256) {
		if st.Phase == PhaseDownloading || st.Phase == PhaseInstalled {
			return u.cancel(st)
		}
		return nil
	}
	if why, bad := st.Bad[strings.ToLower(rel.SHA256)]; bad {
		st.Reason = ReasonBad
		return fmt.Errorf("release %q: %w: %s", rel.Version, ErrReleaseBad, why)
	}
	if err := VerifyRelease(rel, u.o.TrustRoots); err != nil {
		st.Reason = ReasonSignature
		if errors.Is(err, ErrInvalidRelease) {
			st.Reason = ReasonInvalid
		}
		return err
	}
	if reason, err := checkVersion(st.Committed, rel, pol); err != nil {
		st.Reason = reason
		return err
	}
	if (st.Phase == PhaseDownloading || st.Phase == PhaseInstalled) && !strings.EqualFold(st.Target.SHA256, rel.SHA256) {
		u.log.Info("wanted release changed; starting over", "from", st.Target.Version, "to", rel.Version)
		if err := u.cancel(st); err != nil {
			return err
		}
	}
	if pol.Hold {
		st.Reason, st.Error = ReasonHeld, "held: no new installs until the hold is lifted"
		return nil
	}
	open, next, err := windowState(pol.Windows, u.o.Now())
	if err != nil {
		return fmt.Errorf("update windows: %w", err)
	}
	if st.Phase != PhaseDownloading && st.Phase != PhaseInstalled {
		if !open && !pol.DownloadOutsideWindow {
			return u.waitWindow(s, next)
		}
		slot := otherSlot(s.booted)
		st.Phase, st.Target, st.Release = PhaseDownloading, refOf(rel, slot), rel
		st.Check, st.Compressed, st.Reason, st.Error, st.Delta = checkpoint{}, false, "", "", nil
		if err := u.save(st); err != nil {
			return err
		}
		u.fault("state:downloading")
	}
	if st.Phase == PhaseDownloading {
		if !open && !pol.DownloadOutsideWindow {
			return u.waitWindow(s, next)
		}
		if err := u.download(ctx, s, pol); err != nil {
			return err
		}
		if st.Phase != PhaseInstalled {
			return nil // a delta's plan is reported first, or the budget holds it
		}
	}
	if open, next, _ = windowState(pol.Windows, u.o.Now()); !open {
		return u.waitWindow(s, next)
	}
	return u.flip(ctx, s, pol)
}

func (u *Updater) waitWindow(s *session, next time.Time) error {
	s.st.Reason, s.next = ReasonWindow, next
	s.st.Error = "waiting for window"
	if !next.IsZero() {
		s.st.Error += " (opens " + next.UTC().Format(time.RFC3339) + ")"
	}
	return nil
}

func (u *Updater) cancel(st *state) error {
	st.Phase, st.Target, st.Release, st.Check = PhaseIdle, nil, nil, checkpoint{}
	return u.save(st)
}

func checkVersion(committed *ReleaseRef, rel *spec.Release, pol spec.UpdatePolicy) (string, error) {
	want, err := semver.NewVersion(rel.Version)
	if err != nil {
		return ReasonInvalid, fmt.Errorf("release %q: %w: version is not semver", rel.Version, ErrInvalidRelease)
	}
	if committed == nil || committed.Version == "" {
		return "", nil
	}
	have, err := semver.NewVersion(committed.Version)
	if err != nil {
		return "", nil // an unversioned running OS cannot be compared
	}
	if want.LessThan(have) && !pol.AllowDowngrade {
		return ReasonDowngrade, fmt.Errorf("release %q: %w %q (the policy does not allow downgrades)", rel.Version, ErrDowngrade, committed.Version)
	}
	if rel.MinVersion != "" {
		if minV, err := semver.NewVersion(rel.MinVersion); err == nil && have.LessThan(minV) {
			return ReasonMinVersion, fmt.Errorf("release %q: %w: needs %s or later installed, have %s", rel.Version, ErrInvalidRelease, rel.MinVersion, committed.Version)
		}
	}
	return "", nil
}

func (u *Updater) download(ctx context.Context, s *session, pol spec.UpdatePolicy) error {
	st := s.st
	rel := st.Release
	if rel.Delta != nil && (st.Delta == nil || st.Delta.Mode == ModeDelta || st.Reason == ReasonBudget) {
		if err := u.deltaInstall(ctx, s, pol); !errors.Is(err, errNoDelta) {
			return err
		}
	}
	if b := int64(pol.Delta.Budget); rel.Delta == nil && b > 0 {
		if full := u.fullSize(ctx, rel); full-st.Check.Offset > b {
			st.Reason = ReasonBudget
			st.Error = fmt.Sprintf("waiting: the install needs %s, above the budget of %s", bytesIEC(full-st.Check.Offset), bytesIEC(b))
			return nil
		}
	}
	start := st.Check
	if st.Compressed {
		start = checkpoint{} // a compressed stream restarts: its decoder state is not saved
	}
	raw, got, length, err := openRaw(ctx, u.o.HTTPClient, rel.URL, u.o.BaseDir, start.Offset)
	if err != nil {
		st.Reason, st.Error = ReasonDownload, err.Error()
		return err
	}
	if got != start.Offset {
		u.log.Info("server ignored the range request; downloading from the start", "url", redact(rel.URL))
		start = checkpoint{}
	}
	var r io.ReadCloser = raw
	if start.Offset == 0 {
		d, err := newDecompressed(raw)
		if err != nil {
			return u.verifyFailed(st, fmt.Errorf("%w: %v", ErrVerify, err))
		}
		r = d
		if st.Compressed != (d.comp != compNone) {
			st.Compressed = d.comp != compNone
			if err := u.save(st); err != nil {
				r.Close()
				return err
			}
		}
		if st.Compressed {
			u.log.Info("compressed image; a resume starts the download over", "compression", string(d.comp))
		}
	}
	defer r.Close()
	if !st.Compressed && length >= 0 && length != rel.Size-start.Offset {
		return u.verifyFailed(st, fmt.Errorf("%w: size mismatch: source has %d bytes from offset %d, release says %d in all", ErrVerify, length, start.Offset, rel.Size))
	}
	if start.Offset > 0 {
		u.log.Info("resuming download", "offset", start.Offset, "size", rel.Size)
	}
	var counted io.Reader = r
	if st.Delta != nil { // a full download instead of a delta: count what it fetches
		counted = &countReader{r: r, n: &st.Delta.Fetched, m: u.m}
	}
	err = u.writeSlot(ctx, st, counted, start, nil)
	switch {
	case errors.Is(err, ErrVerify):
		return u.verifyFailed(st, err)
	case err != nil:
		st.Reason, st.Error = ReasonDownload, err.Error()
		return err
	}
	return u.installed(st)
}

// countReader counts the bytes a full download instead of a delta fetches.
type countReader struct {
	r io.Reader
	n *int64
	m *metrics
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	*c.n += int64(n)
	c.m.deltaFetched.Add(float64(n))
	return n, err
}

// writeSlot streams r, the uncompressed image from start on, into the target
// slot, checkpointing into st (after calling onSave, if set).
func (u *Updater) writeSlot(ctx context.Context, st *state, r io.Reader, start checkpoint, onSave func()) error {
	rel := st.Release
	w := &writer{
		slot: u.o.Slots[st.Target.Slot], rel: rel, bufSize: u.o.BufferSize, every: u.o.CheckpointEvery,
		save: func(c checkpoint) error {
			st.Check = c
			if onSave != nil {
				onSave()
			}
			return u.save(st)
		},
		fault:    u.fault,
		progress: u.onProgress,
	}
	u.prog.start(u.o.Now(), start.Offset, rel.Size, u.o.Progress)
	err := w.write(ctx, r, start)
	u.prog.finish()
	return err
}

// installed records a written and verified slot.
func (u *Updater) installed(st *state) error {
	rel := st.Release
	st.Phase, st.Check, st.Reason, st.Error = PhaseInstalled, checkpoint{}, "", ""
	delete(st.BadSlots, st.Target.Slot)
	if err := u.save(st); err != nil {
		return err
	}
	u.m.installs.WithLabelValues("ok").Inc()
	u.log.Info("installed", "version", rel.Version, "slot", st.Target.Slot)
	u.fault("state:installed")
	return nil
}

// verifyFailed marks the slot bad and forgets the attempt; the env is never touched.
func (u *Updater) verifyFailed(st *state, err error) error {
	if st.BadSlots == nil {
		st.BadSlots = map[string]string{}
	}
	st.BadSlots[st.Target.Slot] = err.Error()
	st.Phase, st.Target, st.Release, st.Check = PhaseIdle, nil, nil, checkpoint{}
	st.Reason, st.Error = ReasonVerify, err.Error()
	u.m.installs.WithLabelValues("verify-failed").Inc()
	if serr := u.save(st); serr != nil {
		return errors.Join(err, serr)
	}
	return err
}

// flip persists "rebooting", sets the env to try the new slot (one write) and reboots.
func (u *Updater) flip(ctx context.Context, s *session, pol spec.UpdatePolicy) error {
	st := s.st
	limit := pol.BootLimit
	if limit <= 0 {
		limit = defaultBootLimit
	}
	limit = min(limit, maxBootLimit)
	if st.Phase != PhaseRebooting || st.BootID != s.bootID {
		st.Phase, st.BootID = PhaseRebooting, s.bootID
		if err := u.save(st); err != nil {
			return err
		}
		u.fault("state:rebooting")
	}
	t := st.Target
	err := u.saveEnv(s, "try slot "+t.Slot, func(v map[string]string) {
		v[VarSlot], v[VarPrev], v[VarTry] = t.Slot, st.Committed.Slot, trialID(t)
		v[VarUpgrade], v[VarCount], v[VarLimit] = "1", "0", fmt.Sprint(limit)
		if u.o.UBoot {
			v[VarAltBoot] = altBootUBoot
		}
	})
	if err != nil {
		return err
	}
	u.log.Info("rebooting into trial", "version", t.Version, "slot", t.Slot, "bootlimit", limit)
	return u.o.Rebooter.Reboot(ctx)
}

func (u *Updater) trial(ctx context.Context, s *session, pol spec.UpdatePolicy, gate Gate) error {
	st := s.st
	timeout := pol.TrialTimeout.D()
	if timeout <= 0 {
		timeout = defaultTrial
	}
	deadline := st.TrialStart.Add(timeout)
	remaining := deadline.Sub(u.o.Now())
	var err error
	if gate != nil {
		gctx, cancel := context.WithTimeout(ctx, max(remaining, time.Second))
		err = gate(gctx)
		cancel()
	}
	if err == nil {
		return u.commit(s)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if u.o.Now().Before(deadline) {
		st.Reason, st.Error = ReasonHealthWait, err.Error()
		return nil
	}
	return u.rollback(ctx, s, ReasonHealth, "health gate failed: "+err.Error())
}

func (u *Updater) commit(s *session) error {
	st := s.st
	st.Phase, st.Previous, st.Committed = PhaseCommitted, st.Committed, st.Target
	st.Target, st.Release, st.Reason, st.Error = nil, nil, "", ""
	if err := u.save(st); err != nil {
		return err
	}
	u.fault("state:committed")
	if err := u.saveEnv(s, "commit", commitVars(st.Committed.Slot)); err != nil {
		return err
	}
	u.m.commits.Inc()
	u.log.Info("committed", "version", st.Committed.Version, "slot", st.Committed.Slot)
	return nil
}

// rollback marks the target bad, persists "rolled-back", points the env back
// at the committed slot (one write) and reboots into it.
func (u *Updater) rollback(ctx context.Context, s *session, reason, why string) error {
	st := s.st
	if st.Bad == nil {
		st.Bad = map[string]string{}
	}
	st.Bad[strings.ToLower(st.Target.SHA256)] = why
	st.Phase, st.BootID, st.Reason, st.Error = PhaseRolledBack, s.bootID, reason, why
	if err := u.save(st); err != nil {
		return err
	}
	u.m.rollbacks.Inc()
	u.fault("state:rolled-back")
	if err := u.rebootTo(ctx, s, st.Committed.Slot, "roll back"); err != nil {
		return err
	}
	return fmt.Errorf("release %q: %w: %s", st.Target.Version, ErrRolledBack, why)
}

func (u *Updater) rebootTo(ctx context.Context, s *session, slot, why string) error {
	if err := u.saveEnv(s, why, commitVars(slot)); err != nil {
		return err
	}
	u.log.Info("rebooting", "why", why, "slot", slot)
	return u.o.Rebooter.Reboot(ctx)
}

// fellBack records that the bootloader gave up on the trial slot by itself.
func (u *Updater) fellBack(s *session, why string) error {
	st := s.st
	if st.Bad == nil {
		st.Bad = map[string]string{}
	}
	st.Bad[strings.ToLower(st.Target.SHA256)] = why
	st.Phase, st.Reason, st.Error = PhaseRolledBack, ReasonFallback, why
	if err := u.save(st); err != nil {
		return err
	}
	u.m.rollbacks.Inc()
	if err := u.saveEnv(s, "settle fallback", commitVars(s.booted)); err != nil {
		return err
	}
	return fmt.Errorf("release %q: %w: %s", st.Target.Version, ErrRolledBack, why)
}

// Commit ends a trial as passed without running the gate: the operator's word.
func (u *Updater) Commit(ctx context.Context) (Status, error) {
	s, err := u.open()
	if err != nil {
		return Status{}, err
	}
	defer s.unlock()
	st := s.st
	if st.Phase == PhaseRebooting && s.bootID != st.BootID && s.booted == st.Target.Slot {
		st.Phase, st.TrialStart = PhaseTrial, u.o.Now()
	}
	if st.Phase != PhaseTrial || s.booted != st.Target.Slot {
		return u.status(s), fmt.Errorf("commit: %w: phase %s, booted slot %s", ErrNothingToDo, st.Phase, s.booted)
	}
	err = u.commit(s)
	return u.status(s), err
}

// Rollback ends a trial as failed (marking the release bad and rebooting into
// the committed slot), or cancels an install that has not been booted yet.
func (u *Updater) Rollback(ctx context.Context) (Status, error) {
	s, err := u.open()
	if err != nil {
		return Status{}, err
	}
	defer s.unlock()
	st := s.st
	switch {
	case st.Phase == PhaseTrial || (st.Phase == PhaseRebooting && s.bootID != st.BootID && s.booted == st.Target.Slot):
		err = u.rollback(ctx, s, ReasonOperator, "rolled back by the operator")
		if errors.Is(err, ErrRolledBack) {
			err = nil
		}
	case st.Phase == PhaseRebooting: // the env points at the new slot, the reboot has not happened
		if err = u.cancel(st); err == nil {
			err = u.saveEnv(s, "cancel trial", commitVars(st.Committed.Slot))
		}
	case st.Phase == PhaseDownloading || st.Phase == PhaseInstalled:
		err = u.cancel(st)
	default:
		err = fmt.Errorf("rollback: %w: phase %s", ErrNothingToDo, st.Phase)
	}
	return u.status(s), err
}
