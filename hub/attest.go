package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/spec"
)

// CounterStore keeps each device's TPM counters; store.Store implements it
// on the hub's database, shared by every hub.
type CounterStore interface {
	TPMCounters(ctx context.Context, deviceID string) (store.TPMCounters, error)
	AdvanceTPMCounters(ctx context.Context, c store.TPMCounters) error
}

// AttestVerifier adapts attest.Verifier to the hub's Verifier. The hub has
// already consumed the nonce in its database (shared by every hub), so the
// attest.Verifier runs without a NonceStore and only checks that the quote
// answers exactly that nonce.
type AttestVerifier struct {
	V *attest.Verifier
	// Policy gives the PCR policy a device's quote must meet. Nil: ClaimPolicy.
	// An error wrapping attest.ErrPolicy refuses the quote with that reason;
	// any other error fails the request.
	Policy func(ctx context.Context, deviceID string, req *api.AttestRequest) (attest.Policy, error)
	// Counters, when set, holds each quote to the device's last accepted
	// TPM counters in the database and advances them with a conditional
	// update, so a quote held back and replayed to another hub, or to this
	// one after a restart, is refused. Nil: V's own CounterStore, if any.
	Counters CounterStore
}

// NewAttestVerifier builds the adapter around attest.NewVerifier. o.Nonces
// must be nil (the hub keeps nonces). Set Counters on the result to keep TPM
// counters in the hub's database; then leave o.Counters nil.
func NewAttestVerifier(o attest.VerifierOptions) (*AttestVerifier, error) {
	if o.Nonces != nil {
		return nil, fmt.Errorf("attest verifier: the hub consumes nonces itself; leave Nonces nil")
	}
	return &AttestVerifier{V: attest.NewVerifier(o)}, nil
}

// Collectors returns the verifier's metrics; the hub registers them.
func (a *AttestVerifier) Collectors() []prometheus.Collector { return a.V.Collectors() }

// ClaimPolicy is the policy without a fleet: the quoted PCRs, and AppPCR
// must equal the value for the claimed spec hash and release version.
func ClaimPolicy(_ context.Context, _ string, req *api.AttestRequest) (attest.Policy, error) {
	return claimed(req, nil).WithApp(req.SpecHash, req.ReleaseVersion), nil
}

// claimed is the quoted PCRs plus extra, sorted, with no expected values.
func claimed(req *api.AttestRequest, extra []int) attest.Policy {
	p := attest.Policy{Expected: map[int][]byte{}}
	for i := range req.PCRs {
		p.PCRs = append(p.PCRs, i)
	}
	p.PCRs = append(p.PCRs, extra...)
	slices.Sort(p.PCRs)
	p.PCRs = slices.Compact(p.PCRs)
	return p
}

// Verify runs attest.Verifier; every refusal becomes a failed result naming
// the reason. ak is nil on a device's first attestation: the key in the
// quote is then taken on trust for this device (it came over the device's
// own mutual-TLS connection or with its enrolment token).
func (a *AttestVerifier) Verify(ctx context.Context, deviceID string, ak []byte, software bool, req *api.AttestRequest) (api.AttestResult, error) {
	policy := a.Policy
	if policy == nil {
		policy = ClaimPolicy
	}
	pol, err := policy(ctx, deviceID, req)
	if errors.Is(err, attest.ErrPolicy) {
		return refused(err), nil
	}
	if err != nil {
		return api.AttestResult{}, fmt.Errorf("attestation policy for device %q: %w", deviceID, err)
	}
	if ak == nil {
		ak = req.AKPublic
	}
	akHash := sha256.Sum256(ak)
	var last *attest.Counters
	if a.Counters != nil {
		c, err := a.Counters.TPMCounters(ctx, deviceID)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return api.AttestResult{}, fmt.Errorf("attestation of device %q: %w", deviceID, err)
		case string(c.AKHash) == string(akHash[:]):
			last = &attest.Counters{ResetCount: c.ResetCount, RestartCount: c.RestartCount, Clock: c.Clock}
		}
	}
	res, err := a.V.Verify(ctx, attest.Request{
		DeviceID: deviceID,
		Quote:    &attest.Quote{Attest: req.Quote, Signature: req.Signature, AK: req.AKPublic, PCRs: req.PCRs},
		AK:       ak,
		Software: software,
		Policy:   pol,
		Last:     last,
		Nonce:    req.Nonce,
	})
	if err != nil {
		return refused(err), nil
	}
	if a.Counters != nil {
		c := res.Counters
		err := a.Counters.AdvanceTPMCounters(ctx, store.TPMCounters{DeviceID: deviceID, AKHash: akHash[:],
			ResetCount: c.ResetCount, RestartCount: c.RestartCount, Clock: c.Clock, Updated: res.At})
		if errors.Is(err, store.ErrStale) {
			// A later quote of this TPM was accepted since we read the
			// counters (on another hub): this one is older, so not attested.
			return refused(fmt.Errorf("verify quote from device %q: %v: %w", deviceID, err, attest.ErrCountersBackwards)), nil
		}
		if err != nil {
			return api.AttestResult{}, fmt.Errorf("attestation of device %q: %w", deviceID, err)
		}
	}
	return api.AttestResult{OK: true, Unchecked: pol.Unchecked, CheckedPCRs: checkedPCRs(pol)}, nil
}

