package source

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// gitRepo is a real repository made with the git CLI.
type gitRepo struct {
	t   testing.TB
	dir string
	env []string
}

func newGitRepo(t testing.TB) *gitRepo {
	t.Helper()
	testenv.LookPath(t, "git", "git")
	home := t.TempDir()
	r := &gitRepo{t: t, dir: filepath.Join(t.TempDir(), "fleet"), env: gitEnv(home)}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.git("init", "-q", "-b", "main")
	return r
}

func gitEnv(home string) []string {
	return append(os.Environ(),
		"HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+filepath.Join(home, ".gitconfig"),
		"GIT_AUTHOR_NAME=Op", "GIT_AUTHOR_EMAIL=op@example.com",
		"GIT_COMMITTER_NAME=Op", "GIT_COMMITTER_EMAIL=op@example.com",
		"GNUPGHOME="+filepath.Join(home, "gnupg"))
}

func (r *gitRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = r.dir
	cmd.Env = r.env
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		r.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(out.String())
}

// commit writes files (content "" deletes) and commits them, returning the commit id.
func (r *gitRepo) commit(files map[string]string, msg string, extra ...string) string {
	r.t.Helper()
	for name, content := range files {
		p := filepath.Join(r.dir, name)
		if content == "" {
			r.git("rm", "-q", name)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			r.t.Fatal(err)
		}
		r.git("add", name)
	}
	r.git(append([]string{"commit", "-q", "--allow-empty", "-m", msg}, extra...)...)
	return r.git("rev-parse", "HEAD")
}

func (r *gitRepo) url() string { return "file://" + r.dir }

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
	d.cmd.Env = gitEnv(t.TempDir())
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
