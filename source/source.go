// Package source keeps the device's copy of the fleet repo in the state dir
// and says which commit the device should apply: it fetches with go-git
// (shallow, one ref) over file://, git://, ssh:// or https://, imports git
// bundles for USB and air-gapped use, follows a branch or a tag or pins a
// commit, refuses rewritten history when told to, and checks commit
// signatures against keys from the device's own config.
//
// The repo is kept bare: a commit is read straight from the object store
// through an fs.FS, so no working tree can be half-written by a power cut.
//
// Only agent/ and provision/ import it; it imports nothing of ours.
package source

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
)

// Error categories, checked with errors.Is. Stalled reports which of them
// need a person; the others are retried with backoff.
var (
	// ErrUnreachable: the remote could not be reached or the fetch failed on the way (waiting).
	ErrUnreachable = errors.New("git remote unreachable")
	// ErrAuth: the remote refused the credentials, or its host key is not in known_hosts (waiting).
	ErrAuth = errors.New("git authentication failed")
	// ErrRefNotFound: the branch, tag or commit to follow does not exist (stalled).
	ErrRefNotFound = errors.New("ref not found")
	// ErrRewritten: the followed ref no longer descends from the applied commit and policy refuses that (stalled).
	ErrRewritten = errors.New("history rewritten")
	// ErrUnsigned: a signature policy is set and the commit carries no signature (stalled).
	ErrUnsigned = errors.New("commit not signed")
	// ErrBadSignature: the commit's signature is not by a trusted key, or does not verify (stalled).
	ErrBadSignature = errors.New("commit signature not trusted")
	// ErrBundle: a bundle file is malformed or does not fit this repo (stalled).
	ErrBundle = errors.New("invalid git bundle")

	errCorrupt = errors.New("local repo corrupt")
)

// Stalled reports whether err needs a person (a new commit, a new bundle or a
// config change) rather than a retry.
func Stalled(err error) bool {
	for _, e := range []error{ErrRefNotFound, ErrRewritten, ErrUnsigned, ErrBadSignature, ErrBundle} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Machine reasons Reason returns, stable for status reports (each is
// explained in docs/guide/troubleshooting.md).
const (
	ReasonCommitUnsigned     = "commit-unsigned"
	ReasonSignatureUntrusted = "signature-untrusted"
	ReasonHistoryRewritten   = "history-rewritten"
	ReasonRefNotFound        = "ref-not-found"
	ReasonBundleInvalid      = "bundle-invalid"
	ReasonGitAuth            = "git-auth"
	ReasonGitUnreachable     = "git-unreachable"
	ReasonGitError           = "git-error" // anything else, e.g. a corrupt local repo
)

// Reason returns a stable machine reason for err, for status reports.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrUnsigned):
		return ReasonCommitUnsigned
	case errors.Is(err, ErrBadSignature):
		return ReasonSignatureUntrusted
	case errors.Is(err, ErrRewritten):
		return ReasonHistoryRewritten
	case errors.Is(err, ErrRefNotFound):
		return ReasonRefNotFound
	case errors.Is(err, ErrBundle):
		return ReasonBundleInvalid
	case errors.Is(err, ErrAuth):
		return ReasonGitAuth
	case errors.Is(err, ErrUnreachable):
		return ReasonGitUnreachable
	}
	return ReasonGitError
}

// Auth holds the credentials for the remote. They are never logged and are
// stripped from errors.
type Auth struct {
	SSHKeyFile       string // private key for ssh:// remotes
	SSHKeyPassphrase string
	SSHUser          string // default "git"
	KnownHostsFile   string // required with SSHKeyFile: host keys are always checked
	Token            string // HTTPS token, sent as the basic-auth password
	TokenUser        string // default "git"
}

// Options configure a Source. Exactly one of Branch, Tag and Commit is
// followed; with none set, Branch "main".
type Options struct {
	URL string // the fleet repo
	// Mirrors are tried first, in order (a site relay's copy of the fleet
	// repo); one that fails is skipped for the next, URL last. Credentials
	// in Auth go to URL only. Signature policy judges every commit alike.
	Mirrors []string
	Dir     string // where the bare repo is kept (the state dir's repo/)
	Branch  string
	Tag     string
	Commit  string // a full 40-hex commit id: pinned
	// Depth of the first clone; 0 means 1. Later fetches bring only what is new.
	Depth int
	Auth  Auth
	// CABundle holds PEM certificates trusted for an https:// remote besides
	// the system's: a fleet repo served under a private CA.
	CABundle []byte
	// AllowRewrite follows a force-pushed ref; false refuses it and keeps the applied commit.
	AllowRewrite bool
	// Signatures, when not empty, admits only commits signed by its keys.
	Signatures *SignaturePolicy
	// Timeout bounds one fetch; 0 means 2 minutes.
	Timeout time.Duration
	Logger  *slog.Logger // nil discards
}

