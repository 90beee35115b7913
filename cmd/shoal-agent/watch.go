package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/api"
	hubclient "github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/internal/backoff"
	"github.com/shoalfleet/shoal/provision"
	"github.com/shoalfleet/shoal/source"
	"github.com/shoalfleet/shoal/spec"
)

// identity is the opened device: its key signs receipts and enrolment
// requests, and with a TPM it attests at enrolment. Nil before it is opened.
type identity func() *device

// identity returns the opened device (nil before the parts are opened).
func (p *parts) identity() *device {
	if p.attester == nil {
		return nil
	}
	return &device{attester: p.attester, stateDir: p.stateDir, version: p.version, now: p.clock.Now}
}

// provisioner is the daemon's offline side: it watches the stick for
// bundles (provision.Watch), hands a bundle's commit to the next pass,
// reports the bundle's result as the "provision" stage, and sends a queued
// enrolment once the hub is reachable.
//
// It stands between the agent and the fleet repo (it is the agent's
// Fetcher), so a pass and a bundle never touch the repo at once.
type provisioner struct {
	cfg *agent.Config
	log *slog.Logger
	src *source.Source
	id  identity
	hub *lateHub

	mu       sync.Mutex // guards the fleet repo and the fields below
	pending  string     // commit a bundle applied, for the next pass
	last     *provision.Result
	enrolErr error // the last enrolment's refusal, reported until one succeeds

	// install installs a bundle's OS release (the update stage's updater);
	// nil when the device has no A/B update configured, and a bundle that
	// carries a release is then refused.
	install func(ctx context.Context, rel *spec.Release) error

	agent *agent.Agent
	wake  chan struct{} // a bundle was applied: look for a queued enrolment
	wg    sync.WaitGroup
}

// newProvisioner returns nil when there is nothing to do: no watched stick
// and no queued enrolment.
func newProvisioner(cfg *agent.Config, src *source.Source, id identity, log *slog.Logger) (*provisioner, error) {
	e, err := provision.ReadEnrolment(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("queued enrolment: %w", err)
	}
	if cfg.Provision.Watch == "" && e == nil {
		return nil, nil
	}
	return &provisioner{cfg: cfg, log: log.With("part", "provision"), src: src, id: id, hub: newLateHub(), wake: make(chan struct{}, 1)}, nil
}

// Fetch hands the pass a commit a bundle applied, else fetches as usual.
func (p *provisioner) Fetch(ctx context.Context, since string) (*source.Revision, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.pending; c != "" {
		p.pending = ""
		if c != since {
			rev, err := p.src.Open(c)
			if err == nil {
				return rev, nil
			}
			p.log.Warn("bundle commit unreadable; fetching instead", "commit", c, "err", err)
		}
	}
	return p.src.Fetch(ctx, since)
}

// ImportBundle imports a git bundle, for the agent's bundle_dir and for
// provision.Apply alike.
func (p *provisioner) ImportBundle(ctx context.Context, path, since string) (*source.Revision, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.src.ImportBundle(ctx, path, since)
}

// Open opens a commit of the fleet repo.
func (p *provisioner) Open(commit string) (*source.Revision, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.src.Open(commit)
}

// Name names the stage.
func (p *provisioner) Name() string { return "provision" }

// Converge reports the last bundle's result; the work was done by Apply.
func (p *provisioner) Converge(context.Context, agent.Target) (agent.StageResult, error) {
	p.mu.Lock()
	r, enrolErr := p.last, p.enrolErr
	p.mu.Unlock()
	var parts []string
	switch {
	case r == nil:
		parts = append(parts, "no bundle applied by this agent")
	case r.Err != nil:
		parts = append(parts, fmt.Sprintf("bundle %s refused (%s): %v", short(r.BundleHash), provision.Reason(r.Err), r.Err))
	default:
		s := fmt.Sprintf("bundle %s applied offline: commit %s", short(r.BundleHash), short(r.Commit))
		if r.Release != "" {
			s += ", release " + r.Release
		}
		s += fmt.Sprintf(", %d images", len(r.Images))
		parts = append(parts, s)
	}
	if r != nil && r.Receipt != "" {
		parts = append(parts, "receipt "+r.Receipt)
	}
	if enrolErr != nil {
		parts = append(parts, "queued enrolment refused: "+enrolErr.Error())
	}
	return agent.StageResult{Converged: true, Summary: strings.Join(parts, "; ")}, nil
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	if s == "" {
		return "-"
	}
	return s
}

