package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// wiredRoot is the root command with the agent's run, status and config
// commands, as main wires them.
func wiredRoot() *cobra.Command {
	root := newRootCmd()
	if root.RunE == nil {
		root.RunE = agentRunE(root, agentWiring{})
	}
	have := map[string]bool{}
	for _, c := range root.Commands() {
		have[c.Name()] = true
	}
	for _, c := range []*cobra.Command{newAgentRunCmd(agentWiring{}), newAgentStatusCmd(), newAgentConfigCmd()} {
		if !have[c.Name()] {
			root.AddCommand(c)
		}
	}
	return root
}

// TestAgentProcess is the shoal-agent process the tests below start; it does
// nothing unless started by them.
func TestAgentProcess(t *testing.T) {
	argv := os.Getenv("SHOAL_AGENT_ARGS")
	if os.Getenv("SHOAL_AGENT_IDLE") == "1" {
		// The baseline for TestIdleRSS: the same binary, every library
		// linked, doing nothing.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		<-ctx.Done()
		stop()
		os.Exit(0)
	}
	if argv == "" {
		return // a child only when started by the tests below
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := wiredRoot()
	if os.Getenv("SHOAL_AGENT_WIRED") == "1" {
		root = newWiredRootCmd(ctx) // every subcommand, as main wires them
	}
	root.SetArgs(strings.Split(argv, "\x1f"))
	err := root.ExecuteContext(ctx)
	stop()
	code := exitOK
	var ue usageError
	var ce interface{ ExitCode() int }
	switch {
	case err == nil:
	case errors.As(err, &ue):
		code = exitUsage
	case errors.As(err, &ce):
		code = ce.ExitCode()
	default:
		code = exitFailed
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "shoal-agent:", err)
	}
	os.Exit(code)
}

func agentCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestAgentProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SHOAL_AGENT_ARGS="+strings.Join(args, "\x1f"))
	return cmd
}

func runAgentCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := agentCmd(args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

// fleet is a real fleet repository made with the git CLI.
type fleet struct{ *testenv.Repo }

func newFleet(t *testing.T) *fleet { return &fleet{testenv.NewRepo(t)} }

// commit writes files and commits them.
func (f *fleet) commit(files map[string]string) { f.Commit(files, "change") }

// head is the newest commit.
func (f *fleet) head() string { return f.Git("rev-parse", "HEAD") }

var digest = strings.Repeat("a", 64)

func validFleet() map[string]string {
	return map[string]string{
		"fleet.cue":       "spec: network: \"plant\"\n",
		"devices/d1.yaml": "labels:\n  role: web\n",
		"groups/web.yaml": "selector:\n  match_labels:\n    role: web\nspec:\n  apps:\n    web: {}\n",
		"apps/web.yaml":   "image:\n  ref: example/web:1.0@sha256:" + digest + "\n",
	}
}

func writeConfig(t *testing.T, repoURL, metricsAddr string) (string, string) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	p := filepath.Join(dir, "agent.yaml")
	cfg := fmt.Sprintf("device_id: d1\nstate_dir: %s\nrepo:\n  url: %s\nmetrics_addr: %q\ndocker_root: \"\"\npoll_interval: 1h\n", state, repoURL, metricsAddr)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, state
}

func TestAgentOnceAndStatus(t *testing.T) {
	f := newFleet(t)
	f.commit(validFleet())
	cfgPath, _ := writeConfig(t, "file://"+f.Dir, "")

	out, code := runAgentCmd(t, "--config", cfgPath, "--once")
	if code != exitOK || !strings.Contains(out, "converged") {
		t.Fatalf("--once on a valid fleet: exit %d\n%s", code, out)
	}
	out, code = runAgentCmd(t, "--config", cfgPath, "status")
	if code != exitOK || !strings.Contains(out, "state      converged") || !strings.Contains(out, "outbox     1 queued") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}

	f.commit(map[string]string{"apps/web.yaml": "image:\n  ref: example/web:1.0@sha256:" + digest + "\nports:\n  - host: eighty\n"})
	out, code = runAgentCmd(t, "--config", cfgPath, "--once")
	if code != exitUnready || !strings.Contains(out, "stalled spec-invalid") || !strings.Contains(out, "apps/web.yaml:4") {
		t.Fatalf("--once on an invalid commit: exit %d (want %d)\n%s", code, exitUnready, out)
	}
	out, code = runAgentCmd(t, "--config", cfgPath, "status", "--json")
	var st struct {
		agent.State
		Outbox agent.OutboxStats `json:"outbox"`
	}
	if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "}")+1]), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if code != exitUnready || st.Applied.Commit == "" || st.Attempted.Commit == st.Applied.Commit || st.Outbox.Queued != 2 {
		t.Fatalf("status --json: exit %d %+v", code, st)
	}
}

