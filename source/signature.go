package source

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"golang.org/x/crypto/ssh"
)

// SignaturePolicy says which keys may sign the commits a device applies. Its
// keys come from the device's own config, never from the repo being checked.
// A nil policy accepts any commit.
type SignaturePolicy struct {
	// OpenPGP is an armored OpenPGP public keyring; empty: no OpenPGP signer is trusted.
	OpenPGP string
	// SSH holds public keys in authorized_keys format, one a line; empty: no SSH signer is trusted.
	SSH string
}

// LoadSignaturePolicy reads the trusted signers from files: an armored
// OpenPGP public keyring and SSH public keys in authorized_keys format, one
// a line. Either name may be empty. It returns nil (accept any commit) when
// both are, and an error when the files trust no key at all or an SSH key
// does not parse, so that a policy that could never admit a commit is
// caught when it is set, not on the first fetch.
func LoadSignaturePolicy(openpgpKeyring, sshKeys string) (*SignaturePolicy, error) {
	if openpgpKeyring == "" && sshKeys == "" {
		return nil, nil
	}
	p := &SignaturePolicy{}
	if openpgpKeyring != "" {
		b, err := os.ReadFile(openpgpKeyring)
		if err != nil {
			return nil, fmt.Errorf("openpgp keyring: %w", err)
		}
		p.OpenPGP = string(b)
	}
	if sshKeys != "" {
		b, err := os.ReadFile(sshKeys)
		if err != nil {
			return nil, fmt.Errorf("ssh signer keys: %w", err)
		}
		if _, err := parseAuthorizedKeys(string(b)); err != nil {
			return nil, fmt.Errorf("%s: %w", sshKeys, err)
		}
		p.SSH = string(b)
	}
	if p.Empty() {
		return nil, errors.New("the key files are empty: no commit could ever be accepted")
	}
	return p, nil
}

// Empty reports whether the policy trusts no key at all (and so checks nothing).
func (p *SignaturePolicy) Empty() bool {
	return p == nil || (strings.TrimSpace(p.OpenPGP) == "" && strings.TrimSpace(p.SSH) == "")
}

// Verify checks that c is signed by a key the policy trusts and returns a
// description of the signer. The error wraps ErrUnsigned or ErrBadSignature.
func (p *SignaturePolicy) Verify(c *object.Commit) (string, error) {
	if p.Empty() {
		return "", nil
	}
	sig := strings.TrimSpace(c.PGPSignature)
	if sig == "" {
		return "", fmt.Errorf("commit %s: %w", c.Hash, ErrUnsigned)
	}
	payload, err := unsignedPayload(c)
	if err != nil {
		return "", fmt.Errorf("commit %s: %w", c.Hash, err)
	}
	if strings.HasPrefix(sig, sshSigArmorStart) {
		keys, err := parseAuthorizedKeys(p.SSH)
		if err != nil {
			return "", fmt.Errorf("signature policy: %w", err)
		}
		if len(keys) == 0 {
			return "", fmt.Errorf("commit %s: SSH signature but no SSH signer is trusted: %w", c.Hash, ErrBadSignature)
		}
		signer, err := VerifySSHSignature([]byte(sig), payload, "git", keys)
		if err != nil {
			return "", fmt.Errorf("commit %s: %w", c.Hash, err)
		}
		return "ssh " + ssh.FingerprintSHA256(signer), nil
	}
	if strings.TrimSpace(p.OpenPGP) == "" {
		return "", fmt.Errorf("commit %s: OpenPGP signature but no OpenPGP signer is trusted: %w", c.Hash, ErrBadSignature)
	}
	ent, err := c.Verify(p.OpenPGP)
	if err != nil {
		return "", fmt.Errorf("commit %s: openpgp: %v: %w", c.Hash, err, ErrBadSignature)
	}
	return fmt.Sprintf("openpgp %X", ent.PrimaryKey.Fingerprint), nil
}

func unsignedPayload(c *object.Commit) ([]byte, error) {
	o := &plumbing.MemoryObject{}
	if err := c.EncodeWithoutSignature(o); err != nil {
		return nil, err
	}
	r, err := o.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func parseAuthorizedKeys(s string) ([]ssh.PublicKey, error) {
	var keys []ssh.PublicKey
	rest := []byte(s)
	for len(bytes.TrimSpace(rest)) > 0 {
		k, _, _, r, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			return nil, fmt.Errorf("ssh signer keys: %w", err)
		}
		keys = append(keys, k)
		rest = r
	}
	return keys, nil
}

const (
	sshSigArmorStart = "-----BEGIN SSH SIGNATURE-----"
	sshSigArmorEnd   = "-----END SSH SIGNATURE-----"
	sshSigMagic      = "SSHSIG"
)

