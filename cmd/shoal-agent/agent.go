package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/spec"
)

// agentWiring supplies the parts the agent drives beyond the fleet repo:
// the stages (containers, OS update, attestation) and the hub client. Each
// func may be nil; it is called once the config is loaded.
type agentWiring struct {
	Stages   func(cfg *agent.Config, log *slog.Logger) ([]agent.Stage, error)
	Reporter func(cfg *agent.Config, log *slog.Logger) (agent.Reporter, error)
	Poker    func(cfg *agent.Config, log *slog.Logger) (agent.Poker, error)
	// Granter asks for rollout grants; nil or a nil result: no hub to ask.
	Granter func(cfg *agent.Config, log *slog.Logger) (agent.Granter, error)
	// Collectors are the parts' metrics, read after the funcs above ran.
	Collectors func() []prometheus.Collector
	// Started runs once the daemon's agent exists (e.g. to watch Docker events).
	Started func(ctx context.Context, a *agent.Agent, log *slog.Logger)
	// Close releases what the funcs above opened.
	Close func()
	// Identity returns the device once the funcs above opened it; nil:
	// receipts from the watched stick are unsigned and a queued enrolment
	// cannot be sent.
	Identity func() *device
}

// agentExitError carries an exit code to main.
type agentExitError struct {
	code int
	msg  string
}

func (e agentExitError) Error() string { return e.msg }
func (e agentExitError) ExitCode() int { return e.code }

// agentRunE binds --config and --once to root and returns the RunE that runs
// the agent: as a daemon until SIGTERM, or for one pass with --once.
func agentRunE(root *cobra.Command, w agentWiring) func(*cobra.Command, []string) error {
	var once bool
	root.PersistentFlags().String("config", agent.DefaultConfigPath, "the agent config `file` (YAML; every field: shoal-agent config --defaults)")
	root.Flags().BoolVar(&once, "once", false, "run one pass and exit: 0 converged, 3 not converged, 1 failed")
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unexpected argument %q", args[0])}
		}
		return runAgent(cmd.Context(), cmd, w, once)
	}
}

