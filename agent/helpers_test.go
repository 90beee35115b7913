package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/source"
)

// fleetFiles is a small valid fleet repo with device d1.
func fleetFiles() map[string]string {
	return map[string]string{
		"fleet.cue": "defaults: time: servers: [\"ntp.example:123\"]\nspec: network: \"plant\"\n",
		"groups/web.yaml": `selector:
  match_labels:
    role: web
spec:
  apps:
    web: {}
`,
		"devices/d1.yaml": "labels:\n  role: web\n",
		"devices/d2.yaml": "labels:\n  role: web\n",
		"apps/web.yaml": `image:
  ref: example/web:1.0@sha256:` + strings.Repeat("a", 64) + `
ports:
  - host: 8080
    container: 80
env:
  LOG: info
`,
	}
}

// gitRepo is a real fleet repository made with the git CLI.
type gitRepo = testenv.Repo

func newGitRepo(t testing.TB) *gitRepo { return testenv.NewRepo(t) }

// fakeStage records Converge calls; fail makes it return an error.
type fakeStage struct {
	name string
	mu   sync.Mutex
	n    int
	last string
	fail error
	// apps, when set, replaces the apps reported; unconverged reports the
	// stage as not converged with no error.
	apps        []api.AppStatus
	unconverged bool
}

func (s *fakeStage) Name() string { return s.name }

func (s *fakeStage) Converge(_ context.Context, t Target) (StageResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	s.last = t.Device.Hash()
	if s.fail != nil {
		return StageResult{}, s.fail
	}
	apps := make([]api.AppStatus, 0, len(t.Device.Apps))
	for _, a := range t.Device.Apps {
		apps = append(apps, api.AppStatus{Name: a.Name, Image: a.Image.Ref, State: "running"})
	}
	if s.apps != nil {
		apps = s.apps
	}
	return StageResult{Converged: !s.unconverged, Summary: "ok", Apps: apps}, nil
}

func (s *fakeStage) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func testConfig(t testing.TB, url string) *Config {
	cfg := DefaultConfig()
	cfg.DeviceID = "d1"
	cfg.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.Repo.URL = url
	cfg.MetricsAddr = ""
	cfg.RetryMin = Duration(5 * time.Millisecond)
	cfg.RetryMax = Duration(50 * time.Millisecond)
	cfg.DockerRoot = ""
	return &cfg
}

func newTestAgent(t testing.TB, cfg *Config, stages ...Stage) (*Agent, *syncWriter) {
	t.Helper()
	logs := &syncWriter{w: &bytes.Buffer{}}
	log := slog.New(slog.NewTextHandler(logs, nil))
	src, err := SourceFromConfig(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Config: cfg, Source: src, Stages: stages, Logger: log, Notify: func(string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return a, logs
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// waitFor polls cond until it holds or fails t after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-time.After(5 * time.Millisecond)
	}
}

var _ = errors.New
var _ = source.ErrUnreachable

// startGitDaemon serves base over git:// on loopback and returns its address.
func startGitDaemon(t testing.TB, base string) string {
	t.Helper()
	bin := "/usr/lib/git-core/git-daemon"
	if _, err := os.Stat(bin); err != nil {
		testenv.Missing(t, "git-daemon", "apt-get install git")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "--reuseaddr", "--export-all", "--base-path="+base,
		"--listen=127.0.0.1", "--port="+strconv.Itoa(port), base)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(port)
	waitFor(t, 10*time.Second, "git daemon listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}
