package source

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// sshServer is Debian's openssh-server on a loopback high port, serving git
// over ssh to one authorized key.
type sshServer struct {
	port    int
	hostPub string // the host key's public line
	user    string
}

func startSSHD(t *testing.T, authorized string) *sshServer {
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
	hostKey, hostPub := sshKey(t, dir, "hostkey")
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(authorized), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
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
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", logs.String())
		}
	})
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", port))
	return &sshServer{port: port, hostPub: hostPub, user: u.Username}
}

func TestSSHFetchChecksHostKey(t *testing.T) {
	r := newGitRepo(t)
	want := r.Commit(map[string]string{"f": "over ssh"}, "x")
	keys := t.TempDir()
	clientKey, clientPub := sshKey(t, keys, "client")
	otherKey, _ := sshKey(t, keys, "stranger")
	_, wrongHostPub := sshKey(t, keys, "impostor")
	srv := startSSHD(t, clientPub)

	knownHosts := func(pub string) string {
		p := filepath.Join(t.TempDir(), "known_hosts")
		f := strings.Fields(pub)
		line := fmt.Sprintf("[127.0.0.1]:%d %s %s\n", srv.port, f[0], f[1])
		if err := os.WriteFile(p, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	url := fmt.Sprintf("ssh://%s@127.0.0.1:%d%s", srv.user, srv.port, r.Dir)
	tests := []struct {
		name       string
		key        string
		knownHosts string
		wantErr    error
	}{
		{"authorized key, known host", clientKey, knownHosts(srv.hostPub), nil},
		{"host key not the known one", clientKey, knownHosts(wrongHostPub), ErrAuth},
		{"client key not authorized", otherKey, knownHosts(srv.hostPub), ErrAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSource(t, Options{URL: url, Timeout: 20 * time.Second,
				Auth: Auth{SSHKeyFile: tt.key, KnownHostsFile: tt.knownHosts}})
			rev, err := s.Fetch(t.Context(), "")
			if tt.wantErr == nil {
				if err != nil || rev.Commit != want {
					t.Fatalf("fetch over ssh: %v %v", rev, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || Stalled(err) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			t.Logf("refused: %v", err)
		})
	}
}