// Revision is one commit of the fleet repo as the device sees it.
type Revision struct {
	Commit string    // 40-hex commit id
	Time   time.Time // committer time: a lower bound for a clock with no RTC
	Signer string    // the trusted key that signed it, when a policy is set
	// Message is the commit message (the hub reads rollout trailers from it).
	Message string
	// Rewritten: the commit does not descend from the one passed as since.
	Rewritten bool
	FS        fs.FS // the commit's files, read from the object store
}

// Source fetches and evaluates the fleet repo. It is not safe for concurrent use.
type Source struct {
	o        Options
	log      *slog.Logger
	safeURL  string
	target   plumbing.ReferenceName // where the followed ref lands locally
	refspec  gitconfig.RefSpec
	verified plumbing.Hash // the last commit whose tree was read whole without error
}

// New checks o and returns a Source; nothing is fetched yet.
func New(o Options) (*Source, error) {
	if o.URL == "" {
		return nil, errors.New("source: url is required")
	}
	if o.Dir == "" {
		return nil, errors.New("source: dir is required")
	}
	set := 0
	for _, v := range []string{o.Branch, o.Tag, o.Commit} {
		if v != "" {
			set++
		}
	}
	if set > 1 {
		return nil, errors.New("source: set only one of branch, tag and commit")
	}
	if set == 0 {
		o.Branch = "main"
	}
	if o.Commit != "" {
		if _, ok := parseHash(o.Commit); !ok {
			return nil, fmt.Errorf("source: commit %q: want a full 40-hex commit id", o.Commit)
		}
	}
	if len(o.CABundle) > 0 && !x509.NewCertPool().AppendCertsFromPEM(o.CABundle) {
		return nil, errors.New("source: CA bundle: no PEM certificate in it")
	}
	if o.Depth <= 0 {
		o.Depth = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ep, err := transport.NewEndpoint(o.URL)
	if err != nil {
		return nil, fmt.Errorf("source: url %s: %w", RedactURL(o.URL), err)
	}
	if ep.Protocol == "ssh" && o.Auth.SSHKeyFile != "" && o.Auth.KnownHostsFile == "" {
		return nil, errors.New("source: an ssh key needs a known_hosts file: host keys are always checked")
	}
	if o.Auth.Token != "" {
		switch {
		case ep.Protocol == "https":
		case ep.Protocol == "http" && isLoopback(ep.Host):
		default:
			return nil, fmt.Errorf("source: a token is only sent over https (url %s)", RedactURL(o.URL))
		}
	}
	s := &Source{o: o, safeURL: RedactURL(o.URL)}
	s.log = o.Logger.With("repo", s.safeURL)
	switch {
	case o.Branch != "":
		s.target = plumbing.NewRemoteReferenceName("origin", o.Branch)
		s.refspec = gitconfig.RefSpec("+" + string(plumbing.NewBranchReferenceName(o.Branch)) + ":" + string(s.target))
	case o.Tag != "":
		s.target = plumbing.NewTagReferenceName(o.Tag)
		s.refspec = gitconfig.RefSpec("+" + string(s.target) + ":" + string(s.target))
	default:
		s.target = "refs/shoal/pinned"
		s.refspec = gitconfig.RefSpec("+" + o.Commit + ":" + string(s.target))
	}
	if err := s.refspec.Validate(); err != nil {
		return nil, fmt.Errorf("source: ref: %w", err)
	}
	return s, nil
}

// URL returns the remote's URL with any credentials removed.
func (s *Source) URL() string { return s.safeURL }

// Fetch brings the followed ref up to date and evaluates its commit against
// since (the commit currently applied; "" if none): rewritten history and
// the signature policy. When the evaluation refuses the commit, the Revision
// is returned with the error so the caller can report what it refused.
// A local repo found corrupt is removed and cloned again.
func (s *Source) Fetch(ctx context.Context, since string) (*Revision, error) {
	rev, err := s.fetchOnce(ctx, since)
	if errors.Is(err, errCorrupt) {
		s.log.Warn("local repo corrupt; cloning again", "dir", s.o.Dir, "err", err)
		if rerr := os.RemoveAll(s.o.Dir); rerr != nil {
			return nil, fmt.Errorf("remove corrupt repo: %w", rerr)
		}
		s.verified = plumbing.ZeroHash
		rev, err = s.fetchOnce(ctx, since)
	}
	return rev, err
}

func (s *Source) fetchOnce(ctx context.Context, since string) (*Revision, error) {
	ctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	repo, fresh, err := s.open()
	if err != nil {
		return nil, err
	}
	if err := s.fetch(ctx, repo, fresh); err != nil {
		return nil, err
	}
	ref, err := repo.Reference(s.target, false)
	if err != nil {
		return nil, fmt.Errorf("%s after fetch: %w", s.describeRef(), ErrRefNotFound)
	}
	return s.evaluate(repo, ref.Hash(), since)
}

// rewriteRecovery says what an operator does about a refused rewrite.
func (s *Source) rewriteRecovery(applied string) string {
	ref := "<branch>"
	switch {
	case s.o.Branch != "":
		ref = "refs/heads/" + s.o.Branch
	case s.o.Tag != "":
		ref = "refs/tags/" + s.o.Tag
	}
	return fmt.Sprintf("the device keeps %s. To recover, put it back in the history "+
		"(git push --force origin %s:%s, then push your change as a new commit on top, or git revert what was meant to go), "+
		"or, if the rewrite was meant, set repo.allow_rewrite: true in the agent config and restart the agent "+
		"(systemctl restart shoal-agent) until it has applied the new head", applied, applied, ref)
}

func (s *Source) describeRef() string {
	switch {
	case s.o.Branch != "":
		return fmt.Sprintf("branch %q", s.o.Branch)
	case s.o.Tag != "":
		return fmt.Sprintf("tag %q", s.o.Tag)
	}
	return fmt.Sprintf("commit %s", s.o.Commit)
}

// open opens the bare repo, creating it when missing, and checks that the
// commit it points at can be read; a repo that cannot is reported corrupt.
func (s *Source) open() (repo *git.Repository, fresh bool, err error) {
	repo, err = git.PlainOpen(s.o.Dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		// Whatever is left there is not a repo (e.g. a clone cut short): start afresh.
		if err := os.RemoveAll(s.o.Dir); err != nil {
			return nil, false, fmt.Errorf("clear repo dir: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(s.o.Dir), 0o755); err != nil {
			return nil, false, fmt.Errorf("create repo dir: %w", err)
		}
		repo, err = git.PlainInit(s.o.Dir, true)
		if err != nil {
			return nil, false, fmt.Errorf("init repo %s: %w", s.o.Dir, err)
		}
		_, err = repo.CreateRemote(&gitconfig.RemoteConfig{Name: "origin", URLs: []string{s.o.URL}})
		if err != nil {
			return nil, false, fmt.Errorf("init repo %s: %w", s.o.Dir, err)
		}
		return repo, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("open %s: %v: %w", s.o.Dir, err, errCorrupt)
	}
	if ref, err := repo.Reference(s.target, false); err == nil {
		c, err := resolveCommit(repo, ref.Hash())
		if err == nil {
			_, err = c.Tree()
		}
		if err != nil {
			return nil, false, fmt.Errorf("read %s: %v: %w", ref.Hash(), err, errCorrupt)
		}
	} else if !errors.Is(err, plumbing.ErrReferenceNotFound) {
		return nil, false, fmt.Errorf("read ref: %v: %w", err, errCorrupt)
	}
	return repo, false, nil
}

func (s *Source) fetch(ctx context.Context, repo *git.Repository, fresh bool) error {
	if s.o.Commit != "" {
		// A pinned commit never changes: once stored, nothing to fetch.
		if _, err := repo.CommitObject(plumbing.NewHash(s.o.Commit)); err == nil {
			return repo.Storer.SetReference(plumbing.NewHashReference(s.target, plumbing.NewHash(s.o.Commit)))
		}
	}
	for _, m := range s.o.Mirrors {
		err := s.fetchFrom(ctx, repo, fresh, m, nil)
		if err == nil {
			return nil
		}
		s.log.Info("fleet repo mirror failed; trying the next", "mirror", RedactURL(m), "err", err)
	}
	auth, err := s.auth()
	if err != nil {
		return err
	}
	return s.fetchFrom(ctx, repo, fresh, s.o.URL, auth)
}

func (s *Source) fetchFrom(ctx context.Context, repo *git.Repository, fresh bool, remote string, auth transport.AuthMethod) error {
	safe := RedactURL(remote)
	fo := &git.FetchOptions{
		RemoteName: "origin",
		RemoteURL:  remote,
		RefSpecs:   []gitconfig.RefSpec{s.refspec},
		Auth:       auth,
		Tags:       git.NoTags,
		Force:      true, // rewritten history is judged in evaluate, by policy
		CABundle:   caBundle(s.o.CABundle),
	}
	if fresh {
		fo.Depth = s.o.Depth
	}
	err := repo.FetchContext(ctx, fo)
	if errors.Is(err, git.ErrExactSHA1NotSupported) || (err != nil && s.o.Commit != "" && strings.Contains(err.Error(), "not our ref")) {
		// The server will not send a bare commit id: fetch every branch in full and look for it.
		fo.RefSpecs = []gitconfig.RefSpec{"+refs/heads/*:refs/remotes/origin/*"}
		fo.Depth = 0
		err = repo.FetchContext(ctx, fo)
		if err == nil || errors.Is(err, git.NoErrAlreadyUpToDate) {
			h := plumbing.NewHash(s.o.Commit)
			if _, cerr := repo.CommitObject(h); cerr != nil {
				return fmt.Errorf("%s is on no branch of %s: %w", s.describeRef(), safe, ErrRefNotFound)
			}
			return repo.Storer.SetReference(plumbing.NewHashReference(s.target, h))
		}
	}
	switch {
	case err == nil, errors.Is(err, git.NoErrAlreadyUpToDate):
		return nil
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed),
		strings.Contains(err.Error(), "unable to authenticate"), strings.Contains(err.Error(), "knownhosts"):
		return fmt.Errorf("fetch %s: %s: %w", safe, s.sanitize(err), ErrAuth)
	case isRefMissing(err):
		return fmt.Errorf("fetch %s: %s: %w", safe, s.describeRef(), ErrRefNotFound)
	}
	return fmt.Errorf("fetch %s: %s: %w", safe, s.sanitize(err), ErrUnreachable)
}

func isRefMissing(err error) bool {
	var nf git.NoMatchingRefSpecError
	return errors.As(err, &nf) || errors.Is(err, transport.ErrEmptyRemoteRepository)
}

func (s *Source) auth() (transport.AuthMethod, error) {
	ep, err := transport.NewEndpoint(s.o.URL)
	if err != nil {
		return nil, fmt.Errorf("url %s: %w", s.safeURL, err)
	}
	a := s.o.Auth
	switch ep.Protocol {
	case "ssh":
		if a.SSHKeyFile == "" {
			return nil, fmt.Errorf("ssh remote %s: no ssh key configured: %w", s.safeURL, ErrAuth)
		}
		user := a.SSHUser
		if user == "" {
			user = ep.User
		}
		if user == "" {
			user = "git"
		}
		pk, err := gitssh.NewPublicKeysFromFile(user, a.SSHKeyFile, a.SSHKeyPassphrase)
		if err != nil {
			return nil, fmt.Errorf("ssh key %s: %v: %w", a.SSHKeyFile, err, ErrAuth)
		}
		db, err := gitssh.NewKnownHostsDb(a.KnownHostsFile)
		if err != nil {
			return nil, fmt.Errorf("known_hosts %s: %v: %w", a.KnownHostsFile, err, ErrAuth)
		}
		pk.HostKeyCallback = db.HostKeyCallback()
		pk.HostKeyAlgorithms = db.HostKeyAlgorithms(net.JoinHostPort(ep.Host, fmt.Sprint(ep.Port)))
		return pk, nil
	case "http", "https":
		if a.Token != "" {
			user := a.TokenUser
			if user == "" {
				user = "git"
			}
			return &githttp.BasicAuth{Username: user, Password: a.Token}, nil
		}
	}
	return nil, nil
}

// sanitize returns err's text with the URL's credentials and the token removed.
func (s *Source) sanitize(err error) string {
	msg := strings.ReplaceAll(err.Error(), s.o.URL, s.safeURL)
	for _, secret := range []string{s.o.Auth.Token, s.o.Auth.SSHKeyPassphrase, urlPassword(s.o.URL)} {
		if secret != "" {
			msg = strings.ReplaceAll(msg, secret, "***")
		}
	}
	return msg
}

func urlPassword(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return ""
	}
	p, _ := u.User.Password()
	return p
}

