package source

import (
	"bufio"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

func TestImportBundle(t *testing.T) {
	r := newGitRepo(t)
	a := r.Commit(map[string]string{"f": "a"}, "a")
	b := r.Commit(map[string]string{"f": "b"}, "b")
	dir := t.TempDir()
	full := filepath.Join(dir, "full.bundle")
	r.Git("bundle", "create", "-q", full, "main")
	c := r.Commit(map[string]string{"f": "c"}, "c")
	incr := filepath.Join(dir, "incr.bundle")
	r.Git("bundle", "create", "-q", incr, "main", "^"+b)
	v3 := filepath.Join(dir, "v3.bundle")
	r.Git("bundle", "create", "-q", "--version=3", v3, "main")
	garbage := filepath.Join(dir, "garbage.bundle")
	if err := os.WriteFile(garbage, []byte("# v2 git bundle\n"+c+" refs/heads/main\n\nPACKnot really"), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("full then incremental, no network", func(t *testing.T) {
		s := newSource(t, Options{URL: "https://unreachable.invalid/fleet.git"})
		rev, err := s.ImportBundle(t.Context(), full, "")
		if err != nil || rev.Commit != b || readFile(t, rev, "f") != "b" {
			t.Fatalf("full bundle: %+v %v", rev, err)
		}
		rev, err = s.ImportBundle(t.Context(), incr, b)
		if err != nil || rev.Commit != c || rev.Rewritten || readFile(t, rev, "f") != "c" {
			t.Fatalf("incremental bundle: %+v %v", rev, err)
		}
	})
	t.Run("v3 bundle", func(t *testing.T) {
		s := newSource(t, Options{URL: r.URL()})
		rev, err := s.ImportBundle(t.Context(), v3, "")
		if err != nil || rev.Commit != c {
			t.Fatalf("v3 bundle: %+v %v", rev, err)
		}
	})
	tests := []struct {
		name   string
		bundle string
		opts   Options
	}{
		{"incremental without its prerequisite", incr, Options{}},
		{"branch not in bundle", full, Options{Branch: "prod"}},
		{"corrupt packfile", garbage, Options{}},
		{"not a bundle", filepath.Join(r.Dir, "f"), Options{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.URL = r.URL()
			s := newSource(t, tt.opts)
			_, err := s.ImportBundle(t.Context(), tt.bundle, "")
			if !errors.Is(err, ErrBundle) || !Stalled(err) {
				t.Fatalf("err = %v, want ErrBundle", err)
			}
		})
	}
	_ = a
}

func TestParseBundleHeader(t *testing.T) {
	h40 := strings.Repeat("a", 40)
	tests := []struct {
		name    string
		in      string
		refs    int
		prereqs int
		ok      bool
	}{
		{"v2", "# v2 git bundle\n" + h40 + " refs/heads/main\n\nPACK", 1, 0, true},
		{"v2 prereq", "# v2 git bundle\n-" + h40 + " msg\n" + h40 + " refs/heads/main\n\n", 1, 1, true},
		{"v3 sha1", "# v3 git bundle\n@object-format=sha1\n" + h40 + " refs/heads/main\n\n", 1, 0, true},
		{"v3 sha256", "# v3 git bundle\n@object-format=sha256\n" + h40 + " refs/heads/main\n\n", 0, 0, false},
		{"v3 filter", "# v3 git bundle\n@filter=blob:none\n" + h40 + " refs/heads/main\n\n", 0, 0, false},
		{"capability in v2", "# v2 git bundle\n@object-format=sha1\n\n", 0, 0, false},
		{"no refs", "# v2 git bundle\n\n", 0, 0, false},
		{"short oid", "# v2 git bundle\nabc refs/heads/main\n\n", 0, 0, false},
		{"truncated", "# v2 git bundle\n" + h40 + " refs/heads/main\n", 0, 0, false},
		{"wrong signature", "# v9 git bundle\n", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseBundleHeader(bufio.NewReader(strings.NewReader(tt.in)))
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrBundle) {
					t.Fatalf("err %v does not wrap ErrBundle", err)
				}
				return
			}
			if len(h.Refs) != tt.refs || len(h.Prerequisites) != tt.prereqs {
				t.Fatalf("refs %d prereqs %d", len(h.Refs), len(h.Prerequisites))
			}
		})
	}
}