// newAgentRunCmd is `shoal-agent run`: the daemon, like the bare command.
func newAgentRunCmd(w agentWiring) *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent (the same as shoal-agent with no command)",
		Long: `run runs the agent until SIGTERM or SIGINT, which stop it cleanly; SIGHUP
starts a pass at once. Under systemd (Type=notify) it reports READY=1 after
the first pass and WATCHDOG=1 while its loop is alive. With --once it runs
one pass and exits: 0 converged, 3 not converged, 1 failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAgent(cmd.Context(), cmd, w, once)
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "run one pass and exit: 0 converged, 3 not converged, 1 failed")
	return cmd
}

func configFlag(cmd *cobra.Command) string {
	if f := cmd.Flag("config"); f != nil {
		return f.Value.String()
	}
	return agent.DefaultConfigPath
}

func newAgentLogger(cfg *agent.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	o := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

func runAgent(ctx context.Context, cmd *cobra.Command, w agentWiring, once bool) error {
	cfg, err := agent.LoadConfig(configFlag(cmd))
	if err != nil {
		return err
	}
	log := newAgentLogger(cfg, cmd.ErrOrStderr())
	src, err := agent.SourceFromConfig(cfg, log)
	if err != nil {
		return err
	}
	o := agent.Options{Config: cfg, Source: src, Logger: log}
	if w.Stages != nil {
		if o.Stages, err = w.Stages(cfg, log); err != nil {
			return err
		}
	}
	if w.Reporter != nil {
		if o.Reporter, err = w.Reporter(cfg, log); err != nil {
			return err
		}
	}
	if w.Poker != nil && !once {
		if o.Poker, err = w.Poker(cfg, log); err != nil {
			return err
		}
	}
	if w.Granter != nil {
		if o.Granter, err = w.Granter(cfg, log); err != nil {
			return err
		}
	}
	// The stick and a queued enrolment: the daemon only.
	var prov *provisioner
	if !once {
		if prov, err = newProvisioner(cfg, src, w.Identity, log); err != nil {
			return err
		}
	}
	if prov != nil {
		// A bundle's OS release goes through the update stage's updater:
		// its own signature check, and its lock keeps the install and a
		// pass's update step apart.
		for _, s := range o.Stages {
			if us, ok := s.(*agent.UpdateStage); ok && us.U != nil {
				prov.install = func(ctx context.Context, rel *spec.Release) error {
					_, err := us.U.Install(ctx, rel, spec.UpdatePolicy{BootLimit: 3})
					return err
				}
			}
		}
		o.Source = prov
		o.Stages = append([]agent.Stage{prov}, o.Stages...)
		if o.Reporter == nil {
			o.Reporter, o.Poker = prov.hub, prov.hub
			if o.Granter != nil {
				o.Granter = prov.hub
			}
			// A device that enrols while the daemon runs attests once it has.
			for _, s := range o.Stages {
				if ts, ok := s.(*agent.TrustStage); ok && ts.Attester != nil && ts.Hub == nil {
					ts.Hub = prov.hub
				}
			}
		}
	}
	if w.Close != nil {
		defer w.Close()
	}
	if w.Collectors != nil {
		o.Collectors = w.Collectors()
	}
	a, err := agent.New(o)
	if err != nil {
		return err
	}
	if once {
		rep, err := a.Pass(ctx, "once")
		if err != nil {
			return err
		}
		if o.Reporter != nil {
			fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if _, err := a.Outbox().Flush(fctx, o.Reporter); err != nil {
				log.Warn("status not delivered; it stays queued", "err", err)
			}
			cancel()
		}
		st := a.State()
		printAgentState(cmd.OutOrStdout(), cfg, &st, nil)
		if !rep.Converged() {
			return agentExitError{code: exitUnready, msg: fmt.Sprintf("not converged: %s", rep.Status.State)}
		}
		return nil
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: starting a pass")
				a.Trigger("sighup")
			}
		}
	}()
	if w.Started != nil {
		w.Started(ctx, a, log)
	}
	if prov != nil {
		prov.start(ctx, a)
		defer prov.wait()
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.Serve(ctx) }()
	log.Info("agent started", "repo", src.URL(), "state_dir", cfg.StateDir, "metrics", cfg.MetricsAddr)
	err = a.Run(ctx)
	cancel()
	<-done
	if serr := <-serveErr; serr != nil && err == nil {
		err = serr
	}
	log.Info("agent stopped")
	return err
}

// newAgentStatusCmd is `shoal-agent status`: where the device stands, read from the state dir.
func newAgentStatusCmd() *cobra.Command {
	var asJSON bool
	var stateDir string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print where this device stands: applied and attempted commit, problems, stages, outbox",
		Long: `status reads the state dir (state.json and outbox/) and prints where the
device stands. It works while the agent runs and changes nothing.
Exit codes: 0 converged, 3 not converged, 1 no state or unreadable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg *agent.Config
			if stateDir == "" {
				c, err := agent.LoadConfig(configFlag(cmd))
				if err != nil {
					return err
				}
				cfg, stateDir = c, c.StateDir
			}
			st, err := agent.ReadState(stateDir)
			if err != nil {
				return err
			}
			ob, err := agent.ReadOutboxStats(filepath.Join(stateDir, "outbox"))
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(struct {
					*agent.State
					Outbox agent.OutboxStats `json:"outbox"`
				}{st, ob}); err != nil {
					return err
				}
			} else {
				printAgentState(cmd.OutOrStdout(), cfg, st, &ob)
			}
			if st.LastPass == nil {
				return agentExitError{code: exitFailed, msg: "no pass has run yet"}
			}
			if !st.LastPass.Converged() {
				return agentExitError{code: exitUnready, msg: fmt.Sprintf("not converged: %s", st.LastPass.Status.State)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print state.json and the outbox counts as JSON")
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "read this state dir instead of the config's")
	return cmd
}

