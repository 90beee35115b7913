package source

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
)

// BundleHeader is the text part of a git bundle file (v2 or v3): the commits
// the receiver must already have, and the refs the bundle carries.
type BundleHeader struct {
	Version       int
	Prerequisites []plumbing.Hash
	Refs          map[string]plumbing.Hash // full ref name -> object
}

// maxBundleHeader bounds the text before the packfile, so a hostile file
// cannot make the parser buffer without end.
const maxBundleHeader = 1 << 20

// ParseBundleHeader reads a bundle's header from r and leaves r at the start
// of the packfile. Errors wrap ErrBundle.
func ParseBundleHeader(r *bufio.Reader) (*BundleHeader, error) {
	h := &BundleHeader{Refs: map[string]plumbing.Hash{}}
	read := 0
	line := func() (string, error) {
		s, err := r.ReadString('\n')
		read += len(s)
		if read > maxBundleHeader {
			return "", errors.New("header larger than 1 MiB")
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return "", errors.New("truncated header")
			}
			return "", err
		}
		return strings.TrimSuffix(s, "\n"), nil
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("bundle: %s: %w", fmt.Sprintf(format, args...), ErrBundle)
	}
	sig, err := line()
	if err != nil {
		return nil, bad("%v", err)
	}
	switch sig {
	case "# v2 git bundle":
		h.Version = 2
	case "# v3 git bundle":
		h.Version = 3
	default:
		return nil, bad("not a git bundle (first line %q)", truncate(sig, 40))
	}
	for {
		l, err := line()
		if err != nil {
			return nil, bad("%v", err)
		}
		switch {
		case l == "":
			if len(h.Refs) == 0 {
				return nil, bad("no refs")
			}
			return h, nil
		case strings.HasPrefix(l, "@"):
			if h.Version < 3 {
				return nil, bad("capability %q in a v2 bundle", truncate(l, 40))
			}
			k, v, _ := strings.Cut(l[1:], "=")
			switch k {
			case "object-format":
				if v != "sha1" {
					return nil, bad("object format %q unsupported", truncate(v, 20))
				}
			case "filter":
				return nil, bad("filtered (partial) bundles are unsupported")
			default:
				return nil, bad("unknown capability %q", truncate(k, 40))
			}
		case strings.HasPrefix(l, "-"):
			oid, _, _ := strings.Cut(l[1:], " ")
			hash, ok := parseHash(oid)
			if !ok {
				return nil, bad("prerequisite %q is not an object id", truncate(oid, 50))
			}
			h.Prerequisites = append(h.Prerequisites, hash)
		default:
			oid, ref, ok := strings.Cut(l, " ")
			hash, okh := parseHash(oid)
			if !ok || !okh || ref == "" || strings.ContainsAny(ref, " \t\x00") {
				return nil, bad("bad ref line %q", truncate(l, 80))
			}
			h.Refs[ref] = hash
		}
	}
}

func parseHash(s string) (plumbing.Hash, bool) {
	if len(s) != 40 {
		return plumbing.ZeroHash, false
	}
	for _, c := range []byte(s) {
		if !bytes.ContainsRune([]byte("0123456789abcdef"), rune(c)) {
			return plumbing.ZeroHash, false
		}
	}
	return plumbing.NewHash(s), true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// ImportBundle adds a git bundle file (from a USB stick, for example) to the
// local repo and evaluates the followed ref's commit in it like Fetch does.
// The bundle must carry the followed branch or tag, or the pinned commit,
// and the local repo must hold every commit it lists as prerequisite.
func (s *Source) ImportBundle(ctx context.Context, path, since string) (*Revision, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	h, err := ParseBundleHeader(br)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	repo, _, err := s.open()
	if errors.Is(err, errCorrupt) {
		s.log.Warn("local repo corrupt; starting it again from the bundle", "dir", s.o.Dir, "err", err)
		if rerr := os.RemoveAll(s.o.Dir); rerr != nil {
			return nil, fmt.Errorf("remove corrupt repo: %w", rerr)
		}
		s.verified = plumbing.ZeroHash
		repo, _, err = s.open()
	}
	if err != nil {
		return nil, err
	}
	for _, p := range h.Prerequisites {
		if _, err := repo.Storer.EncodedObject(plumbing.AnyObject, p); err != nil {
			return nil, fmt.Errorf("bundle %s needs commit %s, which this device does not have: %w", path, short(p.String()), ErrBundle)
		}
	}
	var want plumbing.Hash
	switch {
	case s.o.Branch != "":
		want = h.Refs[string(plumbing.NewBranchReferenceName(s.o.Branch))]
	case s.o.Tag != "":
		want = h.Refs[string(plumbing.NewTagReferenceName(s.o.Tag))]
	default:
		want = plumbing.NewHash(s.o.Commit)
	}
	if want.IsZero() {
		return nil, fmt.Errorf("bundle %s does not carry %s: %w", path, s.describeRef(), ErrBundle)
	}
	if err := packfile.UpdateObjectStorage(repo.Storer, br); err != nil {
		return nil, fmt.Errorf("bundle %s: packfile: %v: %w", path, err, ErrBundle)
	}
	if _, err := resolveCommit(repo, want); err != nil {
		return nil, fmt.Errorf("bundle %s: %s not found after import: %w", path, s.describeRef(), ErrBundle)
	}
	if err := repo.Storer.SetReference(plumbing.NewHashReference(s.target, want)); err != nil {
		return nil, fmt.Errorf("bundle %s: set ref: %w", path, err)
	}
	return s.evaluate(repo, want, since)
}
