package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestSystemdUnit checks deploy/systemd/shoal-agent.service with
// systemd-analyze and holds it to what the agent does: sd_notify READY and
// WATCHDOG, SIGHUP for a pass, SIGTERM to stop, restart always.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../deploy/systemd/shoal-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []string{"Type=notify", "WatchdogSec=", "Restart=always", "KillSignal=SIGTERM",
		"ExecReload=/bin/kill -HUP $MAINPID", "ExecStart=/usr/bin/shoal-agent --config /etc/shoal/agent.yaml", "StateDirectory=shoal"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	analyze := testenv.LookPath(t, "systemd-analyze", "systemd")
	// Verify a copy whose ExecStart exists on this machine.
	self, _ := os.Executable()
	p := filepath.Join(t.TempDir(), "shoal-agent.service")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(unit, "/usr/bin/shoal-agent", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", p).CombinedOutput()
	// Without a running systemd, verify still parses the unit; only its own
	// complaints about this file count.
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "shoal-agent.service") && !strings.Contains(l, "Failed to connect") {
			t.Errorf("systemd-analyze: %s", l)
		}
	}
	if err != nil && !strings.Contains(string(out), "shoal-agent.service") {
		t.Logf("systemd-analyze exited %v with no complaint about the unit:\n%s", err, out)
	}
}
