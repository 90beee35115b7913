package provision

import (
	"archive/tar"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
)

// Reader streams a bundle, checking the envelope's signature first and then
// each member against the manifest as it is read. It never seeks, so a
// bundle may come from a pipe.
type Reader struct {
	Manifest *Manifest
	Hash     string            // sha256 of the signed manifest: the bundle's identity
	Key      ed25519.PublicKey // the key that signed it

	tr   *tar.Reader
	next int     // index of the next member in Manifest.Members
	cur  *member // the member being read, nil between members
}

// NewReader reads the envelope from r and checks its signature against
// trusted; with trusted nil, the signer must be one of the bundle keys the
// manifest lists (trust on first use, or a look that trusts nothing yet). An
// empty, non-nil trusted refuses every bundle.
func NewReader(r io.Reader, trusted []ed25519.PublicKey) (*Reader, error) {
	tr := tar.NewReader(r)
	hdr, err := tr.Next()
	if err != nil {
		return nil, readErr("envelope", err)
	}
	if err := checkHeader(hdr); err != nil {
		return nil, err
	}
	if hdr.Name != EnvelopeName {
		return nil, fmt.Errorf("first member is %q, want %q: %w", hdr.Name, EnvelopeName, ErrInvalid)
	}
	if hdr.Size > maxEnvelope {
		return nil, fmt.Errorf("envelope of %d bytes is larger than %d: %w", hdr.Size, maxEnvelope, ErrInvalid)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		return nil, readErr("envelope", err)
	}
	m, h, key, err := openEnvelope(b, trusted)
	if err != nil {
		return nil, err
	}
	return &Reader{Manifest: m, Hash: h, Key: key, tr: tr}, nil
}

func readErr(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: file truncated: %w", what, ErrInvalid)
	}
	if errors.Is(err, tar.ErrHeader) || errors.Is(err, tar.ErrFieldTooLong) {
		return fmt.Errorf("%s: %v: %w", what, err, ErrInvalid)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// checkHeader admits only plain files: links, devices and directories have
// no place in a bundle and could point outside the temp area.
func checkHeader(h *tar.Header) error {
	switch h.Typeflag {
	case tar.TypeReg: // archive/tar reports the old TypeRegA as TypeReg
	case tar.TypeSymlink, tar.TypeLink:
		return fmt.Errorf("member %q is a link (to %q): %w", h.Name, h.Linkname, ErrInvalid)
	default:
		return fmt.Errorf("member %q has type %q, want a regular file: %w", h.Name, string(h.Typeflag), ErrInvalid)
	}
	return nil
}

// member verifies one member's bytes while they are read.
type member struct {
	m   *Member
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (v *member) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		if v.n != v.m.Size {
			v.err = fmt.Errorf("member %q: %d bytes, manifest says %d: %w", v.m.Name, v.n, v.m.Size, ErrHash)
		} else if got := hex.EncodeToString(v.h.Sum(nil)); got != v.m.SHA256 {
			v.err = fmt.Errorf("member %q: sha256 %s, manifest says %s: %w", v.m.Name, got, v.m.SHA256, ErrHash)
		} else {
			v.err = io.EOF
		}
		return n, v.err
	}
	if err != nil {
		v.err = readErr(fmt.Sprintf("member %q", v.m.Name), err)
		return n, v.err
	}
	return n, nil
}

// Next moves to the next member and returns its manifest entry and a reader
// of its bytes. The reader returns io.EOF only once the bytes matched the
// manifest, and an error wrapping ErrHash if they did not. After the last
// member Next returns io.EOF, having checked nothing follows it.
func (r *Reader) Next() (*Member, io.Reader, error) {
	if r.cur != nil {
		if _, err := io.Copy(io.Discard, r.cur); err != nil {
			return nil, nil, err
		}
		r.cur = nil
	}
	hdr, err := r.tr.Next()
	if r.next == len(r.Manifest.Members) {
		switch {
		case errors.Is(err, io.EOF):
			return nil, nil, io.EOF
		case err != nil:
			return nil, nil, readErr("end of bundle", err)
		}
		return nil, nil, fmt.Errorf("member %q is not in the manifest: %w", hdr.Name, ErrInvalid)
	}
	want := &r.Manifest.Members[r.next]
	if err != nil {
		return nil, nil, readErr(fmt.Sprintf("member %q", want.Name), err)
	}
	if err := checkHeader(hdr); err != nil {
		return nil, nil, err
	}
	if hdr.Name != want.Name {
		if r.Manifest.has(hdr.Name) {
			return nil, nil, fmt.Errorf("member %q out of manifest order (want %q): %w", hdr.Name, want.Name, ErrInvalid)
		}
		return nil, nil, fmt.Errorf("member %q is not in the manifest: %w", hdr.Name, ErrInvalid)
	}
	if hdr.Size != want.Size {
		return nil, nil, fmt.Errorf("member %q: %d bytes, manifest says %d: %w", want.Name, hdr.Size, want.Size, ErrHash)
	}
	r.next++
	r.cur = &member{m: want, r: r.tr, h: sha256.New()}
	return want, r.cur, nil
}

func (m *Manifest) has(name string) bool {
	for _, mem := range m.Members {
		if mem.Name == name {
			return true
		}
	}
	return false
}

// Verify reads a whole bundle from r and checks it; nothing is written.
func Verify(ctx context.Context, r io.Reader, trusted []ed25519.PublicKey) (*Reader, error) {
	br, err := NewReader(r, trusted)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, copyBuf)
	for {
		_, mr, err := br.Next()
		if errors.Is(err, io.EOF) {
			return br, nil
		}
		if err != nil {
			return br, err
		}
		if _, err := copyCtx(ctx, io.Discard, mr, buf); err != nil {
			return br, err
		}
	}
}

// copyBuf is the copy buffer: SD cards write 512 KiB and more many times
// faster than small blocks.
const copyBuf = 1 << 20

// copyCtx copies like io.CopyBuffer, stopping when ctx is done.
func copyCtx(ctx context.Context, w io.Writer, r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		k, err := io.ReadFull(r, buf)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			// io.ReadFull turns the member's own EOF into ErrUnexpectedEOF
			// on a short last block; the member reader has already checked
			// its hash by then, so read once more to get its verdict.
			_, err2 := r.Read(buf[:0])
			if errors.Is(err2, io.EOF) || err2 == nil {
				return n, nil
			}
			return n, err2
		}
		if err != nil {
			return n, err
		}
	}
}

// extract streams every member of br into dir (which must exist and be
// empty), each file synced, and returns the paths by member name. On error
// dir holds partial files the caller removes.
func extract(ctx context.Context, br *Reader, dir string) (map[string]string, error) {
	out := map[string]string{}
	buf := make([]byte, copyBuf)
	for {
		m, mr, err := br.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		p := filepath.Join(dir, filepath.FromSlash(m.Name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		_, err = copyCtx(ctx, f, mr, buf)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
		out[m.Name] = p
	}
}