// VerifySSHSignature checks an armored SSH signature (the format of
// `ssh-keygen -Y sign`, which Git uses for gpg.format=ssh) over message in
// namespace, made by one of keys, and returns the signing key.
// Written here because x/crypto/ssh verifies raw signatures but not this envelope.
func VerifySSHSignature(armored, message []byte, namespace string, keys []ssh.PublicKey) (ssh.PublicKey, error) {
	s, err := parseSSHSig(armored)
	if err != nil {
		return nil, fmt.Errorf("ssh signature: %v: %w", err, ErrBadSignature)
	}
	if s.namespace != namespace {
		return nil, fmt.Errorf("ssh signature: namespace %q, want %q: %w", s.namespace, namespace, ErrBadSignature)
	}
	var trusted ssh.PublicKey
	for _, k := range keys {
		if bytes.Equal(k.Marshal(), s.pub.Marshal()) {
			trusted = k
			break
		}
	}
	if trusted == nil {
		return nil, fmt.Errorf("ssh signature by %s, which is not a trusted signer: %w", ssh.FingerprintSHA256(s.pub), ErrBadSignature)
	}
	var digest []byte
	switch s.hash {
	case "sha256":
		d := sha256.Sum256(message)
		digest = d[:]
	case "sha512":
		d := sha512.Sum512(message)
		digest = d[:]
	default:
		return nil, fmt.Errorf("ssh signature: hash %q: %w", s.hash, ErrBadSignature)
	}
	var signed bytes.Buffer
	signed.WriteString(sshSigMagic)
	writeSSHString(&signed, []byte(s.namespace))
	writeSSHString(&signed, s.reserved)
	writeSSHString(&signed, []byte(s.hash))
	writeSSHString(&signed, digest)
	if err := trusted.Verify(signed.Bytes(), s.sig); err != nil {
		return nil, fmt.Errorf("ssh signature by %s does not verify: %v: %w", ssh.FingerprintSHA256(trusted), err, ErrBadSignature)
	}
	return trusted, nil
}

type sshSig struct {
	pub       ssh.PublicKey
	namespace string
	reserved  []byte
	hash      string
	sig       *ssh.Signature
}

// parseSSHSig decodes the armored SSHSIG envelope (PROTOCOL.sshsig).
func parseSSHSig(armored []byte) (*sshSig, error) {
	text := strings.TrimSpace(string(armored))
	if !strings.HasPrefix(text, sshSigArmorStart) || !strings.HasSuffix(text, sshSigArmorEnd) {
		return nil, errors.New("not an armored SSH signature")
	}
	body := strings.TrimSuffix(strings.TrimPrefix(text, sshSigArmorStart), sshSigArmorEnd)
	body = strings.Join(strings.Fields(body), "")
	blob, err := base64.StdEncoding.DecodeString(body)
	if err != nil {
		return nil, fmt.Errorf("base64: %w", err)
	}
	if !bytes.HasPrefix(blob, []byte(sshSigMagic)) {
		return nil, errors.New("missing SSHSIG magic")
	}
	r := bytes.NewReader(blob[len(sshSigMagic):])
	var version uint32
	if err := binary.Read(r, binary.BigEndian, &version); err != nil {
		return nil, errors.New("truncated version")
	}
	if version != 1 {
		return nil, fmt.Errorf("version %d unsupported", version)
	}
	var fields [5][]byte
	for i := range fields {
		if fields[i], err = readSSHString(r); err != nil {
			return nil, err
		}
	}
	if r.Len() != 0 {
		return nil, errors.New("trailing data")
	}
	pub, err := ssh.ParsePublicKey(fields[0])
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	sr := bytes.NewReader(fields[4])
	format, err := readSSHString(sr)
	if err != nil {
		return nil, err
	}
	sigBlob, err := readSSHString(sr)
	if err != nil {
		return nil, err
	}
	sig := &ssh.Signature{Format: string(format), Blob: sigBlob}
	if sr.Len() > 0 {
		// Security-key signatures carry flags and a counter after the blob.
		sig.Rest, _ = io.ReadAll(sr)
	}
	return &sshSig{pub: pub, namespace: string(fields[1]), reserved: fields[2], hash: string(fields[3]), sig: sig}, nil
}

func readSSHString(r *bytes.Reader) ([]byte, error) {
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, errors.New("truncated length")
	}
	if int64(n) > int64(r.Len()) {
		return nil, errors.New("length exceeds data")
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

func writeSSHString(w *bytes.Buffer, b []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	w.Write(n[:])
	w.Write(b)
}
