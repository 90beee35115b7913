package testenv

import (
	"bytes"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Repo is a real Git repository made with the git CLI for a test, with its
// own HOME, global config and GNUPGHOME, and a fixed author and committer.
type Repo struct {
	T   testing.TB
	Dir string   // the work tree
	Env []string // the environment git runs in (HOME, GNUPGHOME, identity)
}

// NewRepo makes an empty repository on branch main in a temporary directory.
func NewRepo(t testing.TB) *Repo {
	t.Helper()
	LookPath(t, "git", "git")
	home := t.TempDir()
	r := &Repo{T: t, Dir: filepath.Join(t.TempDir(), "fleet"), Env: append(os.Environ(),
		"HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+filepath.Join(home, ".gitconfig"),
		"GIT_AUTHOR_NAME=Op", "GIT_AUTHOR_EMAIL=op@example.com",
		"GIT_COMMITTER_NAME=Op", "GIT_COMMITTER_EMAIL=op@example.com",
		"GNUPGHOME="+filepath.Join(home, "gnupg"))}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.Git("init", "-q", "-b", "main")
	return r
}

// Git runs git in the work tree and returns its trimmed standard output,
// failing the test on error.
func (r *Repo) Git(args ...string) string {
	r.T.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = r.Dir
	cmd.Env = r.Env
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		r.T.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(out.String())
}

// Commit writes files (content "" deletes the file) and commits them with
// msg and any extra `git commit` arguments, returning the commit id.
func (r *Repo) Commit(files map[string]string, msg string, extra ...string) string {
	r.T.Helper()
	for name, content := range files {
		p := filepath.Join(r.Dir, name)
		if content == "" {
			r.Git("rm", "-q", name)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			r.T.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			r.T.Fatal(err)
		}
		r.Git("add", name)
	}
	r.Git(append([]string{"commit", "-q", "--allow-empty", "-m", msg}, extra...)...)
	return r.Git("rev-parse", "HEAD")
}

// URL is the repository's file:// URL.
func (r *Repo) URL() string { return "file://" + r.Dir }

// GitHTTPBackend serves the repositories under root over Git's smart HTTP
// protocol with git's own http-backend (a CGI program): mount it on an
// httptest server, TLS or not, to fetch root/NAME as URL/NAME.
func GitHTTPBackend(t testing.TB, root string) http.Handler {
	t.Helper()
	backend := "/usr/lib/git-core/git-http-backend"
	if _, err := os.Stat(backend); err != nil {
		Missing(t, "git-http-backend", "apt-get install git")
	}
	return &cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
}
