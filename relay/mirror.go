package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// mirror keeps a bare mirror of the fleet repo (git clone --mirror, then
// git fetch --prune) and serves it to the site's devices over Git's smart
// HTTP protocol through `git http-backend`.
//
// Why git itself rather than go-git's server side: devices clone shallow
// (depth 1) and fetch with go-git, and go-git's upload-pack does not serve
// shallow clones; git http-backend is the server every Git host runs,
// speaks protocol v0 to v2 with shallow and filters, packs with git's own
// delta search, and takes Git's locks, so a fetch into the mirror and a
// device's clone never see half a ref update. The relay is a site server,
// where a git package is a small thing to ask.
//
// The relay trusts the mirror with nothing: devices check commit
// signatures against their own keys, exactly as when fetching upstream.
type mirror struct {
	o    MirrorOptions
	root string // GIT_PROJECT_ROOT: holds fleet.git
	git  string

	mu      sync.Mutex // one git fetch at a time
	state   mirrorState
	stateMu sync.Mutex
}

// MirrorOptions say where the fleet repo is and how to reach it.
type MirrorOptions struct {
	URL    string // the upstream fleet repo (any URL git understands)
	Branch string // the branch devices follow (for the status page); default main
	// SSHKey and KnownHosts authenticate an ssh:// upstream (host keys are
	// always checked); TokenFile holds an https token sent as the basic-auth
	// password for TokenUser.
	SSHKey, KnownHosts   string
	TokenFile, TokenUser string
	// Interval between fetches when no poke comes (default 5m).
	Interval time.Duration
}

type mirrorState struct {
	commit  string
	fetched time.Time
	err     string
}

// repoName is the mirror's name in the relay's Git URL: https://RELAY/git/fleet.git.
const repoName = "fleet.git"

func newMirror(stateDir string, o MirrorOptions) (*mirror, error) {
	if o.Branch == "" {
		o.Branch = "main"
	}
	if o.Interval <= 0 {
		o.Interval = 5 * time.Minute
	}
	if o.TokenUser == "" {
		o.TokenUser = "git"
	}
	if o.SSHKey != "" && o.KnownHosts == "" {
		return nil, errors.New("mirror: an ssh key needs a known_hosts file: host keys are always checked")
	}
	git, err := exec.LookPath("git")
	if err != nil {
		return nil, errors.New("mirror: git not found (install the git package): the relay serves the fleet repo with git http-backend")
	}
	m := &mirror{o: o, root: filepath.Join(stateDir, "git"), git: git}
	if err := os.MkdirAll(m.root, 0o700); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	m.refreshState("")
	return m, nil
}

func (m *mirror) dir() string { return filepath.Join(m.root, repoName) }

// run runs git with the upstream's credentials, in the mirror.
func (m *mirror) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, m.git, args...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false")
	if m.o.SSHKey != "" {
		cmd.Env = append(cmd.Env, "GIT_SSH_COMMAND=ssh -i "+shellQuote(m.o.SSHKey)+" -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="+shellQuote(m.o.KnownHosts))
	}
	if m.o.TokenFile != "" {
		tok, err := os.ReadFile(m.o.TokenFile)
		if err != nil {
			return "", fmt.Errorf("mirror: token: %w", err)
		}
		// Through the environment, not argv: other users see a process's arguments.
		cmd.Env = append(cmd.Env, "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http.extraHeader",
			"GIT_CONFIG_VALUE_0=Authorization: Basic "+basicAuth(m.o.TokenUser, strings.TrimSpace(string(tok))))
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		return "", fmt.Errorf("git %s: %v: %s", args[0], err, redact(msg))
	}
	return strings.TrimSpace(out.String()), nil
}

// sync brings the mirror up to date with upstream: a first clone, or a fetch.
func (m *mirror) sync(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var err error
	if _, serr := os.Stat(filepath.Join(m.dir(), "HEAD")); serr != nil {
		tmp := m.dir() + ".tmp"
		os.RemoveAll(tmp)
		if _, err = m.run(ctx, "clone", "--mirror", "--quiet", m.o.URL, tmp); err == nil {
			// The clone is whole before devices can see it.
			err = os.Rename(tmp, m.dir())
		}
		os.RemoveAll(tmp)
	} else {
		_, err = m.run(ctx, "-C", m.dir(), "fetch", "--prune", "--quiet", "origin")
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	m.refreshState(msg)
	if err != nil {
		return fmt.Errorf("mirror %s: %w", redact(m.o.URL), err)
	}
	return nil
}

// importBundle fetches every ref of a git bundle into the mirror (a site
// with no uplink updated from a USB stick); a mirror not yet cloned is
// made from the bundle.
func (m *mirror) importBundle(ctx context.Context, bundle string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var err error
	if _, serr := os.Stat(filepath.Join(m.dir(), "HEAD")); serr != nil {
		_, err = m.run(ctx, "init", "--bare", "--quiet", m.dir())
		if err == nil && m.o.URL != "" {
			_, err = m.run(ctx, "-C", m.dir(), "remote", "add", "--mirror=fetch", "origin", m.o.URL)
		}
	}
	if err == nil {
		// Force: the bundle is signed by the operator and newer than what the
		// uplink gave, and devices judge every commit by their own policy.
		_, err = m.run(ctx, "-C", m.dir(), "fetch", "--quiet", "--update-head-ok", bundle, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	m.refreshState(msg)
	return err
}

func (m *mirror) refreshState(errMsg string) {
	commit := ""
	if b, err := exec.Command(m.git, "-C", m.dir(), "rev-parse", "--verify", "--quiet", "refs/heads/"+m.o.Branch+"^{commit}").Output(); err == nil {
		commit = strings.TrimSpace(string(b))
	}
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	if errMsg == "" {
		m.state.fetched = time.Now()
	}
	m.state.commit, m.state.err = commit, errMsg
}

func (m *mirror) status() mirrorState {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	return m.state
}

// ServeHTTP serves the mirror read-only under /git/ (the caller has
// checked the device's certificate): upload-pack only, never receive-pack.
func (m *mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "git-receive-pack") || r.URL.Query().Get("service") == "git-receive-pack" {
		http.Error(w, "the relay's fleet repo mirror is read-only", http.StatusForbidden)
		return
	}
	if _, err := os.Stat(filepath.Join(m.dir(), "HEAD")); err != nil {
		http.Error(w, "the relay has no fleet repo mirror yet", http.StatusServiceUnavailable)
		return
	}
	h := &cgi.Handler{
		Path: m.git,
		Root: "/git",
		Args: []string{"http-backend"},
		Dir:  m.root,
		Env: []string{
			"GIT_PROJECT_ROOT=" + m.root,
			"GIT_HTTP_EXPORT_ALL=1",
			"GIT_PROTOCOL=" + r.Header.Get("Git-Protocol"),
		},
	}
	h.ServeHTTP(w, r)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