// checkedPCRs are the PCRs a policy holds to expected values, the
// application PCR (the device's own claim) aside.
func checkedPCRs(p attest.Policy) []int {
	var out []int
	for i := range p.Expected {
		if i != attest.AppPCR {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

func refused(err error) api.AttestResult {
	return api.AttestResult{OK: false, Reasons: []string{attest.Reason(err) + ": " + err.Error()}}
}

// FleetPolicy builds each device's attestation policy from the fleet repo:
// the quote must cover the PCRs the device's rendered spec lists under
// attestation.pcrs (and whatever else it quoted), the PCR values the release
// the device claims to run lists for those PCRs, and AppPCR holding its
// claimed spec hash and release version. It keeps the last fleet that loaded
// without errors; Refresh reads it again.
type FleetPolicy struct {
	// Load reads the fleet repo: its files and a revision naming them (a
	// commit). Refresh skips parsing when the revision has not changed;
	// "" means always parse.
	Load   func(ctx context.Context) (FleetRevision, error)
	Logger *slog.Logger // nil discards

	mu      sync.Mutex // one refresh at a time
	started time.Time  // when the last refresh began, under mu
	cur     atomic.Pointer[loadedFleet]
}

// FleetRevision is one read of the fleet repo.
type FleetRevision struct {
	FS fs.FS
	// Revision is the commit; "" for a directory, which has none (and so
	// no rollouts: devices report commits).
	Revision string
	// Message is the commit message; rollout trailers are read from it.
	Message string
}

type loadedFleet struct {
	f   *spec.Fleet
	rev string
	msg string
	at  time.Time
}

// Current returns the fleet in use, its revision and commit message; a nil
// fleet before the first load.
func (p *FleetPolicy) Current() (*spec.Fleet, string, string) {
	if lf := p.cur.Load(); lf != nil {
		return lf.f, lf.rev, lf.msg
	}
	return nil, "", ""
}

// Revision returns the revision of the fleet in use, "" before the first load.
func (p *FleetPolicy) Revision() string {
	if lf := p.cur.Load(); lf != nil {
		return lf.rev
	}
	return ""
}

func (p *FleetPolicy) log() *slog.Logger {
	if p.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Logger
}

// Refresh loads the fleet. A fleet with errors is refused and the one in
// use kept, as an agent keeps its last good commit.
func (p *FleetPolicy) Refresh(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refresh(ctx)
}

// RefreshSince reads the fleet again unless a read began after t: many
// callers that saw the same news at once cause one read.
func (p *FleetPolicy) RefreshSince(ctx context.Context, t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started.After(t) {
		return nil
	}
	return p.refresh(ctx)
}

func (p *FleetPolicy) refresh(ctx context.Context) error {
	p.started = time.Now()
	fr, err := p.Load(ctx)
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	rev := fr.Revision
	if cur := p.cur.Load(); cur != nil && rev != "" && cur.rev == rev {
		return nil
	}
	f, err := spec.Load(fr.FS)
	if err != nil {
		return fmt.Errorf("fleet at %s: %w", shortRev(rev), err)
	}
	p.cur.Store(&loadedFleet{f: f, rev: rev, msg: fr.Message, at: time.Now()})
	p.log().Info("fleet loaded for attestation policy", "revision", rev, "devices", len(f.DeviceIDs()), "releases", len(f.ReleaseNames()))
	return nil
}

// Pokes is where Run learns of news for the fleet repo: a poke (from a Git
// webhook or an operator, on any hub sharing the database) raises LatestPoke.
type Pokes interface {
	LatestPoke(ctx context.Context) (int64, error)
}

// Run refreshes the fleet every interval, and within check of a new poke
// in pokes (nil: timer only), until ctx ends. Failures are logged and the
// fleet in use kept.
func (p *FleetPolicy) Run(ctx context.Context, pokes Pokes, interval, check time.Duration) {
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	if check <= 0 {
		check = 2 * time.Second
	}
	var seen int64
	if pokes != nil {
		seen, _ = pokes.LatestPoke(ctx)
	}
	next := time.Now().Add(interval)
	t := time.NewTicker(check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due := !time.Now().Before(next)
		if pokes != nil {
			if id, err := pokes.LatestPoke(ctx); err == nil && id != seen {
				seen, due = id, true
			}
		}
		if !due {
			continue
		}
		next = time.Now().Add(interval)
		if err := p.Refresh(ctx); err != nil && ctx.Err() == nil {
			p.log().Warn("fleet refresh failed; keeping the fleet in use", "revision", p.Revision(), "err", err)
		}
	}
}

// KnownDevice reports, as an error for the operator, a device the fleet in
// use does not list (no devices/<id> file); it is Options.KnownDevice.
func (p *FleetPolicy) KnownDevice(id string) error {
	lf := p.cur.Load()
	if lf == nil {
		return errors.New("the hub has not loaded the fleet repo yet; try again in a moment")
	}
	if slices.Contains(lf.f.DeviceIDs(), id) {
		return nil
	}
	return fmt.Errorf("device %q is not in the fleet repo the hub follows (--fleet, revision %s): add devices/%s.yaml, commit and push, then create the token (the hub reads the fleet again every --fleet-refresh, and soon after a poke)", id, shortRev(lf.rev), id)
}

// Policy is an AttestVerifier.Policy. A device the fleet cannot render, or
// one claiming a release the fleet does not list while its own release
// expects PCR values, is refused (attest.ErrPolicy). A device that claims no
// release at all (it has no A/B slots) while its spec names one with PCR
// values is refused only where its spec requires attestation; elsewhere its
// quote passes with those values listed in Policy.Unchecked.
func (p *FleetPolicy) Policy(_ context.Context, deviceID string, req *api.AttestRequest) (attest.Policy, error) {
	lf := p.cur.Load()
	if lf == nil {
		return attest.Policy{}, fmt.Errorf("the hub has not loaded the fleet repo yet: %w", attest.ErrPolicy)
	}
	d, err := lf.f.Render(deviceID)
	if err != nil {
		return attest.Policy{}, fmt.Errorf("device %q at fleet revision %s: %v: %w", deviceID, shortRev(lf.rev), err, attest.ErrPolicy)
	}
	pol := claimed(req, append([]int{attest.AppPCR}, d.Attestation.PCRs...))
	rel := releaseByVersion(lf.f, req.ReleaseVersion)
	switch {
	case rel != nil || d.Release == nil || len(d.Release.PCRs) == 0:
	case req.ReleaseVersion == "" && d.Attestation.Required:
		// A device with no A/B slots runs no release of the fleet's, so no
		// release's PCR values describe its boot; where attestation is
		// required the hub must vouch for the boot, and cannot.
		return attest.Policy{}, fmt.Errorf("device %q runs no release (it claims none: no A/B slots), so the PCR values release %q expects cannot be checked, and its spec requires attestation: %w",
			deviceID, d.Release.Name, attest.ErrPolicy)
	case req.ReleaseVersion == "":
		// The same device where attestation is not required: its quote is
		// still checked (key, nonce, counters, the PCRs the spec lists, its
		// spec hash), and the verdict says which values were not.
		pol.Unchecked = append(pol.Unchecked, fmt.Sprintf("PCR values of release %q not checked: the device runs no release (no A/B slots)", d.Release.Name))
	default:
		return attest.Policy{}, fmt.Errorf("device %q claims release version %q, which the fleet at %s does not list, so the PCR values release %q expects cannot be checked: %w",
			deviceID, req.ReleaseVersion, shortRev(lf.rev), d.Release.Name, attest.ErrPolicy)
	}
	if rel != nil {
		for k, v := range rel.PCRs {
			i, err := strconv.Atoi(k)
			b, herr := hex.DecodeString(v)
			if err != nil || herr != nil || len(b) != sha256.Size {
				return attest.Policy{}, fmt.Errorf("release %q: PCR %q: value %q is not a sha256 hex digest: %w", rel.Name, k, v, attest.ErrPolicy)
			}
			if slices.Contains(pol.PCRs, i) {
				pol.Expected[i] = b
			}
		}
	}
	return pol.WithApp(req.SpecHash, req.ReleaseVersion), nil
}

// releaseByVersion finds the fleet's release with that version, or nil.
func releaseByVersion(f *spec.Fleet, version string) *spec.Release {
	if version == "" {
		return nil
	}
	for _, n := range f.ReleaseNames() {
		if r := f.Release(n); r != nil && r.Version == version {
			return r
		}
	}
	return nil
}

func shortRev(rev string) string {
	switch {
	case rev == "":
		return "(directory)"
	case len(rev) > 12:
		return rev[:12]
	}
	return rev
}