// start runs the watch and the enrolment loop until ctx ends; wait waits for them.
func (p *provisioner) start(ctx context.Context, a *agent.Agent) {
	p.agent = a
	if p.cfg.Provision.Watch != "" {
		o, closeImages, err := p.applyOptions()
		if err != nil {
			p.log.Error("not watching for bundles", "err", err)
		} else {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer closeImages()
				p.log.Info("watching for bundles", "dir", p.cfg.Provision.Watch, "interval", p.cfg.Provision.Interval.D())
				_ = provision.Watch(ctx, provision.WatchOptions{Dir: p.cfg.Provision.Watch, Interval: p.cfg.Provision.Interval.D(), Apply: o, OnApply: p.onApply})
			}()
		}
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.enrolLoop(ctx)
	}()
}

func (p *provisioner) wait() { p.wg.Wait() }

func (p *provisioner) applyOptions() (provision.ApplyOptions, func(), error) {
	o := provision.ApplyOptions{StateDir: p.cfg.StateDir, DeviceID: p.cfg.DeviceID, Repo: p, NoReceipt: p.cfg.Provision.NoReceipt,
		TrustFirstBundle: p.cfg.Provision.TrustFirstBundle, Logger: p.log}
	closeImages := func() {}
	if f := p.cfg.Provision.BundleKeys; f != "" {
		ks, err := provision.ReadPublicKeys(f)
		if err != nil {
			return o, closeImages, fmt.Errorf("provision.bundle_keys: %w", err)
		}
		o.BundleKeys = ks
	}
	if p.cfg.Containers.Enabled {
		cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
		if err != nil {
			return o, closeImages, fmt.Errorf("docker: %w", err)
		}
		o.Images, closeImages = cli, func() { cli.Close() }
	}
	o.InstallRelease = p.install
	if p.id != nil {
		if d := p.id(); d != nil {
			o.Signer, o.KeyKind = d.key()
		}
	}
	if o.Signer == nil && !o.NoReceipt {
		p.log.Warn("no device key: receipts are written unsigned and the hub will refuse them")
	}
	return o, closeImages, nil
}

// onApply records what a look at the stick did and starts a pass: with the
// bundle's commit when one was applied, else forcing the stages (a "drift"
// pass) so the refusal is in the next report.
func (p *provisioner) onApply(rs []*provision.Result, err error) {
	applied := false
	p.mu.Lock()
	for _, r := range rs {
		if r == nil {
			continue
		}
		p.last = r
		if r.Err == nil {
			applied = true
			if r.Commit != "" {
				p.pending = r.Commit
			}
			p.log.Info("bundle applied", "bundle", short(r.BundleHash), "commit", r.Commit, "release", r.Release, "first", r.First, "receipt", r.Receipt)
		} else {
			p.log.Warn("bundle refused", "bundle", short(r.BundleHash), "reason", provision.Reason(r.Err), "err", r.Err, "receipt", r.Receipt)
		}
	}
	p.mu.Unlock()
	if err != nil && len(rs) == 0 {
		p.log.Warn("bundles not read", "dir", p.cfg.Provision.Watch, "err", err)
	}
	if applied {
		select {
		case p.wake <- struct{}{}:
		default:
		}
		p.agent.Trigger("provision")
		return
	}
	if len(rs) > 0 {
		p.agent.Trigger("drift")
	}
}

// enrolLoop sends a queued enrolment: at start and after each bundle, with
// backoff while the hub is unreachable. A refused token is reported and not
// retried until a bundle brings another, or retry_max has passed.
func (p *provisioner) enrolLoop(ctx context.Context) {
	bo := backoff.New(p.cfg.RetryMin.D(), p.cfg.RetryMax.D(), 0.2)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
		next := time.Duration(-1) // wait for a bundle
		e, err := provision.ReadEnrolment(p.cfg.StateDir)
		switch {
		case err != nil:
			p.log.Warn("queued enrolment unreadable", "err", err)
			next = bo.Next()
		case e != nil:
			err := p.enrol(ctx, e)
			switch {
			case ctx.Err() != nil:
				return
			case err == nil:
				bo.Reset()
				p.mu.Lock()
				p.enrolErr = nil
				p.mu.Unlock()
				// A forced pass: the trust stage attests now that it can.
				p.agent.Trigger("drift")
			case hubclient.Retryable(err):
				next = bo.Next()
				p.log.Info("hub unreachable; enrolment stays queued", "hub", e.HubURL, "err", err, "retry_in", next.Round(time.Millisecond))
			default:
				next = p.cfg.RetryMax.D()
				p.log.Error("queued enrolment refused", "hub", e.HubURL, "err", err)
				p.mu.Lock()
				p.enrolErr = err
				p.mu.Unlock()
				p.agent.Trigger("drift") // the refusal goes into the next report
			}
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		if next >= 0 {
			t.Reset(next)
		}
	}
}

