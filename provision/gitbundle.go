package provision

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/revlist"

	"github.com/shoalfleet/shoal/source"
)

// writeGitBundle writes a v2 git bundle holding commit and all its history
// under ref. A full bundle (no prerequisites) imports into any device repo,
// an empty one included, and lets the device check ancestry before it
// writes anything. source reads bundles but does not make them, hence this.
func writeGitBundle(repo *git.Repository, commit plumbing.Hash, ref string, w io.Writer) error {
	objs, err := revlist.Objects(repo.Storer, []plumbing.Hash{commit}, nil)
	if err != nil {
		return fmt.Errorf("git bundle: list objects of %s: %w", commit, err)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := fmt.Fprintf(bw, "# v2 git bundle\n%s %s\n\n", commit, ref); err != nil {
		return err
	}
	enc := packfile.NewEncoder(bw, repo.Storer, false)
	if _, err := enc.Encode(objs, 10); err != nil {
		return fmt.Errorf("git bundle: pack: %w", err)
	}
	return bw.Flush()
}

// stageGit imports the git bundle at path into a new bare repo at dir and
// checks it: it carries commit under ref with no prerequisites, every file
// of the commit's tree reads, and applied (when set) is commit or one of its
// ancestors. It returns the commit.
func stageGit(path, dir, ref, commit, applied string) (*object.Commit, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	h, err := source.ParseBundleHeader(br)
	if err != nil {
		return nil, fmt.Errorf("git bundle: %v: %w", err, ErrInvalid)
	}
	if len(h.Prerequisites) > 0 {
		return nil, fmt.Errorf("git bundle has %d prerequisites; bundles must be whole: %w", len(h.Prerequisites), ErrInvalid)
	}
	if got := h.Refs[ref]; got.String() != commit {
		return nil, fmt.Errorf("git bundle: %s is %s, manifest says %s: %w", ref, got, commit, ErrInvalid)
	}
	repo, err := git.PlainInit(dir, true)
	if err != nil {
		return nil, fmt.Errorf("stage repo: %w", err)
	}
	if err := packfile.UpdateObjectStorage(repo.Storer, br); err != nil {
		return nil, fmt.Errorf("git bundle: packfile: %v: %w", err, ErrInvalid)
	}
	c, err := repo.CommitObject(plumbing.NewHash(commit))
	if err != nil {
		return nil, fmt.Errorf("git bundle: commit %s: %v: %w", commit, err, ErrInvalid)
	}
	tree, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("git bundle: tree of %s: %v: %w", commit, err, ErrInvalid)
	}
	if err := tree.Files().ForEach(func(f *object.File) error {
		r, err := f.Reader()
		if err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		defer r.Close()
		_, err = io.Copy(io.Discard, r)
		return err
	}); err != nil {
		return nil, fmt.Errorf("git bundle: %v: %w", err, ErrInvalid)
	}
	if applied != "" && applied != commit {
		ok, err := descends(repo, c, plumbing.NewHash(applied))
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("commit %s does not descend from the applied commit %s: %w", short(commit), short(applied), ErrReplay)
		}
	}
	return c, nil
}

// descends reports whether old is an ancestor of c; the staged repo holds
// the whole history, so a missing parent is corruption, not a boundary.
func descends(repo *git.Repository, c *object.Commit, old plumbing.Hash) (bool, error) {
	seen := map[plumbing.Hash]bool{c.Hash: true}
	queue := []*object.Commit{c}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if cur.Hash == old {
			return true, nil
		}
		for _, p := range cur.ParentHashes {
			if seen[p] {
				continue
			}
			seen[p] = true
			pc, err := repo.CommitObject(p)
			if err != nil {
				return false, fmt.Errorf("git bundle: parent %s: %v: %w", p, err, ErrInvalid)
			}
			queue = append(queue, pc)
		}
	}
	return false, nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
