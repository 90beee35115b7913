package updater

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoalfleet/shoal/spec"
)

// TestMetricsAndProgress: an install reports bytes, size, phase and result as
// metrics on the agent's registry, and draws a progress bar when given a terminal.
func TestMetricsAndProgress(t *testing.T) {
	d := newDevice(t, "grub")
	o := d.options()
	var bar bytes.Buffer
	o.Progress = &bar
	u, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(u.Collectors()...)
	rel := d.release("1.1.0", randBytes(t, 512<<10))
	if _, err := u.Step(context.Background(), rel, spec.UpdatePolicy{}, pass); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP shoal_update_download_bytes Bytes of the image written and hashed so far.
# TYPE shoal_update_download_bytes gauge
shoal_update_download_bytes 524288
# HELP shoal_update_download_size_bytes Size of the image being installed.
# TYPE shoal_update_download_size_bytes gauge
shoal_update_download_size_bytes 524288
# HELP shoal_update_installs_total Install attempts that finished, by result.
# TYPE shoal_update_installs_total counter
shoal_update_installs_total{result="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "shoal_update_download_bytes", "shoal_update_download_size_bytes", "shoal_update_installs_total"); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(u.m.phase.WithLabelValues(string(PhaseRebooting))); v != 1 {
		t.Fatalf("phase gauge for rebooting = %v", v)
	}
	if !strings.Contains(bar.String(), "installing") {
		t.Fatalf("no progress bar drawn: %q", bar.String())
	}
}
