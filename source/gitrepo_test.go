package source

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// gitRepo is a real repository made with the git CLI.
type gitRepo = testenv.Repo

func newGitRepo(t testing.TB) *gitRepo { return testenv.NewRepo(t) }

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitListening waits until addr accepts connections, or fails t after 10 s.
func waitListening(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		<-time.After(20 * time.Millisecond)
	}
	t.Fatalf("%s not listening after 10s", addr)
}

// gitDaemon serves base over git:// on loopback until stopped.
type gitDaemon struct {
	t    testing.TB
	base string
	port int
	cmd  *exec.Cmd
}

func startGitDaemon(t testing.TB, base string, port int) *gitDaemon {
	t.Helper()
	bin := "/usr/lib/git-core/git-daemon"
	if _, err := os.Stat(bin); err != nil {
		bin = testenv.LookPath(t, "git-daemon", "git-daemon-sysvinit")
	}
	if port == 0 {
		port = freePort(t)
	}
	d := &gitDaemon{t: t, base: base, port: port}
	d.cmd = exec.Command(bin, "--reuseaddr", "--export-all", "--base-path="+base,
		"--listen=127.0.0.1", "--port="+itoa(port), base)
	d.cmd.Env = testenv.NewRepo(t).Env
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.stop)
	waitListening(t, d.addr())
	return d
}

func (d *gitDaemon) addr() string { return "127.0.0.1:" + itoa(d.port) }

func (d *gitDaemon) stop() {
	if d.cmd.ProcessState == nil {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
