package source

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"
)

func newSource(t *testing.T, o Options) *Source {
	t.Helper()
	if o.Dir == "" {
		o.Dir = filepath.Join(t.TempDir(), "repo")
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readFile(t *testing.T, rev *Revision, name string) string {
	t.Helper()
	b, err := fs.ReadFile(rev.FS, name)
	if err != nil {
		t.Fatalf("read %s at %s: %v", name, rev.Commit, err)
	}
	return string(b)
}

func TestFetchRefs(t *testing.T) {
	r := newGitRepo(t)
	c1 := r.Commit(map[string]string{"fleet.cue": "v: 1\n", "devices/a.yaml": "id: a\n"}, "one")
	r.Git("tag", "-a", "v1", "-m", "release v1")
	r.Git("tag", "light1")
	c2 := r.Commit(map[string]string{"fleet.cue": "v: 2\n"}, "two")

	tests := []struct {
		name    string
		opts    Options
		want    string
		content string
	}{
		{"default branch main", Options{}, c2, "v: 2\n"},
		{"branch", Options{Branch: "main"}, c2, "v: 2\n"},
		{"annotated tag", Options{Tag: "v1"}, c1, "v: 1\n"},
		{"lightweight tag", Options{Tag: "light1"}, c1, "v: 1\n"},
		{"pinned commit", Options{Commit: c1}, c1, "v: 1\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.URL = r.URL()
			s := newSource(t, tt.opts)
			rev, err := s.Fetch(t.Context(), "")
			if err != nil {
				t.Fatal(err)
			}
			if rev.Commit != tt.want {
				t.Fatalf("commit = %s, want %s", rev.Commit, tt.want)
			}
			if got := readFile(t, rev, "fleet.cue"); got != tt.content {
				t.Fatalf("fleet.cue = %q, want %q", got, tt.content)
			}
			if err := fstest.TestFS(rev.FS, "fleet.cue", "devices/a.yaml"); err != nil {
				t.Fatal(err)
			}
			// A second fetch with nothing new returns the same commit.
			again, err := s.Fetch(t.Context(), rev.Commit)
			if err != nil || again.Commit != rev.Commit {
				t.Fatalf("second fetch = %v, %v", again, err)
			}
		})
	}
}

func TestFetchFollowsNewCommitsShallow(t *testing.T) {
	r := newGitRepo(t)
	for i := range 5 {
		r.Commit(map[string]string{"n": strings.Repeat("x", i+1)}, "c")
	}
	s := newSource(t, Options{URL: r.URL()})
	rev, err := s.Fetch(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	shallow, err := os.ReadFile(filepath.Join(s.o.Dir, "shallow"))
	if err != nil || strings.TrimSpace(string(shallow)) != rev.Commit {
		t.Fatalf("first clone is not shallow at depth 1: shallow file %q, %v", shallow, err)
	}
	c6 := r.Commit(map[string]string{"n": "six"}, "c6")
	c7 := r.Commit(map[string]string{"n": "seven"}, "c7")
	rev2, err := s.Fetch(t.Context(), rev.Commit)
	if err != nil {
		t.Fatal(err)
	}
	if rev2.Commit != c7 || rev2.Rewritten {
		t.Fatalf("fetch = %s rewritten=%v, want %s (fast-forward over %s)", rev2.Commit, rev2.Rewritten, c7, c6)
	}
	if got := readFile(t, rev2, "n"); got != "seven" {
		t.Fatalf("n = %q", got)
	}
}

func TestRewrittenHistory(t *testing.T) {
	tests := []struct {
		name    string
		allow   bool
		wantErr error
		wantLog string
	}{
		{"refused", false, ErrRewritten, "history rewritten: refusing"},
		{"followed", true, nil, "history rewritten: following"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newGitRepo(t)
			a := r.Commit(map[string]string{"f": "a"}, "a")
			b := r.Commit(map[string]string{"f": "b"}, "b")
			var logs bytes.Buffer
			s := newSource(t, Options{URL: r.URL(), AllowRewrite: tt.allow,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			rev, err := s.Fetch(t.Context(), "")
			if err != nil || rev.Commit != b {
				t.Fatalf("first fetch: %v %v", rev, err)
			}
			r.Git("reset", "-q", "--hard", a)
			c := r.Commit(map[string]string{"f": "c"}, "c rewrites b")
			rev, err = s.Fetch(t.Context(), b)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("fetch after force-push: err = %v, want %v", err, tt.wantErr)
			}
			if rev == nil || rev.Commit != c || !rev.Rewritten {
				t.Fatalf("revision = %+v, want %s marked rewritten", rev, c)
			}
			if err != nil && !Stalled(err) {
				t.Fatalf("refusal is not stalled: %v", err)
			}
			// The refusal says how to recover, with the commit to push back.
			if err != nil {
				for _, w := range []string{"the device keeps " + b, "git push --force origin " + b + ":refs/heads/main", "repo.allow_rewrite: true"} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("refusal lacks %q: %v", w, err)
					}
				}
			}
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Fatalf("log lacks %q:\n%s", tt.wantLog, logs.String())
			}
		})
	}
}

