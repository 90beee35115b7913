package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestCollector reads a host's /proc from testdata and checks each value.
func TestCollector(t *testing.T) {
	cases := []struct {
		name   string
		metric string
		want   string
	}{
		{"cpu seconds per cpu and mode (USER_HZ 100)", "host_cpu_seconds_total", `
# HELP host_cpu_seconds_total Seconds each CPU spent in each mode, from /proc/stat.
# TYPE host_cpu_seconds_total counter
host_cpu_seconds_total{cpu="0",mode="idle"} 25
host_cpu_seconds_total{cpu="0",mode="iowait"} 0.1
host_cpu_seconds_total{cpu="0",mode="irq"} 0
host_cpu_seconds_total{cpu="0",mode="nice"} 0.05
host_cpu_seconds_total{cpu="0",mode="softirq"} 0.03
host_cpu_seconds_total{cpu="0",mode="steal"} 0
host_cpu_seconds_total{cpu="0",mode="system"} 1
host_cpu_seconds_total{cpu="0",mode="user"} 1
host_cpu_seconds_total{cpu="1",mode="idle"} 25
host_cpu_seconds_total{cpu="1",mode="iowait"} 0.1
host_cpu_seconds_total{cpu="1",mode="irq"} 0
host_cpu_seconds_total{cpu="1",mode="nice"} 0.05
host_cpu_seconds_total{cpu="1",mode="softirq"} 0.02
host_cpu_seconds_total{cpu="1",mode="steal"} 0
host_cpu_seconds_total{cpu="1",mode="system"} 1
host_cpu_seconds_total{cpu="1",mode="user"} 2
`},
		{"boot time", "host_boot_time_seconds", `
# HELP host_boot_time_seconds When the host booted, in seconds since the epoch.
# TYPE host_boot_time_seconds gauge
host_boot_time_seconds 1.7647488e+09
`},
		{"load", "host_load5", `
# HELP host_load5 5-minute load average, from /proc/loadavg.
# TYPE host_load5 gauge
host_load5 0.41
`},
		{"memory in bytes", "host_memory_available_bytes", `
# HELP host_memory_available_bytes Memory available to new work without swapping (MemAvailable of /proc/meminfo).
# TYPE host_memory_available_bytes gauge
host_memory_available_bytes 3.072e+09
`},
		{"network of the host's namespace (PID 1)", "host_network_receive_bytes_total", `
# HELP host_network_receive_bytes_total Bytes received per network interface of the host's network namespace.
# TYPE host_network_receive_bytes_total counter
host_network_receive_bytes_total{device="eth0"} 5e+06
host_network_receive_bytes_total{device="lo"} 1000
`},
		{"no errors", "metrics_exporter_scrape_errors_total", `
# HELP metrics_exporter_scrape_errors_total Scrapes in which a collector failed to read its source, by collector.
# TYPE metrics_exporter_scrape_errors_total counter
metrics_exporter_scrape_errors_total{collector="cpu"} 0
metrics_exporter_scrape_errors_total{collector="filesystem"} 0
metrics_exporter_scrape_errors_total{collector="loadavg"} 0
metrics_exporter_scrape_errors_total{collector="meminfo"} 0
metrics_exporter_scrape_errors_total{collector="netdev"} 0
`},
	}
	c := newHostCollector("testdata/host")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := testutil.CollectAndCompare(c, strings.NewReader(tc.want), tc.metric); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestCollectorMissingSource: a source that cannot be read is counted and
// the others are still served.
func TestCollectorMissingSource(t *testing.T) {
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS("testdata/host")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(root + "/proc/loadavg"); err != nil {
		t.Fatal(err)
	}
	c := newHostCollector(root)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(c.errors.WithLabelValues("loadavg")); got != 1 {
		t.Errorf("loadavg errors %v, want 1", got)
	}
	if n := testutil.CollectAndCount(c, "host_load1", "host_memory_total_bytes"); n != 1 {
		t.Errorf("%d of host_load1, host_memory_total_bytes served, want only the memory one", n)
	}
}

// TestServeRealHost serves this machine's /proc: the scrape passes
// `promtool check metrics`, /healthz answers, --health agrees, and a
// cancelled context (SIGTERM) stops it cleanly.
func TestServeRealHost(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, &options{listen: "127.0.0.1:0", rootfs: "/"}, slog.New(slog.DiscardHandler), func(a string) { addr <- a })
	}()
	var a string
	select {
	case a = <-addr:
	case err := <-done:
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + a + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"host_cpu_seconds_total{", "host_memory_total_bytes ", "host_filesystem_avail_bytes{mountpoint=\"/\"} ", "host_network_receive_bytes_total{device=\"lo\"} "} {
		if !bytes.Contains(body, []byte(name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if bytes.Contains(body, []byte(`metrics_exporter_scrape_errors_total{collector="netdev"} 1`)) {
		t.Error("netdev could not be read")
	}
	testenv.CheckMetrics(t, "the exporter's /metrics", body)
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"--health", "--listen", a}, &stderr); code != 0 {
		t.Errorf("--health: exit %d: %s", code, stderr.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("stop: %v", err)
	}
	if code := run(t.Context(), []string{"--health", "--listen", a, "--health-timeout", "1s"}, &stderr); code != 1 {
		t.Errorf("--health after stop: exit %d, want 1", code)
	}
	if code := run(t.Context(), []string{"--rootfs", t.TempDir(), "--listen", "127.0.0.1:0"}, &stderr); code != 1 || !strings.Contains(stderr.String(), "mount the host's / there") {
		t.Errorf("--rootfs without /proc: exit %d (%s), want 1 with a hint", code, stderr.String())
	}
	if _, err := net.Dial("tcp", a); err == nil {
		t.Error("still listening after stop")
	}
}
