// Package sshdtest runs Debian's openssh-server on a loopback port for
// tests, serving git over ssh to the keys the test authorizes, and makes
// ssh keys and known_hosts files with the OpenSSH tools.
//
// Only tests import it.
package sshdtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// Server is a running sshd.
type Server struct {
	Port    int
	HostPub string // the host key's public line
	User    string // the user running the test, whom clients log in as
}

// Start runs sshd on 127.0.0.1 with a fresh host key until the test ends;
// authorized (authorized_keys lines) may log in as the current user.
// Without sshd it skips or fails the test as testenv.Missing says.
func Start(t testing.TB, authorized string) *Server {
	t.Helper()
	sshd := testenv.LookPath(t, "sshd", "openssh-server")
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	// sshd insists on its privilege separation directory when run as root.
	if u.Uid == "0" {
		if _, err := os.Stat("/run/sshd"); os.IsNotExist(err) {
			if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove("/run/sshd") })
		}
	}
	dir := t.TempDir()
	hostKey, hostPub := Key(t, dir, "hostkey")
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(authorized), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := filepath.Join(dir, "sshd_config")
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile %s
`, port, hostKey, ak, filepath.Join(dir, "sshd.pid"))
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", conf)
	logs := &testenv.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("sshd log:\n%s", logs.String())
		}
	})
	// sshd -e logs this once its socket is bound.
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(logs.String(), fmt.Sprintf("Server listening on 127.0.0.1 port %d", port)) {
		select {
		case <-exited:
			t.Fatalf("sshd exited at start:\n%s", logs.String())
		case <-deadline.C:
			t.Fatalf("sshd not listening on port %d after 10s:\n%s", port, logs.String())
		case <-tick.C:
		}
	}
	return &Server{Port: port, HostPub: hostPub, User: u.Username}
}

// URL is the ssh:// URL of the repository at path (absolute) on s.
func (s *Server) URL(path string) string {
	return fmt.Sprintf("ssh://%s@127.0.0.1:%d%s", s.User, s.Port, path)
}

// KnownHosts writes a known_hosts file that names hostPub (a public key
// line) as s's host key, and returns its path.
func (s *Server) KnownHosts(t testing.TB, hostPub string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "known_hosts")
	f := strings.Fields(hostPub)
	if len(f) < 2 {
		t.Fatalf("host key %q: not a public key line", hostPub)
	}
	line := fmt.Sprintf("[127.0.0.1]:%d %s %s\n", s.Port, f[0], f[1])
	if err := os.WriteFile(p, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Key makes an ed25519 key with ssh-keygen and returns the private key path
// and the authorized_keys line.
func Key(t testing.TB, dir, name string) (string, string) {
	t.Helper()
	bin := testenv.LookPath(t, "ssh-keygen", "openssh-client")
	p := filepath.Join(dir, name)
	if out, err := exec.Command(bin, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", p).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(p + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return p, string(pub)
}
