package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/internal/backoff"
	"github.com/shoalfleet/shoal/reconcile"
	"github.com/shoalfleet/shoal/source"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// parts opens the device parts once and hands them to the agent: the
// stages, the hub client, their metrics and the Docker watch.
type parts struct {
	ctx context.Context

	once     sync.Once
	err      error
	stateDir string
	attester *attest.Attester
	tpm      io.Closer
	version  func() string // the release version the device runs, once the stages are built
	// clock is the device's bounded clock (NTP, and lower bounds from the
	// fleet's commits and releases): the trust stage checks it, and the hub
	// client checks the hub's certificate by it.
	clock      *attest.Clock
	hub        *client.Client
	artifacts  *http.Client // through the site relays' caches; nil: straight to origins
	collectors []prometheus.Collector
	containers *agent.ContainerStage
	watch      func(ctx context.Context, trigger func()) error
	closers    []io.Closer
}

func newParts(ctx context.Context) *parts { return &parts{ctx: ctx} }

// wiring returns the agentWiring that builds the real stages from the config.
func (p *parts) wiring() agentWiring {
	return agentWiring{
		Stages: p.stages,
		Reporter: func(cfg *agent.Config, log *slog.Logger) (agent.Reporter, error) {
			if err := p.open(cfg, log); err != nil || p.hub == nil {
				return nil, err
			}
			return p.hub, nil
		},
		Poker: func(cfg *agent.Config, log *slog.Logger) (agent.Poker, error) {
			if err := p.open(cfg, log); err != nil || p.hub == nil {
				return nil, err
			}
			return p.hub, nil
		},
		Granter: func(cfg *agent.Config, log *slog.Logger) (agent.Granter, error) {
			if err := p.open(cfg, log); err != nil {
				return nil, err
			}
			switch {
			case p.hub != nil:
				return p.hub, nil
			case cfg.HubURL != "" || len(cfg.Relays) > 0:
				// A hub, but no certificate yet: it cannot be asked.
				return notEnrolled{}, nil
			}
			return nil, nil
		},
		Collectors: func() []prometheus.Collector { return p.collectors },
		Started: func(ctx context.Context, a *agent.Agent, log *slog.Logger) {
			if p.hub != nil {
				go renewLoop(ctx, p.hub, p.stateDir, log)
			}
			if p.watch == nil {
				return
			}
			go func() {
				if err := p.watch(ctx, func() { a.Trigger("drift") }); err != nil && ctx.Err() == nil {
					log.Warn("docker event watch stopped", "err", err)
				}
			}()
		},
		Close:    p.close,
		Identity: p.identity,
	}
}

// renewLoop renews the device certificate once it is past its renewal time,
// and keeps the new one in stateDir. It wakes at the renewal time, and at
// least every 10 minutes (a clock stepped forward is noticed then), until
// ctx ends. The daemon runs it from the start, or from a queued enrolment's
// success.
func renewLoop(ctx context.Context, hub *client.Client, stateDir string, log *slog.Logger) {
	b := backoff.New(time.Minute, time.Hour, 0.2)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := min(max(time.Until(hub.RenewAfter()), time.Second), 10*time.Minute)
		if hub.NeedsRenewal() {
			c, err := hub.Renew(ctx)
			if err == nil {
				err = writeCertificate(stateDir, c)
			}
			if err != nil {
				log.Warn("certificate renewal failed; retrying", "err", err)
				next = b.Next()
			} else {
				log.Info("device certificate renewed", "not_after", c.NotAfter)
				b.Reset()
				// At most one renewal a minute, even if the hub's renewal
				// time is already past by this device's clock.
				next = min(max(time.Until(c.RenewAfter), time.Minute), 10*time.Minute)
			}
		}
		t.Reset(next)
	}
}

// open opens the identity (TPM or software key) and, once enrolled, the hub client.
func (p *parts) open(cfg *agent.Config, log *slog.Logger) error {
	p.once.Do(func() { p.err = p.doOpen(cfg, log) })
	return p.err
}

