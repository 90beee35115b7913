package attest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// chrony is a Debian chronyd serving NTP on a loopback port from its own
// clock, which the test sets ahead of the system clock with chronyc settime
// (chronyd -x never touches the system clock).
type chrony struct {
	addr, sock, chronyc string
}

func startChrony(t *testing.T) *chrony {
	t.Helper()
	chronyd := testenv.LookPath(t, "chronyd", "chrony")
	chronyc := testenv.LookPath(t, "chronyc", "chrony")
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil { // chronyd demands it for its command socket
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	sock := filepath.Join(dir, "chronyd.sock")
	conf := fmt.Sprintf(`port %d
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 3
manual
cmdport 0
bindcmdaddress %s
pidfile %s
driftfile %s
`, port, sock, filepath.Join(dir, "chronyd.pid"), filepath.Join(dir, "drift"))
	confPath := filepath.Join(dir, "chrony.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-x", "-d", "-f", confPath}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // keep access to the temp dir
	}
	cmd := exec.Command(chronyd, args...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chronyd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(sock); err == nil {
			return &chrony{addr: fmt.Sprintf("127.0.0.1:%d", port), sock: sock, chronyc: chronyc}
		}
		select {
		case err := <-exited:
			t.Fatalf("chronyd exited: %v\n%s", err, out.String())
		case <-deadline.C:
			t.Fatalf("chronyd command socket did not appear\n%s", out.String())
		case <-tick.C:
		}
	}
}

func (c *chrony) run(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(c.chronyc, append([]string{"-h", c.sock}, args...)...)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chronyc %v: %v\n%s", args, err, out)
	}
	return string(out)
}

var systemTimeRE = regexp.MustCompile(`System time\s*:\s*([0-9.]+) seconds (slow|fast) of NTP time`)

// offset reads how far chronyd's time is from the system clock (positive: ahead).
func (c *chrony) offset(t *testing.T) time.Duration {
	t.Helper()
	out := c.run(t, "tracking")
	m := systemTimeRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no offset in chronyc tracking:\n%s", out)
	}
	secs, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	d := time.Duration(secs * float64(time.Second))
	if m[2] == "fast" {
		d = -d
	}
	return d
}

// TestClockChrony measures a real chronyd whose clock is set about 5 s ahead:
// the measured skew is within 5 ms of the offset chronyd itself reports.
func TestClockChrony(t *testing.T) {
	c := startChrony(t)
	c.run(t, "settime", time.Now().UTC().Add(5*time.Second).Format("2006-01-02 15:04:05"))
	before := c.offset(t)
	clock := NewClock(ClockOptions{Servers: []string{c.addr}, MaxSkew: time.Second})
	st := clock.Check(context.Background())
	after := c.offset(t)
	if st.State != ClockSkewed || st.Good != 1 {
		t.Fatalf("status %+v, want skewed with one answer", st)
	}
	want := (before + after) / 2
	t.Logf("chronyd offset %v..%v, measured %v (error %v), rtt %v", before, after, st.Offset, st.Offset-want, st.RTT)
	within(t, "offset against chronyd", st.Offset, want, 5*time.Millisecond+(after-before).Abs())
	if want < 4*time.Second || want > 5*time.Second {
		t.Errorf("chronyd offset %v; settime asked for 4-5 s", want)
	}
}