func printAgentState(w io.Writer, cfg *agent.Config, st *agent.State, ob *agent.OutboxStats) {
	p := func(k, format string, args ...any) { fmt.Fprintf(w, "%-10s %s\n", k, fmt.Sprintf(format, args...)) }
	if cfg != nil {
		p("device", "%s", cfg.DeviceID)
	}
	if st.LastPass == nil {
		p("state", "no pass yet")
		return
	}
	lp := st.LastPass
	p("state", "%s (pass %d at %s, trigger %s, took %s)", lp.Status.State, st.Passes,
		lp.Status.Time.Local().Format(time.RFC3339), lp.Trigger, lp.Duration.Round(time.Millisecond))
	p("applied", "%s spec %s (since %s)", orNone(st.Applied.Commit), shortHash(st.Applied.SpecHash), st.Applied.Time.Local().Format(time.RFC3339))
	if st.Attempted.Commit != "" && st.Attempted.Commit != st.Applied.Commit {
		p("attempted", "%s", st.Attempted.Commit)
	}
	if pr := lp.Status.Problem; pr != nil {
		p("problem", "%s %s", pr.Kind, pr.Reason)
		for _, l := range strings.Split(pr.Message, "\n") {
			fmt.Fprintf(w, "%-10s   %s\n", "", l)
		}
	}
	names := make([]string, 0, len(lp.Stages))
	for name := range lp.Stages {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s := lp.Stages[name]
		what := "not run (nothing new)"
		if s.Ran {
			what = "ran"
		}
		line := fmt.Sprintf("%s: converged=%v, %s", name, s.Converged, what)
		if s.Error != "" {
			line += ": " + s.Error
		} else if s.Summary != "" {
			line += ": " + s.Summary
		}
		p("stage", "%s", line)
	}
	for _, a := range lp.Status.Apps {
		p("app", "%s %s %s %s", a.Name, a.State, a.Health, a.Image)
	}
	if ob != nil {
		p("outbox", "%d queued, last seq %d, %d dropped", ob.Queued, ob.Seq, ob.Dropped)
	}
	if r := lp.Resources; r != nil {
		line := fmt.Sprintf("load %.2f/%d cpus, mem %s free of %s, up %s", r.Load1, r.CPUs, mib(r.MemAvail), mib(r.MemTotal), r.Uptime)
		if r.StateDisk != nil {
			line += fmt.Sprintf(", state disk %s free of %s", mib(r.StateDisk.Free), mib(r.StateDisk.Total))
		}
		if r.DockerDisk != nil {
			line += fmt.Sprintf(", docker disk %s free of %s", mib(r.DockerDisk.Free), mib(r.DockerDisk.Total))
		}
		p("resources", "%s", line)
	}
	p("agent", "%s", lp.Status.Agent)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func shortHash(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return orNone(s)
}

func mib(b uint64) string { return fmt.Sprintf("%dMiB", b>>20) }

// newAgentConfigCmd is `shoal-agent config`: --defaults prints the documented
// default config; with no flag it checks the config file and prints it resolved.
func newAgentConfigCmd() *cobra.Command {
	var defaults bool
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Print the documented default config (--defaults), or check the config file",
		Long: `config --defaults prints every field with its default and what it does.

With no flag, config reads the file --config names as the daemon does and
prints it resolved (defaults filled in) as JSON. Every problem is reported,
not only the first: YAML syntax, repeated keys, unknown fields (with the
nearest known name), values of the wrong type and values out of range, each
as file:line:col. Configuration management can run it on a rendered file
before installing it (the Ansible role's validate:).

Exit codes: 0 valid, 1 invalid or unreadable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if defaults {
				_, err := io.WriteString(cmd.OutOrStdout(), agent.DefaultsYAML)
				return err
			}
			cfg, err := agent.LoadConfig(configFlag(cmd))
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(cfg)
		},
	}
	cmd.Flags().BoolVar(&defaults, "defaults", false, "print every field with its default and what it does")
	return cmd
}
