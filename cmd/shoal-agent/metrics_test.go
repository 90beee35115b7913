package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestAgentMetricsLintClean runs the agent as main wires it (containers on a
// real Docker Engine, A/B updates on a GRUB env, the clock and a software
// key) and checks its live /metrics with Prometheus' promtool.
func TestAgentMetricsLintClean(t *testing.T) {
	testenv.LookPath(t, "promtool", "prometheus")
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	d := newABDevice(t, 1<<10)
	// A fleet with no apps: the container stage runs and has nothing to do.
	f := newFleet(t)
	f.commit(map[string]string{"fleet.cue": "spec: {}\n", "devices/d1.yaml": "labels:\n  role: web\n"})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cfg := d.write(t, "agent.yaml", []byte(fmt.Sprintf(`device_id: d1
state_dir: %s
repo:
  url: %s
metrics_addr: %q
poll_interval: 1h
containers:
  enabled: true
  prefix: %s-
trust:
  tpm: none
`, filepath.Join(d.dir, "state"), f.URL(), addr, label)+d.updateConfig(t, "1.0.0")))
	cmd := agentCmd("--config", cfg)
	cmd.Env = append(cmd.Env, "SHOAL_AGENT_WIRED=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	get := func(path string) []byte {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	waitUntil(t, "the first pass", func() bool {
		var h struct{ Passes int }
		return json.Unmarshal(get("/healthz"), &h) == nil && h.Passes >= 1
	})
	body := get("/metrics")
	for _, name := range []string{"shoal_agent_passes_total", "shoal_agent_outbox_dropped_total", "shoal_reconcile_passes_total", "shoal_update_phase", "shoal_clock_offset_seconds", "shoal_attest_software_key"} {
		if !strings.Contains(string(body), "# TYPE "+name+" ") {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	testenv.CheckMetrics(t, "the agent's /metrics", body)
	if t.Failed() {
		t.Logf("agent output:\n%s", out.String())
	}
}