func (p *parts) doOpen(cfg *agent.Config, log *slog.Logger) error {
	p.stateDir = cfg.StateDir
	p.clock = deviceClock(cfg, log)
	source.UseClock(p.clock.Now) // https:// fleet repos too
	a, tpm, err := openAttester(p.ctx, cfg, log)
	if err != nil {
		return err
	}
	p.attester, p.tpm = a, tpm
	p.collectors = append(p.collectors, a.Collectors()...)
	if cfg.HubURL == "" && len(cfg.Relays) == 0 {
		return nil
	}
	cert, err := readCertificate(cfg.StateDir)
	if errors.Is(err, os.ErrNotExist) {
		log.Warn("not enrolled with the hub yet: reports stay queued (shoal-agent enrol --hub URL --token T)", "hub", cfg.HubURL)
		return nil
	}
	if err != nil {
		return err
	}
	p.hub, err = client.New(client.Options{Hub: cfg.HubURL, Relays: cfg.Relays, Key: a.Signer(), Cert: cert, Logger: log, Now: p.clock.Now})
	if err != nil {
		return err
	}
	if len(cfg.Relays) > 0 {
		// The relays' fleet repo mirrors ask for the device's certificate.
		hub := p.hub
		if err := source.UseClientCertificate([]byte(cert.CA), hub.TLSCertificate); err != nil {
			return err
		}
		p.artifacts = &http.Client{Transport: hub.ArtifactTransport(nil)}
	}
	return nil
}

// deviceClock returns the device's bounded clock. Until a pass sets its
// bounds, the commit the device applied last is one: a device that boots
// with its clock at 1970 still trusts the hub's certificate.
func deviceClock(cfg *agent.Config, log *slog.Logger) *attest.Clock {
	c := attest.NewClock(attest.ClockOptions{Logger: log.With("stage", "trust")})
	if st, err := agent.ReadState(cfg.StateDir); err == nil && !st.Applied.CommitTime.IsZero() {
		c.SetLowerBound("fleet-commit", st.Applied.CommitTime)
	}
	return c
}

func (p *parts) stages(cfg *agent.Config, log *slog.Logger) ([]agent.Stage, error) {
	if err := p.open(cfg, log); err != nil {
		return nil, err
	}
	sink := &collectorSink{}
	var stages []agent.Stage
	if cfg.Containers.Enabled {
		cli, err := reconcile.NewClient()
		if err != nil {
			return nil, fmt.Errorf("docker engine: %w", err)
		}
		p.closers = append(p.closers, cli)
		r, err := reconcile.New(cli, reconcile.Options{
			Prefix:     cfg.Containers.Prefix,
			ImageCache: filepath.Join(cfg.StateDir, "images"),
			StateFile:  filepath.Join(cfg.StateDir, "containers.json"),
			Parallel:   cfg.Containers.Parallel,
			HTTPClient: p.artifacts,
			Logger:     log.With("stage", "containers"),
			Registerer: sink,
		})
		if err != nil {
			return nil, err
		}
		p.containers = &agent.ContainerStage{R: r}
		p.watch = r.Watch
		stages = append(stages, p.containers)
	}
	clock := p.clock
	sink.collectors = append(sink.collectors, clock.Collectors()...)
	trust := &agent.TrustStage{Clock: clock, Attester: p.attester}
	if p.hub != nil {
		trust.Hub = p.hub
	}
	stages = append(stages, trust)
	u, version, err := newUpdater(cfg, log, p.artifacts)
	if err != nil {
		return nil, err
	}
	trust.RunningVersion, p.version = version, version
	if u == nil {
		// No A/B slots: the stage says so about any release the spec names.
		stages = append(stages, &agent.UpdateStage{Logger: log.With("stage", "update")})
	} else {
		sink.collectors = append(sink.collectors, u.Collectors()...)
		containers := p.containers
		stages = append(stages, &agent.UpdateStage{U: u, GateFor: func(d *spec.Device) updater.Gate {
			g := attest.NewGate(attest.ClockCheck(clock, d.Update.OfflineOK),
				attest.AttestationCheck(d.Attestation.Required, trust.Attested))
			if containers != nil {
				g.Add(attest.ContainersCheck(containers.Healthy))
			}
			return g.Check
		}})
	}
	p.collectors = append(p.collectors, sink.collectors...)
	return stages, nil
}

