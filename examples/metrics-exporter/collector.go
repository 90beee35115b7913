package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// hostCollector reads the host's /proc (under a bind-mounted root) at each
// scrape, so a value is never older than the scrape that returns it.
type hostCollector struct {
	root string // the host's root as mounted here ("/" outside a container)

	cpu, load1, load5, load15, memTotal, memAvail, boot, fsSize, fsAvail, rx, tx *prometheus.Desc
	errors                                                                       *prometheus.CounterVec
	duration                                                                     *prometheus.GaugeVec
}

// collectors, in the order a scrape runs them.
var collectors = []string{"cpu", "loadavg", "meminfo", "filesystem", "netdev"}

func newHostCollector(root string) *hostCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	c := &hostCollector{
		root:     root,
		cpu:      d("host_cpu_seconds_total", "Seconds each CPU spent in each mode, from /proc/stat.", "cpu", "mode"),
		load1:    d("host_load1", "1-minute load average, from /proc/loadavg."),
		load5:    d("host_load5", "5-minute load average, from /proc/loadavg."),
		load15:   d("host_load15", "15-minute load average, from /proc/loadavg."),
		memTotal: d("host_memory_total_bytes", "Memory the kernel manages (MemTotal of /proc/meminfo)."),
		memAvail: d("host_memory_available_bytes", "Memory available to new work without swapping (MemAvailable of /proc/meminfo)."),
		boot:     d("host_boot_time_seconds", "When the host booted, in seconds since the epoch."),
		fsSize:   d("host_filesystem_size_bytes", "Size of the host's root filesystem.", "mountpoint"),
		fsAvail:  d("host_filesystem_avail_bytes", "Bytes of the host's root filesystem available to unprivileged users.", "mountpoint"),
		rx:       d("host_network_receive_bytes_total", "Bytes received per network interface of the host's network namespace.", "device"),
		tx:       d("host_network_transmit_bytes_total", "Bytes sent per network interface of the host's network namespace.", "device"),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metrics_exporter_scrape_errors_total", Help: "Scrapes in which a collector failed to read its source, by collector.",
		}, []string{"collector"}),
		duration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "metrics_exporter_scrape_duration_seconds", Help: "How long each collector took at the last scrape.",
		}, []string{"collector"}),
	}
	for _, n := range collectors {
		c.errors.WithLabelValues(n)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *hostCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.cpu, c.load1, c.load5, c.load15, c.memTotal, c.memAvail, c.boot, c.fsSize, c.fsAvail, c.rx, c.tx} {
		ch <- d
	}
	c.errors.Describe(ch)
	c.duration.Describe(ch)
}

// Collect implements prometheus.Collector. A source that cannot be read
// counts an error and leaves its metrics out of this scrape; the others
// are still served.
func (c *hostCollector) Collect(ch chan<- prometheus.Metric) {
	fs, fsErr := procfs.NewFS(filepath.Join(c.root, "proc"))
	for _, name := range collectors {
		start := time.Now()
		err := fsErr
		if name == "filesystem" {
			err = nil // statfs of the root, not /proc
		}
		if err == nil {
			err = c.collect(name, fs, ch)
		}
		if err != nil {
			c.errors.WithLabelValues(name).Inc()
		}
		c.duration.WithLabelValues(name).Set(time.Since(start).Seconds())
	}
	c.errors.Collect(ch)
	c.duration.Collect(ch)
}

func (c *hostCollector) collect(name string, fs procfs.FS, ch chan<- prometheus.Metric) error {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	switch name {
	case "cpu":
		st, err := fs.Stat()
		if err != nil {
			return err
		}
		for n, s := range st.CPU {
			cpu := strconv.FormatInt(n, 10)
			for mode, v := range map[string]float64{"user": s.User, "nice": s.Nice, "system": s.System, "idle": s.Idle,
				"iowait": s.Iowait, "irq": s.IRQ, "softirq": s.SoftIRQ, "steal": s.Steal} {
				counter(c.cpu, v, cpu, mode)
			}
		}
		gauge(c.boot, float64(st.BootTime))
	case "loadavg":
		l, err := fs.LoadAvg()
		if err != nil {
			return err
		}
		gauge(c.load1, l.Load1)
		gauge(c.load5, l.Load5)
		gauge(c.load15, l.Load15)
	case "meminfo":
		m, err := fs.Meminfo()
		if err != nil {
			return err
		}
		if m.MemTotalBytes == nil || m.MemAvailableBytes == nil {
			return fmt.Errorf("meminfo: no MemTotal or MemAvailable")
		}
		gauge(c.memTotal, float64(*m.MemTotalBytes))
		gauge(c.memAvail, float64(*m.MemAvailableBytes))
	case "filesystem":
		var s syscall.Statfs_t
		if err := syscall.Statfs(c.root, &s); err != nil {
			return err
		}
		gauge(c.fsSize, float64(s.Blocks)*float64(s.Bsize), "/")
		gauge(c.fsAvail, float64(s.Bavail)*float64(s.Bsize), "/")
	case "netdev":
		// PID 1's view is the host's network namespace; our own /proc/net
		// would be the container's.
		p, err := fs.Proc(1)
		if err != nil {
			return err
		}
		nd, err := p.NetDev()
		if err != nil {
			return err
		}
		for name, l := range nd {
			counter(c.rx, float64(l.RxBytes), name)
			counter(c.tx, float64(l.TxBytes), name)
		}
	}
	return nil
}
