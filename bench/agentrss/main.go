// Command agentrss measures the device agent's resident memory when idle
// after a full pass, and what giving memory back costs the next pass.
//
// It builds the release binary (static, stripped) and a baseline binary that
// links the same six libraries and does nothing, runs the agent as a real
// process on a copy of fleet-repo-example (device gw-01, a loopback NTP
// server, containers off: no registry here), waits for a converged pass,
// stays idle while /metrics is scraped every few seconds as Prometheus would,
// and reads /proc/PID/status. Then SIGHUP starts a pass that finds nothing
// new, which must fault back in the code it runs: its duration is reported
// beside a `git fetch` of the same repo.
//
//	go run ./bench/agentrss -idle 30s
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoalfleet/shoal/internal/ntptest"
)

func main() {
	idle := flag.Duration("idle", 30*time.Second, "how long the agent stays idle (scraped) before RSS is read")
	scrape := flag.Duration("scrape", 5*time.Second, "interval of /metrics scrapes while idle")
	rounds := flag.Int("rounds", 3, "no-op passes after the idle window")
	flag.Parse()
	if err := run(*idle, *scrape, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "agentrss:", err)
		os.Exit(1)
	}
}

type rss struct{ total, anon, file uint64 } // KiB

func (r rss) String() string {
	return fmt.Sprintf("%.1f MiB (anon %.1f, file-backed %.1f)", mib(r.total), mib(r.anon), mib(r.file))
}

func mib(kib uint64) float64 { return float64(kib) / 1024 }

func run(idle, scrape time.Duration, rounds int) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "shoal-agentrss-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	agentBin, keepBin, bareBin := filepath.Join(dir, "shoal-agent"), filepath.Join(dir, "shoal-agent-nomemtrim"), filepath.Join(dir, "bare")
	for _, b := range []struct{ out, pkg, tags string }{
		{agentBin, "./cmd/shoal-agent", ""},
		{keepBin, "./cmd/shoal-agent", "nomemtrim"},
		{bareBin, "./bench/agentrss/bare", ""},
	} {
		cmd := exec.Command("go", "build", "-trimpath", "-tags", b.tags, "-ldflags", "-s -w", "-o", b.out, b.pkg)
		cmd.Dir, cmd.Env, cmd.Stderr = root, append(os.Environ(), "CGO_ENABLED=0"), os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build %s: %w", b.pkg, err)
		}
	}
	ntpd, err := ntptest.Start(ntptest.Responder{Stratum: 2})
	if err != nil {
		return err
	}
	defer ntpd.Close()
	repo := filepath.Join(dir, "fleet")
	if err := copyFleet(filepath.Join(root, "fleet-repo-example"), repo, ntpd.Addr()); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`device_id: gw-01
state_dir: %s
repo:
  url: file://%s
poll_interval: 1h
log_level: debug
metrics_addr: %s
containers:
  enabled: false
trust:
  tpm: none
  allow_software: true
`, filepath.Join(dir, "state"), repo, addr)), 0o600); err != nil {
		return err
	}

	// The baseline: the six libraries linked and initialised, nothing run.
	bare := exec.Command(bareBin)
	if err := bare.Start(); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	bareRSS, err := readRSS(bare.Process.Pid)
	bare.Process.Signal(syscall.SIGTERM)
	bare.Wait()
	if err != nil {
		return err
	}

	keep, err := measure(keepBin, cfg, addr, idle, scrape, rounds)
	if err != nil {
		return fmt.Errorf("agent built with -tags nomemtrim: %w", err)
	}
	os.RemoveAll(filepath.Join(dir, "state"))
	ours, err := measure(agentBin, cfg, addr, idle, scrape, rounds)
	if err != nil {
		return err
	}
	var fetches []time.Duration
	clone := filepath.Join(dir, "clone")
	if err := exec.Command("git", "clone", "-q", "--bare", "file://"+repo, clone).Run(); err != nil {
		return fmt.Errorf("git clone: %w", err)
	}
	for range rounds {
		start := time.Now()
		if out, err := exec.Command("git", "-C", clone, "fetch", "-q", "origin").CombinedOutput(); err != nil {
			return fmt.Errorf("git fetch: %w: %s", err, out)
		}
		fetches = append(fetches, time.Since(start))
	}

	fmt.Printf("| what | ours | baseline | ratio |\n|---|---|---|---|\n")
	fmt.Printf("| idle RSS, %s after a converged pass, /metrics scraped every %s | %s | bare binary linking the six libraries: %s | %.2f |\n",
		idle, scrape, ours.idle, bareRSS, float64(ours.idle.total)/float64(bareRSS.total))
	fmt.Printf("| same, agent built with -tags nomemtrim (heap returned, code pages kept) | %s | same | %.2f |\n",
		keep.idle, float64(keep.idle.total)/float64(bareRSS.total))
	fmt.Printf("| RSS 1 s after a no-op pass that followed a release | %s | same | %.2f |\n",
		ours.afterNoop, float64(ours.afterNoop.total)/float64(bareRSS.total))
	fmt.Printf("| no-op pass after an idle release (faults code back in) | %s | `git fetch` of the same repo: %s | %.2f |\n",
		durs(ours.passes), durs(fetches), float64(median(ours.passes))/float64(median(fetches)))
	fmt.Printf("| no-op pass, agent built with -tags nomemtrim | %s | same | %.2f |\n",
		durs(keep.passes), float64(median(keep.passes))/float64(median(fetches)))
	return nil
}