// RedactURL removes user information from a URL so it can be logged.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		// scp-like user@host:path keeps only host:path.
		if at := strings.Index(raw, "@"); at >= 0 && !strings.Contains(raw[:at], "/") {
			return raw[at+1:]
		}
		return raw
	}
	if u.User != nil {
		u.User = nil
	}
	return u.String()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// evaluate reads commit h whole and applies the rewrite and signature policies.
func (s *Source) evaluate(repo *git.Repository, h plumbing.Hash, since string) (*Revision, error) {
	c, err := resolveCommit(repo, h)
	if err != nil {
		return nil, fmt.Errorf("read commit %s: %v: %w", h, err, errCorrupt)
	}
	tree, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("read tree of %s: %v: %w", c.Hash, err, errCorrupt)
	}
	if s.verified != c.Hash {
		if err := readAll(tree); err != nil {
			return nil, fmt.Errorf("read files of %s: %v: %w", c.Hash, err, errCorrupt)
		}
		s.verified = c.Hash
	}
	rev := &Revision{Commit: c.Hash.String(), Time: c.Committer.When, Message: c.Message, FS: &treeFS{root: tree, when: c.Committer.When}}
	if since != "" && since != rev.Commit {
		ok, known := isAncestor(repo, plumbing.NewHash(since), c)
		switch {
		case !known:
			s.log.Info("applied commit not in local history; cannot check for rewritten history", "applied", since, "commit", rev.Commit)
		case !ok:
			rev.Rewritten = true
			if !s.o.AllowRewrite {
				s.log.Warn("history rewritten: refusing the new commit, keeping the applied one (set allow_rewrite to follow)",
					"ref", s.describeRef(), "applied", since, "commit", rev.Commit)
				return rev, fmt.Errorf("%s moved to %s, which does not descend from applied commit %s: %w; %s",
					s.describeRef(), short(rev.Commit), short(since), ErrRewritten, s.rewriteRecovery(since))
			}
			s.log.Warn("history rewritten: following the new commit as configured",
				"ref", s.describeRef(), "applied", since, "commit", rev.Commit)
		}
	}
	signer, err := s.o.Signatures.Verify(c)
	if err != nil {
		return rev, err
	}
	rev.Signer = signer
	return rev, nil
}