func TestCorruptRepoIsClonedAgain(t *testing.T) {
	r := newGitRepo(t)
	r.Commit(map[string]string{"f": "one"}, "one")
	want := r.Commit(map[string]string{"f": "two"}, "two")
	s := newSource(t, Options{URL: r.URL()})
	if _, err := s.Fetch(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		corrupt func(t *testing.T)
	}{
		{"objects overwritten", func(t *testing.T) {
			err := filepath.WalkDir(filepath.Join(s.o.Dir, "objects"), func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				os.Chmod(p, 0o644)
				return os.WriteFile(p, []byte("garbage"), 0o644)
			})
			if err != nil {
				t.Fatal(err)
			}
		}},
		{"config removed", func(t *testing.T) {
			if err := os.Remove(filepath.Join(s.o.Dir, "HEAD")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.corrupt(t)
			s.verified = [20]byte{} // a new process: nothing read yet
			rev, err := s.Fetch(t.Context(), "")
			if err != nil {
				t.Fatal(err)
			}
			if rev.Commit != want || readFile(t, rev, "f") != "two" {
				t.Fatalf("after re-clone: %s", rev.Commit)
			}
		})
	}
}

func TestGitDaemonUnreachableThenBack(t *testing.T) {
	r := newGitRepo(t)
	want := r.Commit(map[string]string{"f": "x"}, "x")
	base := filepath.Dir(r.Dir)
	d := startGitDaemon(t, base, 0)
	s := newSource(t, Options{URL: "git://" + d.addr() + "/fleet", Timeout: 10 * time.Second})
	rev, err := s.Fetch(t.Context(), "")
	if err != nil || rev.Commit != want {
		t.Fatalf("fetch over git daemon: %v %v", rev, err)
	}
	want2 := r.Commit(map[string]string{"f": "y"}, "y")
	d.stop()
	_, err = s.Fetch(t.Context(), rev.Commit)
	if !errors.Is(err, ErrUnreachable) || Stalled(err) {
		t.Fatalf("fetch with the daemon down: %v, want ErrUnreachable (waiting)", err)
	}
	startGitDaemon(t, base, d.port)
	rev, err = s.Fetch(t.Context(), rev.Commit)
	if err != nil || rev.Commit != want2 {
		t.Fatalf("fetch after the daemon is back: %v %v", rev, err)
	}
}

func TestRefNotFound(t *testing.T) {
	r := newGitRepo(t)
	r.Commit(map[string]string{"f": "x"}, "x")
	for _, o := range []Options{{Branch: "nope"}, {Tag: "nope"}, {Commit: strings.Repeat("ab", 20)}} {
		o.URL = r.URL()
		s := newSource(t, o)
		_, err := s.Fetch(t.Context(), "")
		if !errors.Is(err, ErrRefNotFound) || !Stalled(err) {
			t.Errorf("%s: err = %v, want ErrRefNotFound", s.describeRef(), err)
		}
	}
}

func TestFetchTimeout(t *testing.T) {
	r := newGitRepo(t)
	r.Commit(map[string]string{"f": "x"}, "x")
	s := newSource(t, Options{URL: r.URL()})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Fetch(ctx, ""); err == nil {
		t.Fatal("fetch with a cancelled context succeeded")
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://user:s3cret@git.example.com/fleet.git", "https://git.example.com/fleet.git"},
		{"https://git.example.com/fleet.git", "https://git.example.com/fleet.git"},
		{"ssh://git@host:2222/fleet", "ssh://host:2222/fleet"},
		{"git@github.com:org/fleet.git", "github.com:org/fleet.git"},
		{"file:///srv/fleet", "file:///srv/fleet"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name string
		o    Options
	}{
		{"no url", Options{Dir: "/x"}},
		{"two refs", Options{URL: "file:///x", Dir: "/x", Branch: "a", Tag: "b"}},
		{"short commit", Options{URL: "file:///x", Dir: "/x", Commit: "abc"}},
		{"ssh key without known_hosts", Options{URL: "ssh://git@h/x", Dir: "/x", Auth: Auth{SSHKeyFile: "/k"}}},
		{"token over plain http", Options{URL: "http://git.example.com/x", Dir: "/x", Auth: Auth{Token: "t"}}},
	}
	for _, tt := range tests {
		if _, err := New(tt.o); err == nil {
			t.Errorf("%s: New accepted it", tt.name)
		}
	}
}

// TestFetchTimeoutOnSilentServer: a server that accepts and never answers
// costs one fetch timeout, then the fetch fails as waiting.
func TestFetchTimeoutOnSilentServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	s := newSource(t, Options{URL: "git://" + l.Addr().String() + "/fleet", Timeout: 300 * time.Millisecond})
	start := time.Now()
	_, err = s.Fetch(t.Context(), "")
	if !errors.Is(err, ErrUnreachable) || Stalled(err) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("fetch took %v with a 300ms timeout", d)
	}
}
