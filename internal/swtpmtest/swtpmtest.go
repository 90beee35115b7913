// Package swtpmtest runs Debian's swtpm (a software TPM 2.0) in socket mode
// on loopback for tests: the real TPM command set behind a TCP port, with
// its state in a directory the test chooses.
package swtpmtest

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// TPM is a running swtpm.
type TPM struct {
	Addr  string // host:port of the TPM command channel
	State string // the state directory (keys, NV, counters)
	stop  func()
}

// Stop kills the swtpm now, as a power cut would; its state stays.
func (s *TPM) Stop() { s.stop() }

// Start runs `swtpm socket` with its state in stateDir (a fresh temp dir if
// empty), powered on and started, until the test ends. Without swtpm it
// skips or fails the test as testenv.Missing says.
func Start(t testing.TB, stateDir string) *TPM {
	t.Helper()
	bin := testenv.LookPath(t, "swtpm", "swtpm")
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	if strings.Contains(stateDir, ",") {
		// swtpm splits its options at commas.
		t.Fatalf("swtpm state dir %q has a comma, which swtpm cannot take (a test name with a comma?)", stateDir)
	}
	for range 5 {
		port := freePortPair(t)
		cmd := exec.Command(bin, "socket", "--tpm2",
			"--tpmstate", "dir="+stateDir,
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear")
		out := &testenv.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start swtpm: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		up, gone := waitListening(addr, exited, 10*time.Second)
		if up {
			// What answered may be another process that took the port
			// first, this swtpm failing to bind it and exiting.
			select {
			case <-exited:
				up, gone = false, true
			case <-time.After(100 * time.Millisecond):
			}
		}
		if up {
			var once sync.Once
			stop := func() {
				once.Do(func() {
					_ = cmd.Process.Kill()
					<-exited
				})
			}
			t.Cleanup(stop)
			return &TPM{Addr: addr, State: stateDir, stop: stop}
		}
		if !gone { // an swtpm that exited (a port taken meanwhile) was waited for already
			_ = cmd.Process.Kill()
			<-exited
		}
		t.Logf("swtpm on port %d did not come up (%s); retrying", port, out.String())
	}
	t.Fatal("swtpm did not start")
	return nil
}

// freePortPair returns a loopback port p with p+1 free too (command and
// control channels).
func freePortPair(t testing.TB) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
		l.Close()
		if err == nil {
			l2.Close()
			return port
		}
	}
}

// waitListening polls until addr accepts a connection (up), the process
// exits (gone: its exit was taken from exited), or limit passes.
func waitListening(addr string, exited <-chan error, limit time.Duration) (up, gone bool) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return true, false
		}
		select {
		case <-exited:
			return false, true
		case <-deadline.C:
			return false, false
		case <-tick.C:
		}
	}
}