// resolveCommit peels an annotated tag to its commit.
func resolveCommit(repo *git.Repository, h plumbing.Hash) (*object.Commit, error) {
	for range 10 {
		o, err := repo.Object(plumbing.AnyObject, h)
		if err != nil {
			return nil, err
		}
		switch v := o.(type) {
		case *object.Commit:
			return v, nil
		case *object.Tag:
			h = v.Target
		default:
			return nil, fmt.Errorf("%s is a %s, not a commit", h, o.Type())
		}
	}
	return nil, errors.New("tag chain too long")
}

// readAll reads every blob of tree once, so a corrupt object is found now
// rather than halfway through rendering.
func readAll(tree *object.Tree) error {
	return tree.Files().ForEach(func(f *object.File) error {
		r, err := f.Reader()
		if err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		defer r.Close()
		if _, err := io.Copy(io.Discard, r); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		return nil
	})
}

// isAncestor reports whether old is head or one of its ancestors. known is
// false when old is not stored locally (e.g. after a fresh shallow clone).
func isAncestor(repo *git.Repository, old plumbing.Hash, head *object.Commit) (ok, known bool) {
	if _, err := repo.CommitObject(old); err != nil {
		return false, false
	}
	seen := map[plumbing.Hash]bool{}
	queue := []*object.Commit{head}
	for len(queue) > 0 && len(seen) < 100000 {
		c := queue[0]
		queue = queue[1:]
		if c.Hash == old {
			return true, true
		}
		for _, p := range c.ParentHashes {
			if seen[p] {
				continue
			}
			seen[p] = true
			pc, err := repo.CommitObject(p)
			if err != nil {
				continue // beyond a shallow boundary
			}
			queue = append(queue, pc)
		}
	}
	return false, true
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// Open returns the stored commit (e.g. the applied one at start, before any
// network); it fetches nothing and applies no policy.
func (s *Source) Open(commit string) (*Revision, error) {
	repo, err := git.PlainOpen(s.o.Dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.o.Dir, err)
	}
	c, err := repo.CommitObject(plumbing.NewHash(commit))
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", short(commit), err)
	}
	tree, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("tree of %s: %w", short(commit), err)
	}
	return &Revision{Commit: c.Hash.String(), Time: c.Committer.When, FS: &treeFS{root: tree, when: c.Committer.When}}, nil
}