func TestAgentConfigAndHelp(t *testing.T) {
	out, code := runAgentCmd(t, "config", "--defaults")
	if code != 0 || out != agent.DefaultsYAML {
		t.Fatalf("config --defaults: exit %d, output differs from agent.DefaultsYAML", code)
	}
	out, code = runAgentCmd(t, "--help")
	for _, want := range []string{"--once", "--config", "status", "config", "Exit codes"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("--help lacks %q:\n%s", want, out)
		}
	}
	bad := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(bad, []byte("device_id: d1\nrepo:\n  url: x\n  brnach: main\n"), 0o600)
	out, code = runAgentCmd(t, "--config", bad, "config")
	if code != exitFailed || !strings.Contains(out, "agent.yaml:4:3: unknown field repo.brnach") {
		t.Fatalf("config check of a typo: exit %d\n%s", code, out)
	}
	if _, code := runAgentCmd(t, "--no-such-flag"); code != exitUsage {
		t.Fatalf("bad flag: exit %d, want %d", code, exitUsage)
	}
}

func TestAgentDaemonSIGHUPAndSIGTERM(t *testing.T) {
	f := newFleet(t)
	f.commit(validFleet())
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cfgPath, _ := writeConfig(t, "file://"+f.Dir, addr)
	cmd := agentCmd("--config", cfgPath)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	passes := func() int {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		var h struct{ Passes int }
		b, _ := io.ReadAll(resp.Body)
		json.Unmarshal(b, &h)
		return h.Passes
	}
	waitUntil(t, "the first pass", func() bool { return passes() == 1 })
	cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, "a pass after SIGHUP", func() bool { return passes() == 2 })
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `shoal_agent_passes_total{state="converged"} 2`) {
		t.Fatalf("metrics after two passes:\n%s", b)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no exit 15s after SIGTERM\n%s", out.String())
	}
	if !strings.Contains(out.String(), "agent stopped") {
		t.Fatalf("no clean stop logged:\n%s", out.String())
	}
}

// waitUntil polls cond until it holds; the deadline is generous because the
// machine running the tests may be loaded many times over (a daemon's
// enrolment and attestation took over 20s at a load average of 30).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(20 * time.Millisecond)
	}
}

func vmRSS(t *testing.T, pid int) uint64 { return procStatus(t, pid, "VmRSS") }

func procStatus(t *testing.T, pid int, key string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			var kb uint64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	t.Fatal("no " + key)
	return 0
}

// TestIdleRSS runs the agent on the example fleet repo and measures its
// resident memory once idle after a full pass, against the same binary
// started and doing nothing.
func TestIdleRSS(t *testing.T) {
	f := newFleet(t)
	files := map[string]string{}
	root := "../../fleet-repo-example"
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		files[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	f.commit(files)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cfgPath, _ := writeConfig(t, "file://"+f.Dir, addr)
	b, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, []byte(strings.Replace(string(b), "device_id: d1", "device_id: gw-01", 1)), 0o600)

	base := exec.Command(os.Args[0], "-test.run=^TestAgentProcess$")
	base.Env = append(os.Environ(), "SHOAL_AGENT_IDLE=1")
	if err := base.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { base.Process.Kill(); base.Wait() })

	cmd := agentCmd("--config", cfgPath)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitUntil(t, "the first pass", func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var h struct {
			Passes    int
			Converged bool
		}
		json.NewDecoder(resp.Body).Decode(&h)
		return h.Passes == 1
	})
	st, _ := agent.ReadState(filepath.Join(filepath.Dir(cfgPath), "state"))
	if st == nil || st.LastPass == nil || !st.LastPass.Converged() {
		t.Fatalf("the pass on the example fleet did not converge: %+v\n%s", st, out.String())
	}
	mib := func(b uint64) float64 { return float64(b) / (1 << 20) }
	agentRSS, baseRSS := vmRSS(t, cmd.Process.Pid), vmRSS(t, base.Process.Pid)
	agentAnon, baseAnon := procStatus(t, cmd.Process.Pid, "RssAnon"), procStatus(t, base.Process.Pid, "RssAnon")
	t.Logf("idle after a full pass on the example fleet: RSS %.1f MiB (anon %.1f); same binary doing nothing: RSS %.1f MiB (anon %.1f)",
		mib(agentRSS), mib(agentAnon), mib(baseRSS), mib(baseAnon))
	// This is the test binary (testing and every test dependency linked), so
	// the bound is on what a pass leaves behind: memory it allocated and kept.
	// The stripped release binary's absolute figure is in docs/bench/agent.md.
	if agentAnon > baseAnon+6<<20 {
		t.Errorf("a pass left %.1f MiB of anonymous memory resident, want under 6 MiB", mib(agentAnon-baseAnon))
	}
}
