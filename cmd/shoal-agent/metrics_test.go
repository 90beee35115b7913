package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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
	testenv.LookPath(t, "grub-editenv", "grub-common")
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	roots := write("release-keys.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	write("a.img", []byte("factory image"))
	write("b.img", nil)
	write("booted", []byte("a\n"))
	// A fleet with no apps: the container stage runs and has nothing to do.
	f := newFleet(t)
	f.commit(map[string]string{"fleet.cue": "spec: {}\n", "devices/d1.yaml": "labels:\n  role: web\n"})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cfg := write("agent.yaml", []byte(fmt.Sprintf(`device_id: d1
state_dir: %s
repo:
  url: %s
metrics_addr: %q
poll_interval: 1h
containers:
  enabled: true
  prefix: %s-
update:
  slot_a: %s
  slot_b: %s
  bootloader: grub
  grub_env: %s
  trust_roots: %s
  running_version: 1.0.0
  booted_slot_file: %s
trust:
  tpm: none
`, filepath.Join(dir, "state"), f.URL(), addr, label, filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img"),
		filepath.Join(dir, "grubenv"), roots, filepath.Join(dir, "booted"))))
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