func FuzzParseBundleHeader(f *testing.F) {
	h40 := strings.Repeat("a", 40)
	f.Add("# v2 git bundle\n" + h40 + " refs/heads/main\n\nPACK")
	f.Add("# v3 git bundle\n@object-format=sha1\n-" + h40 + " x\n" + h40 + " refs/tags/v1\n\n")
	f.Add("# v2 git bundle\n")
	f.Fuzz(func(t *testing.T, in string) {
		h, err := ParseBundleHeader(bufio.NewReader(strings.NewReader(in)))
		if err != nil {
			if !errors.Is(err, ErrBundle) {
				t.Fatalf("error %v does not wrap ErrBundle", err)
			}
			return
		}
		if len(h.Refs) == 0 {
			t.Fatal("accepted a bundle with no refs")
		}
		for ref, oid := range h.Refs {
			if ref == "" || oid.IsZero() && !strings.Contains(in, strings.Repeat("0", 40)) {
				t.Fatalf("bad ref %q -> %s", ref, oid)
			}
		}
	})
}

// TestHTTPSTokenAuth serves the repo with git's own http-backend behind basic
// auth: the right token fetches, a wrong one fails without the token in the error.
func TestHTTPTokenAuth(t *testing.T) {
	r := newGitRepo(t)
	want := r.Commit(map[string]string{"f": "x"}, "x")
	const token = "tok-9f8e7d6c5b4a"
	h := testenv.GitHTTPBackend(t, filepath.Dir(r.Dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if _, p, ok := req.BasicAuth(); !ok || p != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="fleet"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"right token", token, true},
		{"wrong token", "wrong-" + token[4:], false},
		{"no token", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSource(t, Options{URL: srv.URL + "/fleet", Auth: Auth{Token: tt.token}})
			rev, err := s.Fetch(t.Context(), "")
			if tt.ok {
				if err != nil || rev.Commit != want {
					t.Fatalf("fetch: %v %v", rev, err)
				}
				return
			}
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("err = %v, want ErrAuth", err)
			}
			if tt.token != "" && strings.Contains(err.Error(), tt.token) {
				t.Fatalf("error leaks the token: %v", err)
			}
		})
	}
}

// TestHTTPSPrivateCA fetches over HTTPS from a server whose certificate a
// private CA issued: refused without the CA bundle, fetched with it, and
// checked by the clock UseClock gives, not the system's (a device booted
// at 1970 is not refused once its bounded clock is right).
func TestHTTPSPrivateCA(t *testing.T) {
	r := newGitRepo(t)
	want := r.Commit(map[string]string{"f": "x"}, "x")
	srv := httptest.NewTLSServer(testenv.GitHTTPBackend(t, filepath.Dir(r.Dir)))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	t.Cleanup(func() { UseClock(nil) })
	// httptest's certificate is valid from 1970-01-01: a day before that.
	epoch := func() time.Time { return time.Unix(0, 0).Add(-24 * time.Hour) }
	tests := []struct {
		name  string
		ca    []byte
		clock func() time.Time // nil: the system clock
		want  string           // "" fetches
	}{
		// In this order: a connection kept alive is not checked again.
		{"no CA bundle", nil, nil, "certificate"},
		{"private CA, clock before the certificate", ca, epoch, "not yet valid"},
		{"private CA, bounded clock", ca, time.Now, ""},
		{"private CA", ca, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			UseClock(tt.clock)
			s := newSource(t, Options{URL: srv.URL + "/fleet", CABundle: tt.ca})
			rev, err := s.Fetch(t.Context(), "")
			if tt.want == "" {
				if err != nil || rev.Commit != want {
					t.Fatalf("fetch: %v %v", rev, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("fetch: %v, want an error with %q", err, tt.want)
			}
		})
	}
	if _, err := New(Options{URL: srv.URL + "/fleet", Dir: t.TempDir(), CABundle: []byte("not a certificate")}); err == nil || !strings.Contains(err.Error(), "CA bundle") {
		t.Fatalf("a CA bundle without a certificate: %v", err)
	}
}
