// Command sensorload drives the example sensor aggregator
// (examples/sensor-aggregator) with simulated sensors and measures its
// processing latency and the CPU it spends per reading, each beside a
// baseline run the same way in the same run:
//
//   - UDP: each sensor sends one "SENSOR VALUE" datagram per period; the
//     baseline is a bare UDP reader (this binary re-executed: a loop that
//     reads and counts datagrams, the least any UDP server does).
//   - HTTP: each sensor POSTs one JSON reading per period over keep-alive
//     connections; the baseline is nginx answering 204 to the same requests.
//
// The aggregator and the baselines run as processes of their own; CPU is
// their user+system time from /proc over the loaded phase, divided by the
// readings they took. Processing latency is the aggregator's own histogram
// (arrival to aggregation), its 99th percentile interpolated within the
// bucket as Prometheus' histogram_quantile does; request latency is measured
// at the client. It prints markdown rows for docs/bench/sensor.md.
//
//	go run ./bench/sensorload -sensors 2000 -rate 1 -duration 30s -conns 64
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-sink-udp" {
		sinkUDP(os.Args[2])
		return
	}
	o := options{}
	flag.IntVar(&o.sensors, "sensors", 2000, "simulated sensors")
	flag.Float64Var(&o.rate, "rate", 1, "readings per second each sensor sends")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "how long each phase sends")
	flag.IntVar(&o.conns, "conns", 64, "HTTP connections the sensors share")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "sensorload:", err)
		os.Exit(1)
	}
}

type options struct {
	sensors  int
	rate     float64
	duration time.Duration
	conns    int
}

// result is one server's figures for one phase.
type result struct {
	sent, taken    int64         // readings sent; taken by the server
	cpu            time.Duration // the server's user+system time over the phase
	p50, p99       time.Duration // processing latency (the aggregator's histogram)
	req50, req99   time.Duration // request latency at the client (HTTP)
	dropped, lostc int64         // the aggregator's error counter; readings neither taken nor dropped
	received       int64         // readings the aggregator received (UDP: what the kernel did not drop)
}

func (r result) cpuPerReading() time.Duration {
	if r.taken == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.taken)
}

func run(o options) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "shoal-sensorload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "sensor-aggregator")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./examples/sensor-aggregator")
	build.Dir, build.Env, build.Stderr = root, append(os.Environ(), "CGO_ENABLED=0"), os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build the aggregator: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if nginx, err = exec.LookPath("/usr/sbin/nginx"); err != nil {
			return errors.New("nginx not found (apt-get install nginx): it is the HTTP baseline")
		}
	}
	perSec := float64(o.sensors) * o.rate
	fmt.Fprintf(os.Stderr, "%d sensors × %.3g/s = %.0f readings/s for %v per phase\n", o.sensors, o.rate, perSec, o.duration)

	aggUDP, err := phase(dir, "aggregator, UDP", func(udp, web string) *exec.Cmd {
		return exec.Command(bin, "-listen", web, "-udp", udp, "-window", "10s", "-min", "-1e9", "-max", "1e9")
	}, o, sendUDP, true)
	if err != nil {
		return err
	}
	bareUDP, err := phase(dir, "bare UDP reader", func(udp, _ string) *exec.Cmd { return exec.Command(self, "-sink-udp", udp) }, o, sendUDP, false)
	if err != nil {
		return err
	}
	aggHTTP, err := phase(dir, "aggregator, HTTP", func(udp, web string) *exec.Cmd {
		return exec.Command(bin, "-listen", web, "-udp", "", "-window", "10s", "-min", "-1e9", "-max", "1e9")
	}, o, sendHTTP, true)
	if err != nil {
		return err
	}
	nginxHTTP, err := phase(dir, "nginx", func(_, web string) *exec.Cmd { return nginxCmd(nginx, dir, web) }, o, sendHTTP, false)
	if err != nil {
		return err
	}

	cmd := fmt.Sprintf("go run ./bench/sensorload -sensors %d -rate %g -duration %v -conns %d", o.sensors, o.rate, o.duration, o.conns)
	load := fmt.Sprintf("%d sensors × %g/s", o.sensors, o.rate)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/1e3) }
	ratio := func(a, b time.Duration) string {
		if b == 0 {
			return "—"
		}
		return fmt.Sprintf("%.3g", float64(a)/float64(b))
	}
	target := 50 * time.Millisecond
	rows := []string{
		fmt.Sprintf("| UDP, %s: processing p99 (arrival to aggregation; p50 %s) | %s | target %s | %s of target | `%s` |", load, ms(aggUDP.p50), ms(aggUDP.p99), ms(target), ratio(aggUDP.p99, target), cmd),
		fmt.Sprintf("| UDP, %s: CPU per reading (%d of %d sent taken, %d dropped by the aggregator, %d lost in the kernel) | %s | bare UDP reader (reads and counts): %s | %s | same run |",
			load, aggUDP.taken, aggUDP.sent, aggUDP.dropped, aggUDP.sent-aggUDP.received, us(aggUDP.cpuPerReading()), us(bareUDP.cpuPerReading()), ratio(aggUDP.cpuPerReading(), bareUDP.cpuPerReading())),
		fmt.Sprintf("| HTTP, %s, one reading a POST on %d shared connections: processing p99 (p50 %s) | %s | target %s | %s of target | same run |", load, o.conns, ms(aggHTTP.p50), ms(aggHTTP.p99), ms(target), ratio(aggHTTP.p99, target)),
		fmt.Sprintf("| HTTP, %s: request p99 at the client (p50 %s) | %s | nginx `return 204`: %s (p50 %s) | %s | same run |", load, ms(aggHTTP.req50), ms(aggHTTP.req99), ms(nginxHTTP.req99), ms(nginxHTTP.req50), ratio(aggHTTP.req99, nginxHTTP.req99)),
		fmt.Sprintf("| HTTP, %s: CPU per reading (%d of %d taken) | %s | nginx `return 204`: %s | %s | same run |", load, aggHTTP.taken, aggHTTP.sent, us(aggHTTP.cpuPerReading()), us(nginxHTTP.cpuPerReading()), ratio(aggHTTP.cpuPerReading(), nginxHTTP.cpuPerReading())),
	}
	for _, r := range rows {
		fmt.Println(r)
	}
	if aggUDP.lostc != 0 || aggHTTP.lostc != 0 {
		return fmt.Errorf("readings neither taken nor counted as dropped: UDP %d, HTTP %d", aggUDP.lostc, aggHTTP.lostc)
	}
	return nil
}

