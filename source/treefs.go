package source

import (
	"errors"
	"io"
	"io/fs"
	"path"
	"sort"
	"time"

	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// treeFS is a read-only fs.FS over one commit's tree, read straight from the
// object store: no working tree is written, so a pass that finds nothing new
// writes nothing, and a half-written checkout cannot exist.
type treeFS struct {
	root *object.Tree
	when time.Time // the commit time, given to every entry
}

func (t *treeFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		return &treeDir{fsys: t, name: ".", tree: t.root}, nil
	}
	e, err := t.root.FindEntry(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	switch e.Mode {
	case filemode.Dir:
		sub, err := t.root.Tree(name)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &treeDir{fsys: t, name: name, tree: sub}, nil
	case filemode.Regular, filemode.Executable, filemode.Deprecated:
		f, err := t.root.TreeEntryFile(e)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &treeFile{info: t.info(path.Base(name), e, f.Size), blob: &f.Blob}, nil
	}
	// Symlinks and submodules could point outside the commit: not followed.
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

func (t *treeFS) info(name string, e *object.TreeEntry, size int64) *entryInfo {
	mode := fs.FileMode(0o444)
	switch e.Mode {
	case filemode.Dir:
		mode = fs.ModeDir | 0o555
	case filemode.Executable:
		mode = 0o555
	}
	return &entryInfo{name: name, size: size, mode: mode, mod: t.when}
}

type entryInfo struct {
	name string
	size int64
	mode fs.FileMode
	mod  time.Time
}

func (i *entryInfo) Name() string               { return i.name }
func (i *entryInfo) Size() int64                { return i.size }
func (i *entryInfo) Mode() fs.FileMode          { return i.mode }
func (i *entryInfo) ModTime() time.Time         { return i.mod }
func (i *entryInfo) IsDir() bool                { return i.mode.IsDir() }
func (i *entryInfo) Sys() any                   { return nil }
func (i *entryInfo) Type() fs.FileMode          { return i.mode.Type() }
func (i *entryInfo) Info() (fs.FileInfo, error) { return i, nil }

type treeFile struct {
	info *entryInfo
	blob *object.Blob
	r    io.ReadCloser
}

func (f *treeFile) Stat() (fs.FileInfo, error) { return f.info, nil }

func (f *treeFile) Read(p []byte) (int, error) {
	if f.r == nil {
		r, err := f.blob.Reader()
		if err != nil {
			return 0, err
		}
		f.r = r
	}
	return f.r.Read(p)
}

func (f *treeFile) Close() error {
	if f.r != nil {
		return f.r.Close()
	}
	return nil
}

type treeDir struct {
	fsys *treeFS
	name string
	tree *object.Tree
	ents []fs.DirEntry
	off  int
}

func (d *treeDir) Stat() (fs.FileInfo, error) {
	return &entryInfo{name: path.Base(d.name), mode: fs.ModeDir | 0o555, mod: d.fsys.when}, nil
}

func (d *treeDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.name, Err: errors.New("is a directory")}
}

func (d *treeDir) Close() error { return nil }

func (d *treeDir) ReadDir(n int) ([]fs.DirEntry, error) {
	if d.ents == nil {
		d.ents = []fs.DirEntry{}
		for i := range d.tree.Entries {
			e := &d.tree.Entries[i]
			var size int64
			switch e.Mode {
			case filemode.Dir:
			case filemode.Regular, filemode.Executable, filemode.Deprecated:
				s, err := d.tree.Size(e.Name)
				if err != nil {
					return nil, &fs.PathError{Op: "readdir", Path: d.name, Err: err}
				}
				size = s
			default:
				continue
			}
			d.ents = append(d.ents, d.fsys.info(e.Name, e, size))
		}
		sort.Slice(d.ents, func(i, j int) bool { return d.ents[i].Name() < d.ents[j].Name() })
	}
	rest := d.ents[d.off:]
	if n <= 0 {
		d.off = len(d.ents)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	if n > len(rest) {
		n = len(rest)
	}
	d.off += n
	return rest[:n], nil
}
