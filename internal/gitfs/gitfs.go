// Package gitfs serves the tree of one Git commit as an fs.FS, so a fleet repo
// can be loaded at any revision without a checkout (`shoal diff`).
package gitfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// FS is the tree of a commit, read-only.
type FS struct {
	tree   *object.Tree
	when   time.Time
	commit *object.Commit
}

// Commit is the commit whose tree f serves (for its signature, its time).
func (f *FS) Commit() *object.Commit { return f.commit }

// Open resolves rev (a branch, tag, commit hash or expression such as HEAD~1)
// in the repository that contains dir and returns the tree of dir at that
// revision, with the commit hash. dir may be a bare repository; then the
// tree is the commit's whole tree.
func Open(dir, rev string) (*FS, string, error) {
	// A bare repository is only found as itself: the search upwards for a
	// .git that a directory inside a work tree needs would pass it by.
	repo, err := git.PlainOpen(dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		repo, err = git.PlainOpenWithOptions(dir, &git.PlainOpenOptions{DetectDotGit: true})
	}
	if err != nil {
		return nil, "", fmt.Errorf("open git repository at %s: %w", dir, err)
	}
	sub := ""
	wt, err := repo.Worktree()
	switch {
	case errors.Is(err, git.ErrIsBareRepository):
	case err != nil:
		return nil, "", fmt.Errorf("repository at %s: %w", dir, err)
	default:
		if sub, err = relPath(wt.Filesystem.Root(), dir); err != nil {
			return nil, "", err
		}
	}
	t, c, h, err := treeAt(repo, rev)
	if err != nil {
		return nil, "", err
	}
	if sub != "" {
		if t, err = t.Tree(sub); err != nil {
			return nil, "", fmt.Errorf("revision %q has no %s/: %w", rev, sub, err)
		}
	}
	return &FS{tree: t, when: c.Committer.When, commit: c}, h.String(), nil
}

// Open implements fs.FS.
func (f *FS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		return &dir{fsys: f, name: ".", tree: f.tree}, nil
	}
	ent, err := f.tree.FindEntry(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	if ent.Mode == filemode.Dir {
		t, err := f.tree.Tree(name)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &dir{fsys: f, name: name, tree: t}, nil
	}
	file, err := f.tree.File(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	r, err := file.Reader()
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return &regular{ReadCloser: r, info: info{name: path.Base(name), mode: ent.Mode, size: file.Size, when: f.when}}, nil
}

// ReadDir implements fs.ReadDirFS.
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	t := f.tree
	if name != "." {
		var err error
		if t, err = f.tree.Tree(name); err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrNotExist}
		}
	}
	out := make([]fs.DirEntry, 0, len(t.Entries))
	for _, e := range t.Entries {
		var size int64
		if e.Mode != filemode.Dir {
			size, _ = t.Size(e.Name)
		}
		out = append(out, fs.FileInfoToDirEntry(info{name: e.Name, mode: e.Mode, size: size, when: f.when}))
	}
	return out, nil
}

type regular struct {
	io.ReadCloser
	info info
}

func (r *regular) Stat() (fs.FileInfo, error) { return r.info, nil }

type dir struct {
	fsys    *FS
	name    string
	tree    *object.Tree
	entries []fs.DirEntry // read on the first ReadDir
	read    bool
}

func (d *dir) Stat() (fs.FileInfo, error) {
	return info{name: path.Base(d.name), mode: filemode.Dir, when: d.fsys.when}, nil
}
func (d *dir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.name, Err: errors.New("is a directory")}
}
func (d *dir) Close() error { return nil }

// ReadDir implements fs.ReadDirFile: n > 0 returns at most n entries and
// io.EOF at the end; n <= 0 returns all that are left.
func (d *dir) ReadDir(n int) ([]fs.DirEntry, error) {
	if !d.read {
		d.read = true
		var err error
		if d.entries, err = d.fsys.ReadDir(d.name); err != nil {
			return nil, err
		}
	}
	if n <= 0 {
		out := d.entries
		d.entries = nil
		return out, nil
	}
	if len(d.entries) == 0 {
		return nil, io.EOF
	}
	if n > len(d.entries) {
		n = len(d.entries)
	}
	out := d.entries[:n]
	d.entries = d.entries[n:]
	return out, nil
}

type info struct {
	name string
	mode filemode.FileMode
	size int64
	when time.Time
}

func (i info) Name() string { return i.name }
func (i info) Size() int64  { return i.size }
func (i info) Mode() fs.FileMode {
	if i.mode == filemode.Dir {
		return fs.ModeDir | 0o555
	}
	if i.mode == filemode.Symlink {
		return fs.ModeSymlink | 0o444
	}
	return 0o444
}
func (i info) ModTime() time.Time { return i.when }
func (i info) IsDir() bool        { return i.mode == filemode.Dir }
func (i info) Sys() any           { return nil }

func relPath(root, dir string) (string, error) {
	abs, err := absClean(dir)
	if err != nil {
		return "", err
	}
	root, err = absClean(root)
	if err != nil {
		return "", err
	}
	if abs == root {
		return "", nil
	}
	if !strings.HasPrefix(abs, root+"/") {
		return "", fmt.Errorf("%s is not inside the repository at %s", dir, root)
	}
	return abs[len(root)+1:], nil
}

// OpenBare resolves rev in the bare repository at gitDir (a mirror, say)
// and returns the whole tree at that revision, with the commit hash.
func OpenBare(gitDir, rev string) (*FS, string, error) {
	repo, err := git.PlainOpen(gitDir)
	if err != nil {
		return nil, "", fmt.Errorf("open git repository at %s: %w", gitDir, err)
	}
	t, c, h, err := treeAt(repo, rev)
	if err != nil {
		return nil, "", err
	}
	return &FS{tree: t, when: c.Committer.When}, h.String(), nil
}

// treeAt resolves rev to its commit and tree.
func treeAt(repo *git.Repository, rev string) (*object.Tree, *object.Commit, *plumbing.Hash, error) {
	h, err := repo.ResolveRevision(plumbing.Revision(rev))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("resolve revision %q: %w", rev, err)
	}
	c, err := repo.CommitObject(*h)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("revision %q: %w", rev, err)
	}
	t, err := c.Tree()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("revision %q: %w", rev, err)
	}
	return t, c, h, nil
}