// errNoKey: enrolment needs the device key.
var errNoKey = errors.New("no device key opened")

// enrol enrols with a queued token, as `shoal-agent enrol` does, keeps the
// certificate, drops the queued enrolment and starts reporting to the hub.
func (p *provisioner) enrol(ctx context.Context, e *provision.Enrolment) error {
	var d *device
	if p.id != nil {
		d = p.id()
	}
	if d == nil {
		return errNoKey
	}
	if e.HubCA == "" {
		return errors.New("the bundle pins no hub CA (shoal provision create --hub-ca-fingerprint); enrol with shoal-agent enrol")
	}
	en, err := enrolDevice(ctx, d, e.HubURL, e.Token, hubclient.EnrolOptions{CAFingerprint: e.HubCA})
	if err != nil {
		return err
	}
	if err := provision.RemoveEnrolment(p.cfg.StateDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.Warn("enrolled, but the queued enrolment could not be removed", "err", err)
	}
	cert := en.cert
	logf := p.log.Info
	if en.noVerify {
		logf = p.log.Warn // a TPM device the hub could not attest
	}
	logf("enrolled with the hub from the queued enrolment", "device", cert.DeviceID, "hub", e.HubURL, "how", en.how(), "not_after", cert.NotAfter)
	key, _ := d.key()
	cl, err := hubclient.New(hubclient.Options{Hub: e.HubURL, Key: key, Cert: cert, Logger: p.log, Now: d.now})
	if err != nil {
		return err
	}
	if p.hub.set(cl) {
		// Renewal runs from here on, as it does from the start for a
		// device enrolled before the daemon started.
		go renewLoop(ctx, cl, p.cfg.StateDir, p.log)
	}
	return nil
}

// lateHub is the hub client of a device that enrols while the agent runs:
// reports and poke polls wait until it has enrolled.
type lateHub struct {
	once  sync.Once
	ready chan struct{}
	c     *hubclient.Client
}

func newLateHub() *lateHub { return &lateHub{ready: make(chan struct{})} }

// set makes c the client, the first time; it reports whether it did.
func (h *lateHub) set(c *hubclient.Client) (took bool) {
	h.once.Do(func() { h.c, took = c, true; close(h.ready) })
	return took
}

// Report delivers a status report once the device has enrolled.
func (h *lateHub) Report(ctx context.Context, s api.Status) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-h.ready:
	}
	return h.c.Report(ctx, s)
}

// WaitPoke long-polls the hub once the device has enrolled.
func (h *lateHub) WaitPoke(ctx context.Context, after int64) (*api.Poke, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-h.ready:
	}
	return h.c.WaitPoke(ctx, after)
}

// errNotEnrolled: attestation waits for the device to enrol with the hub.
var errNotEnrolled = errors.New("not enrolled with the hub yet")

// Nonce asks the hub for an attestation nonce once the device has enrolled.
func (h *lateHub) Nonce(ctx context.Context) (*api.Nonce, error) {
	select {
	case <-h.ready:
		return h.c.Nonce(ctx)
	default:
		return nil, errNotEnrolled
	}
}

// Grant asks for a rollout grant once the device has enrolled; before, the
// hub is out of reach and the fleet's offline policy decides.
func (h *lateHub) Grant(ctx context.Context, req *api.GrantRequest) (*api.GrantResponse, error) {
	select {
	case <-h.ready:
		return h.c.Grant(ctx, req)
	default:
		return nil, errNotEnrolled
	}
}

// HubCA is the hub CA grants are checked against, once enrolled.
func (h *lateHub) HubCA() []byte {
	select {
	case <-h.ready:
		return h.c.HubCA()
	default:
		return nil
	}
}

// Attest sends a quote once the device has enrolled.
func (h *lateHub) Attest(ctx context.Context, req *api.AttestRequest) (*api.AttestResult, error) {
	select {
	case <-h.ready:
		return h.c.Attest(ctx, req)
	default:
		return nil, errNotEnrolled
	}
}