// sender sends one sensor's reading to a phase's server; it returns the
// request latency (0 for UDP) or an error.
type sender func(ctx context.Context, t *target, sensor string, v float64) (time.Duration, error)

type target struct {
	udp, web string
	conn     []net.Conn // UDP sockets shared by the sensors
	client   *http.Client
}

func sendUDP(_ context.Context, t *target, sensor string, v float64) (time.Duration, error) {
	c := t.conn[int(sensorHash(sensor))%len(t.conn)]
	_, err := c.Write([]byte(sensor + " " + strconv.FormatFloat(v, 'f', 2, 64)))
	return 0, err
}

func sendHTTP(ctx context.Context, t *target, sensor string, v float64) (time.Duration, error) {
	body := `{"sensor":"` + sensor + `","value":` + strconv.FormatFloat(v, 'f', 2, 64) + `}`
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+t.web+"/readings", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := t.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusNoContent {
		return 0, fmt.Errorf("POST /readings: %s", resp.Status)
	}
	return time.Since(start), nil
}

func sensorHash(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

// phase starts a server, drives it with every sensor for o.duration, and
// measures it; aggregator says whether it is the aggregator (with /metrics).
func phase(dir, name string, start func(udp, web string) *exec.Cmd, o options, send sender, aggregator bool) (result, error) {
	var res result
	udp, web := freeAddr("udp"), freeAddr("tcp")
	cmd := start(udp, web)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
	}()
	if err := waitUp(udp, web, send, exited); err != nil {
		return res, fmt.Errorf("%s: %w\n%s", name, err, out.String())
	}
	// The sensors share 64 keep-alive connections, as sensors behind a few
	// gateways would (-conns).
	t := &target{udp: udp, web: web, client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: o.conns, MaxConnsPerHost: o.conns}}}
	for range 8 {
		c, err := net.Dial("udp", udp)
		if err != nil {
			return res, err
		}
		defer c.Close()
		t.conn = append(t.conn, c)
	}
	cpu0, err := cpuTime(cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "phase %s: sending\n", name)
	lat, sent, failed := drive(t, o, send)
	res.sent = sent
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "phase %s: %d sends failed\n", name, failed)
	}
	// Let the server finish what it queued before reading its CPU.
	if aggregator {
		deadline := time.Now().Add(30 * time.Second)
		for {
			m, err := scrape(web)
			if err != nil {
				return res, err
			}
			taken := int64(m.count)
			if taken+int64(m.dropped) >= m.received || time.Now().After(deadline) {
				res.taken, res.dropped, res.received = taken, int64(m.dropped), m.received
				res.lostc = m.received - taken - int64(m.dropped)
				res.p50, res.p99 = m.quantile(0.5), m.quantile(0.99)
				break
			}
			<-time.After(100 * time.Millisecond)
		}
	} else {
		<-time.After(time.Second)
	}
	cpu1, err := cpuTime(cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	res.cpu = cpu1 - cpu0
	if len(lat) > 0 {
		slices.Sort(lat)
		res.req50, res.req99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	stopped = true
	if !aggregator {
		res.taken = sent - int64(failed)
		if n, err := strconv.ParseInt(strings.TrimSpace(lastLine(out.String())), 10, 64); err == nil {
			res.taken = n // the bare reader's own count
		}
	}
	fmt.Fprintf(os.Stderr, "phase %s: sent %d, taken %d, cpu %v\n", name, res.sent, res.taken, res.cpu)
	return res, nil
}

// drive runs every sensor for o.duration, each sending o.rate readings a
// second from a random phase, and returns the request latencies, the
// readings sent and the sends that failed.
func drive(t *target, o options, send sender) ([]time.Duration, int64, int64) {
	ctx, cancel := context.WithTimeout(context.Background(), o.duration)
	defer cancel()
	period := time.Duration(float64(time.Second) / o.rate)
	var (
		mu      sync.Mutex
		lat     []time.Duration
		sent    atomic.Int64
		failed  atomic.Int64
		wg      sync.WaitGroup
		workers = make(chan struct{}, max(o.conns, 64)) // sends in flight at most
	)
	for i := range o.sensors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("hall%d/sensor-%04d", i%8, i)
			r := rand.New(rand.NewPCG(uint64(i), 1))
			timer := time.NewTimer(time.Duration(r.Int64N(int64(period))))
			defer timer.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
				timer.Reset(period)
				workers <- struct{}{}
				// A send started runs to its end (the client's timeout),
				// so that every reading counted as sent was sent.
				sent.Add(1)
				d, err := send(context.WithoutCancel(ctx), t, name, 20+r.NormFloat64()*3)
				<-workers
				if err != nil {
					failed.Add(1)
					continue
				}
				if d > 0 {
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return lat, sent.Load(), failed.Load()
}

// waitUp waits until the server answers on web (HTTP) or takes a datagram (UDP).
func waitUp(udp, web string, send sender, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		c, err := net.DialTimeout("tcp", web, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if uc, err := net.ListenPacket("udp", udp); err != nil {
			return nil // someone (the server) holds the UDP port: it is up
		} else {
			uc.Close()
		}
		<-time.After(50 * time.Millisecond)
	}
	return errors.New("not up after 30 s")
}

func freeAddr(network string) string {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// nginxCmd is nginx in one process (no master), answering 204 to POST /readings on web.
func nginxCmd(bin, dir, web string) *exec.Cmd {
	prefix := filepath.Join(dir, "nginx")
	os.MkdirAll(filepath.Join(prefix, "logs"), 0o755)
	conf := filepath.Join(prefix, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid %s/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %s/body;
  keepalive_requests 1000000;
  server {
    listen %s;
    location /readings { return 204; }
  }
}
`, prefix, prefix, web)), 0o644)
	return exec.Command(bin, "-p", prefix, "-c", conf)
}

// cpuTime is a process's user+system CPU time, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which may hold spaces: state is
	// field 3, utime 14, stime 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// metrics is what the aggregator's /metrics says.
type metrics struct {
	buckets  [][2]float64 // upper bound, cumulative count
	count    float64
	dropped  float64
	received int64
}

func scrape(web string) (metrics, error) {
	var m metrics
	resp, err := http.Get("http://" + web + "/metrics")
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		name, val, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(name, "sensor_aggregator_processing_seconds_bucket{le=\""):
			le := strings.TrimSuffix(strings.TrimPrefix(name, "sensor_aggregator_processing_seconds_bucket{le=\""), "\"}")
			ub := math.Inf(1)
			if le != "+Inf" {
				ub, _ = strconv.ParseFloat(le, 64)
			}
			m.buckets = append(m.buckets, [2]float64{ub, v})
		case name == "sensor_aggregator_processing_seconds_count":
			m.count = v
		case strings.HasPrefix(name, "sensor_aggregator_errors_total{"):
			m.dropped += v
		case name == "sensor_aggregator_readings_received_total":
			m.received = int64(v)
		}
	}
	return m, sc.Err()
}

// quantile interpolates within the bucket that holds q, as
// histogram_quantile does.
func (m metrics) quantile(q float64) time.Duration {
	if m.count == 0 {
		return 0
	}
	rank := q * m.count
	lower, below := 0.0, 0.0
	for _, b := range m.buckets {
		if b[1] >= rank {
			if math.IsInf(b[0], 1) {
				return time.Duration(lower * 1e9)
			}
			frac := (rank - below) / (b[1] - below)
			return time.Duration((lower + (b[0]-lower)*frac) * 1e9)
		}
		lower, below = b[0], b[1]
	}
	return time.Duration(lower * 1e9)
}

// sinkUDP is the baseline: read datagrams and count them until SIGTERM,
// then print the count.
func sinkUDP(addr string) {
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { c.Close() })
	var n int64
	buf := make([]byte, 64<<10)
	for {
		if _, _, err := c.ReadFrom(buf); err != nil {
			break
		}
		n++
	}
	fmt.Println(n)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// repoRoot walks up from the working directory to go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}