type result struct {
	idle, afterNoop rss
	passes          []time.Duration
}

// measure runs one agent binary: a first pass, the idle window with
// scrapes, then no-op passes started by SIGHUP.
func measure(agentBin, cfg, addr string, idle, scrape time.Duration, rounds int) (result, error) {
	var res result
	var logs bytes.Buffer
	agent := exec.Command(agentBin, "--config", cfg)
	agent.Stdout, agent.Stderr = &logs, &logs
	if err := agent.Start(); err != nil {
		return res, err
	}
	defer func() {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
	}()
	h, err := waitHealth(addr, 1, 60*time.Second)
	if err != nil {
		return res, fmt.Errorf("%w\n%s", err, logs.String())
	}
	if !h.Converged {
		return res, fmt.Errorf("the first pass did not converge:\n%s", logs.String())
	}
	for end := time.Now().Add(idle); time.Now().Before(end); {
		time.Sleep(min(scrape, time.Until(end)))
		if _, err := get("http://" + addr + "/metrics"); err != nil {
			return res, err
		}
	}
	res.idle, err = readRSS(agent.Process.Pid)
	if err != nil {
		return res, err
	}

	// No-op passes after the idle release: each one faults its code back in.
	for i := range rounds {
		before, err := passSum(addr)
		if err != nil {
			return res, err
		}
		agent.Process.Signal(syscall.SIGHUP)
		if _, err := waitHealth(addr, h.Passes+uint64(i)+1, 30*time.Second); err != nil {
			return res, err
		}
		after, err := passSum(addr)
		if err != nil {
			return res, err
		}
		res.passes = append(res.passes, time.Duration((after-before)*float64(time.Second)))
		time.Sleep(time.Second)
		if res.afterNoop, err = readRSS(agent.Process.Pid); err != nil {
			return res, err
		}
	}
	return res, nil
}

func durs(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond))
	}
	return strings.Join(s, " / ") + " ms"
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

func readRSS(pid int) (rss, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return rss{}, err
	}
	var r rss
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			r.total = n
		case "RssAnon":
			r.anon = n
		case "RssFile":
			r.file = n
		}
	}
	if r.total == 0 {
		return r, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return r, nil
}

type health struct {
	Passes    uint64 `json:"passes"`
	Converged bool   `json:"converged"`
}

func waitHealth(addr string, passes uint64, limit time.Duration) (health, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		b, err := get("http://" + addr + "/healthz")
		var h health
		if err == nil && json.Unmarshal(b, &h) == nil && h.Passes >= passes {
			return h, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return health{}, fmt.Errorf("no pass %d within %s", passes, limit)
}

// passSum is the sum of the pass-duration histogram, in seconds.
func passSum(addr string) (float64, error) {
	b, err := get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "shoal_agent_pass_duration_seconds_sum "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, errors.New("no shoal_agent_pass_duration_seconds_sum in /metrics")
}

func get(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// copyFleet copies the example fleet into a new git repo, its time servers
// replaced by the loopback NTP server.
func copyFleet(src, dst, ntpAddr string) error {
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if rel == "fleet.cue" {
			b = []byte(strings.Replace(string(b), `servers: ["ntp1.riverside.example:123", "ntp2.riverside.example:123"]`,
				fmt.Sprintf("servers: [%q]", ntpAddr), 1))
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		return err
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"},
		{"-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", "fleet"}} {
		if out, err := exec.Command("git", append([]string{"-C", dst}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %w: %s", args[0], err, out)
		}
	}
	return nil
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}
