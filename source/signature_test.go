package source

import (
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/sshdtest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// gpgKey makes an OpenPGP signing key in the repo's GNUPGHOME and returns its
// fingerprint and armored public key.
func gpgKey(t *testing.T, r *gitRepo, uid string) (string, string) {
	t.Helper()
	testenv.LookPath(t, "gpg", "gnupg")
	home := ""
	for _, e := range r.Env {
		if v, ok := strings.CutPrefix(e, "GNUPGHOME="); ok {
			home = v
		}
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = r.Env
		_ = cmd.Run()
	})
	gpg := func(args ...string) string {
		cmd := exec.Command("gpg", append([]string{"--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		cmd.Env = r.Env
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				t.Fatalf("gpg %v: %v\n%s", args, err, ee.Stderr)
			}
			t.Fatal(err)
		}
		return string(out)
	}
	gpg("--quick-gen-key", uid, "ed25519", "sign", "never")
	var fpr string
	for _, l := range strings.Split(gpg("--with-colons", "--list-secret-keys", uid), "\n") {
		if strings.HasPrefix(l, "fpr:") {
			fpr = strings.Split(l, ":")[9]
			break
		}
	}
	return fpr, gpg("--armor", "--export", fpr)
}

func TestSignaturePolicy(t *testing.T) {
	r := newGitRepo(t)
	keys := t.TempDir()
	trustedSSH, trustedSSHPub := sshdtest.Key(t, keys, "trusted")
	otherSSH, _ := sshdtest.Key(t, keys, "other")
	trustedFpr, trustedPGP := gpgKey(t, r, "Trusted <trusted@example.com>")
	otherFpr, _ := gpgKey(t, r, "Other <other@example.com>")

	sshSign := func(key string) []string {
		return []string{"-c", "gpg.format=ssh", "-c", "user.signingkey=" + key}
	}
	pgpSign := func(fpr string) []string {
		return []string{"-c", "gpg.format=openpgp", "-c", "user.signingkey=" + fpr}
	}
	policy := &SignaturePolicy{OpenPGP: trustedPGP, SSH: trustedSSHPub}
	tests := []struct {
		name    string
		sign    []string // git -c options; nil: unsigned
		policy  *SignaturePolicy
		wantErr error
		signer  string
	}{
		{"unsigned, no policy", nil, nil, nil, ""},
		{"unsigned under policy", nil, policy, ErrUnsigned, ""},
		{"ssh by trusted key", sshSign(trustedSSH), policy, nil, "ssh SHA256:"},
		{"ssh by other key", sshSign(otherSSH), policy, ErrBadSignature, ""},
		{"ssh with only openpgp trusted", sshSign(trustedSSH), &SignaturePolicy{OpenPGP: trustedPGP}, ErrBadSignature, ""},
		{"openpgp by trusted key", pgpSign(trustedFpr), policy, nil, "openpgp " + trustedFpr},
		{"openpgp by other key", pgpSign(otherFpr), policy, ErrBadSignature, ""},
		{"openpgp with only ssh trusted", pgpSign(trustedFpr), &SignaturePolicy{SSH: trustedSSHPub}, ErrBadSignature, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Start from a good signed commit so "last good" exists.
			base := sshSign(trustedSSH)
			if tt.policy != nil && tt.policy.SSH == "" {
				base = pgpSign(trustedFpr)
			}
			good := commitSigned(r, base, map[string]string{"f": tt.name + " base"}, "base")
			s := newSource(t, Options{URL: r.URL(), Signatures: tt.policy})
			if rev, err := s.Fetch(t.Context(), ""); tt.policy != nil && (err != nil || rev.Commit != good) {
				t.Fatalf("trusted base commit: %v", err)
			}
			c := commitSigned(r, tt.sign, map[string]string{"f": tt.name}, "candidate")
			rev, err := s.Fetch(t.Context(), good)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if rev == nil || rev.Commit != c {
				t.Fatalf("revision %+v, want the candidate %s reported", rev, c)
			}
			if err != nil && !Stalled(err) {
				t.Fatalf("signature refusal is not stalled: %v", err)
			}
			if !strings.HasPrefix(rev.Signer, tt.signer) {
				t.Fatalf("signer = %q, want prefix %q", rev.Signer, tt.signer)
			}
		})
	}
}

func commitSigned(r *gitRepo, sign []string, files map[string]string, msg string) string {
	r.T.Helper()
	if sign == nil {
		return r.Commit(files, msg)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(r.Dir, name), []byte(content), 0o644); err != nil {
			r.T.Fatal(err)
		}
		r.Git("add", name)
	}
	r.Git(append(sign, "commit", "-q", "-S", "-m", msg)...)
	return r.Git("rev-parse", "HEAD")
}

func TestParseSSHSigRejects(t *testing.T) {
	blob := func(s string) []byte {
		return []byte(sshSigArmorStart + "\n" + base64.StdEncoding.EncodeToString([]byte(s)) + "\n" + sshSigArmorEnd)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"not armored", []byte("hello")},
		{"bad base64", []byte(sshSigArmorStart + "\n!!!\n" + sshSigArmorEnd)},
		{"no magic", blob("XXXXXX\x00\x00\x00\x01")},
		{"bad version", blob("SSHSIG\x00\x00\x00\x02")},
		{"truncated", blob("SSHSIG\x00\x00\x00\x01\x00\x00\x00\x09ab")},
	}
	for _, tt := range tests {
		if _, err := parseSSHSig(tt.in); err == nil {
			t.Errorf("%s: parsed", tt.name)
		}
	}
}

func FuzzParseSSHSig(f *testing.F) {
	f.Add([]byte(sshSigArmorStart + "\nU1NIU0lHAAAAAQ==\n" + sshSigArmorEnd))
	f.Add([]byte("-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAg\n-----END SSH SIGNATURE-----"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := parseSSHSig(in)
		if err == nil && (s.pub == nil || s.sig == nil) {
			t.Fatal("parsed without key or signature")
		}
	})
}

func TestLoadSignaturePolicy(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ9Eg7T0b9nyCT4NqtR0GbTKuNDVGLnpB1dJDJ1iTR0p ops@example\n"
	good, empty, bad := write("signers", sshKey), write("empty", "\n"), write("bad", "ssh-ed25519 not-base64\n")
	cases := []struct {
		name, openpgp, ssh string
		nilPolicy          bool
		err                string
	}{
		{"none", "", "", true, ""},
		{"ssh keys", "", good, false, ""},
		{"empty files", empty, empty, false, "no commit could ever be accepted"},
		{"bad ssh key", "", bad, false, "bad"},
		{"missing file", filepath.Join(dir, "nope"), "", false, "openpgp keyring"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := LoadSignaturePolicy(c.openpgp, c.ssh)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil || (p == nil) != c.nilPolicy {
				t.Fatalf("policy %+v, err %v", p, err)
			}
		})
	}
}