func (p *parts) close() {
	for _, c := range p.closers {
		c.Close()
	}
	if p.attester != nil {
		p.attester.Close()
	}
	if p.tpm != nil {
		p.tpm.Close()
	}
}

// newUpdater builds the A/B updater the config names (nil without one) and
// the release version the device runs by it: the committed release, else
// the configured running version; "" without A/B updates.
func newUpdater(cfg *agent.Config, log *slog.Logger, hc *http.Client) (*updater.Updater, func() string, error) {
	if cfg.Update.Bootloader == "" {
		return nil, func() string { return "" }, nil
	}
	o, err := cfg.Update.Options(filepath.Join(cfg.StateDir, "update"))
	if err != nil {
		return nil, nil, err
	}
	o.Logger = log.With("stage", "update")
	if hc != nil {
		o.HTTPClient = hc
	}
	u, err := updater.New(o)
	if err != nil {
		return nil, nil, err
	}
	return u, func() string {
		st, err := u.Status(context.Background())
		if err != nil || st.Committed == nil {
			return o.RunningVersion
		}
		return st.Committed.Version
	}, nil
}

// openAttester opens the device identity the config names.
func openAttester(ctx context.Context, cfg *agent.Config, log *slog.Logger) (*attest.Attester, io.Closer, error) {
	o := attest.Options{StateDir: filepath.Join(cfg.StateDir, "attest"), AllowSoftware: cfg.Trust.AllowSoftware, Logger: log}
	var tpm io.Closer
	switch t := cfg.Trust.TPM; {
	case t == "none":
		// No TPM: a path that does not exist makes the attester use software keys.
		o.DevicePath, o.AllowSoftware = filepath.Join(cfg.StateDir, "attest", "no-tpm"), true
	case strings.HasPrefix(t, "tcp:"):
		c, err := attest.DialTCP(ctx, strings.TrimPrefix(t, "tcp:"))
		if err != nil {
			return nil, nil, fmt.Errorf("trust: %w", err)
		}
		o.TPM, tpm = c, c
	case isSimulator(t):
		c, err := openSimulator(cfg.StateDir, t, log)
		if err != nil {
			return nil, nil, fmt.Errorf("trust: %w", err)
		}
		o.TPM, tpm = c, c
	default:
		o.DevicePath = t
	}
	a, err := attest.New(ctx, o)
	if err != nil {
		if tpm != nil {
			tpm.Close()
		}
		return nil, nil, fmt.Errorf("trust: %w", err)
	}
	return a, tpm, nil
}

// certificatePath is where the hub's certificate for this device is kept.
func certificatePath(stateDir string) string {
	return filepath.Join(stateDir, "hub", "certificate.json")
}

func readCertificate(stateDir string) (*api.Certificate, error) {
	b, err := os.ReadFile(certificatePath(stateDir))
	if err != nil {
		return nil, err
	}
	var c api.Certificate
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", certificatePath(stateDir), err)
	}
	return &c, c.Validate()
}

func writeCertificate(stateDir string, c *api.Certificate) error {
	if err := os.MkdirAll(filepath.Dir(certificatePath(stateDir)), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(certificatePath(stateDir), b, 0o600)
}

// collectorSink is a prometheus.Registerer that keeps what is registered,
// so a part's metrics can be served on the agent's own registry.
type collectorSink struct{ collectors []prometheus.Collector }

func (s *collectorSink) Register(c prometheus.Collector) error {
	s.collectors = append(s.collectors, c)
	return nil
}

func (s *collectorSink) MustRegister(cs ...prometheus.Collector) {
	s.collectors = append(s.collectors, cs...)
}

func (s *collectorSink) Unregister(prometheus.Collector) bool { return false }

// notEnrolled is the Granter of a device with a hub configured that has not
// enrolled: every grant request fails, and the fleet's offline policy decides.
type notEnrolled struct{}

func (notEnrolled) Grant(context.Context, *api.GrantRequest) (*api.GrantResponse, error) {
	return nil, errNotEnrolled
}

func (notEnrolled) HubCA() []byte { return nil }
