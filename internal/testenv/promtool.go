package testenv

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// CheckMetrics runs Prometheus' `promtool check metrics` (Debian prometheus)
// on a /metrics body and fails the test on any problem it reports: names,
// types, units and help text as Prometheus' own linter wants them.
func CheckMetrics(t testing.TB, what string, body []byte) {
	t.Helper()
	bin := LookPath(t, "promtool", "prometheus")
	if bin == "" {
		return
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("promtool check metrics on %s: %v\n%s", what, err, out)
	}
	if !bytes.Contains(body, []byte("# TYPE ")) {
		t.Errorf("%s: no metrics in\n%s", what, body)
	}
}
