package attest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// swtpm is a software TPM the test started in socket mode on loopback.
type swtpm struct {
	Addr  string
	state string
	stop  func()
}

// Stop kills the swtpm now, as a power cut would.
func (s *swtpm) Stop() { s.stop() }

// startSwtpm starts `swtpm socket` with its state in stateDir (a fresh temp
// dir if empty) and stops it when the test ends.
func startSwtpm(t testing.TB, stateDir string) *swtpm {
	t.Helper()
	bin := testenv.LookPath(t, "swtpm", "swtpm")
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	for attempt := 0; attempt < 5; attempt++ {
		port := freePortPair(t)
		cmd := exec.Command(bin, "socket", "--tpm2",
			"--tpmstate", "dir="+stateDir,
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear")
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start swtpm: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if waitListening(addr, exited, 10*time.Second) {
			var once sync.Once
			stop := func() {
				once.Do(func() {
					_ = cmd.Process.Kill()
					<-exited
				})
			}
			t.Cleanup(stop)
			return &swtpm{Addr: addr, state: stateDir, stop: stop}
		}
		_ = cmd.Process.Kill()
		<-exited
		t.Logf("swtpm on port %d did not come up (%s); retrying", port, out.String())
	}
	t.Fatal("swtpm did not start")
	return nil
}

// Open connects to the swtpm; the connection closes when the test ends.
func (s *swtpm) Open(t testing.TB) transport.TPMCloser {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tpm, err := DialTCP(ctx, s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

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

// waitListening polls until addr accepts a connection, the process exits, or the deadline passes.
func waitListening(addr string, exited <-chan error, limit time.Duration) bool {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return true
		}
		select {
		case <-exited:
			return false
		case <-deadline.C:
			return false
		case <-tick.C:
		}
	}
}
