package main

import (
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/internal/sshdtest"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/source"
)

// signedFleet is a fleet repo whose commits are signed with an SSH key
// (git's gpg.format=ssh) when sign is true. It lists dev-f.
type signedFleet struct {
	*testenv.Repo
	trusted string // authorized_keys file of the signing key
	other   string // another key's private file
}

func newSignedFleet(t *testing.T) *signedFleet {
	t.Helper()
	r := testenv.NewRepo(t)
	keys := t.TempDir()
	priv, pub := sshdtest.Key(t, keys, "fleet-signer")
	other, _ := sshdtest.Key(t, keys, "someone-else")
	signers := filepath.Join(keys, "signers")
	if err := os.WriteFile(signers, []byte(pub), 0o600); err != nil {
		t.Fatal(err)
	}
	r.Git("config", "gpg.format", "ssh")
	r.Git("config", "user.signingkey", priv)
	f := &signedFleet{Repo: r, trusted: signers, other: other}
	f.Commit(map[string]string{"fleet.yaml": "spec:\n  attestation:\n    pcrs: [0, 7]\n", "devices/dev-f.yaml": "labels:\n  role: gateway\n"}, "fleet", "-S")
	return f
}

// TestFleetPolicyFollowsSignedCommits builds the hub's fleet policy from a
// Git directory and from its file:// URL: uncommitted files never count, a
// commit signed by no trusted key is refused and the last good fleet kept,
// and the next trusted commit is taken.
func TestFleetPolicyFollowsSignedCommits(t *testing.T) {
	for _, form := range []string{"directory", "URL"} {
		t.Run(form, func(t *testing.T) {
			f := newSignedFleet(t)
			loc := f.Dir
			if form == "URL" {
				loc = f.URL()
			}
			fp, cleanup, err := fleetPolicy(loc, "", fleetAuthFlags{signersSSH: f.trusted}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cleanup()
			// An edit in the work tree, not committed: not the hub's policy.
			if err := os.WriteFile(filepath.Join(f.Dir, "devices", "dev-u.yaml"), []byte("labels: {}\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := fp.Refresh(t.Context()); err != nil {
				t.Fatalf("signed HEAD: %v", err)
			}
			if err := fp.KnownDevice("dev-f"); err != nil {
				t.Errorf("dev-f: %v", err)
			}
			if err := fp.KnownDevice("dev-u"); err == nil || !strings.Contains(err.Error(), "devices/dev-u.yaml") {
				t.Errorf("uncommitted dev-u: %v, want it unknown", err)
			}
			good := fp.Revision()

			f.Git("add", "devices/dev-u.yaml")
			f.Git("commit", "-q", "-m", "dev-u, unsigned")
			if err := fp.Refresh(t.Context()); !errors.Is(err, source.ErrUnsigned) {
				t.Errorf("unsigned commit: %v, want ErrUnsigned", err)
			}
			f.Git("-c", "user.signingkey="+f.other, "commit", "-q", "--allow-empty", "-S", "-m", "signed by someone else")
			if err := fp.Refresh(t.Context()); !errors.Is(err, source.ErrBadSignature) {
				t.Errorf("commit by an untrusted key: %v, want ErrBadSignature", err)
			}
			if fp.Revision() != good || fp.KnownDevice("dev-u") == nil {
				t.Errorf("after refused commits the fleet is at %s, want %s kept", fp.Revision(), good)
			}
			f.Git("commit", "-q", "--allow-empty", "-S", "-m", "signed again")
			if err := fp.Refresh(t.Context()); err != nil {
				t.Fatalf("trusted commit: %v", err)
			}
			if err := fp.KnownDevice("dev-u"); err != nil {
				t.Errorf("dev-u after a trusted commit: %v", err)
			}

			// Without signers the hub takes any commit.
			f.Git("commit", "-q", "--allow-empty", "-m", "unsigned again")
			open, cleanup2, err := fleetPolicy(loc, "", fleetAuthFlags{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cleanup2()
			if err := open.Refresh(t.Context()); err != nil {
				t.Errorf("no signature policy: %v", err)
			}
		})
	}
}

// TestFleetPolicyDirectoryForms: a bare repository serves as well as a
// work tree; a directory that is no Git repository is refused.
func TestFleetPolicyDirectoryForms(t *testing.T) {
	f := newSignedFleet(t)
	bare := filepath.Join(t.TempDir(), "fleet.git")
	testenv.Git(t, "", "clone", "-q", "--bare", f.Dir, bare)
	fp, _, err := fleetPolicy(bare, "", fleetAuthFlags{signersSSH: f.trusted}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fp.Refresh(t.Context()); err != nil || fp.KnownDevice("dev-f") != nil {
		t.Errorf("bare repository: %v", err)
	}
	plain := t.TempDir()
	if err := os.WriteFile(filepath.Join(plain, "fleet.yaml"), []byte("spec: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = fleetPolicy(plain, "", fleetAuthFlags{}, nil)
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "must be a Git repository") {
		t.Errorf("plain directory: %v, want a usage error", err)
	}
	if _, _, err := fleetPolicy(f.Dir, "", fleetAuthFlags{caFile: "x.pem"}, nil); !errors.As(err, &ue) {
		t.Errorf("--fleet-ca with a directory: %v, want a usage error", err)
	}
}

// TestHubFleetTokensAndLock runs `shoal hub --fleet DIR` with no signers:
// the status page says the hub checks no signature, `shoal token create`
// for a device the committed fleet does not list is refused (422
// device-not-in-fleet), and a second hub on the same SQLite file is refused.
func TestHubFleetTokensAndLock(t *testing.T) {
	f := newSignedFleet(t)
	if err := os.WriteFile(filepath.Join(f.Dir, "devices", "dev-u.yaml"), []byte("labels: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := serveHub(t, "--fleet", f.Dir)
	op, err := hub.CreateOperatorToken(t.Context(), h.st, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	ca, _ := h.st.CA(t.Context())
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"SHOAL_OPERATOR_TOKEN=" + op, "SHOAL_HUB=https://" + h.addr, "SHOAL_HUB_CA=" + caFile}
	if code, out, errs := (inProcess{}).run(t, env, "token", "create", "--device", "dev-f"); code != 0 || !strings.Contains(out, "token:") {
		t.Fatalf("token for dev-f: %d %s %s", code, out, errs)
	}
	code, _, errs := (inProcess{}).run(t, env, "token", "create", "--device", "dev-u")
	if code != exitInvalid || !strings.Contains(errs, "422 device-not-in-fleet") || !strings.Contains(errs, "devices/dev-u.yaml") {
		t.Errorf("token for uncommitted dev-u: exit %d, %s", code, errs)
	}

	req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://"+h.addr+"/", nil)
	req.Header.Set("Authorization", "Bearer "+op)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.pool, MinVersion: tls.VersionTLS13}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "does not check the signatures") || !strings.Contains(string(page), "--fleet-signers-ssh") {
		t.Errorf("status page does not say the fleet's signatures are unchecked:\n%.2000s", page)
	}

	code, _, errs = (inProcess{}).run(t, nil, "hub", "--listen", freeAddr(t), "--db", h.db, "--host", "127.0.0.1")
	if code != exitInvalid || !strings.Contains(errs, "database in use by another hub") || !strings.Contains(errs, "PostgreSQL") {
		t.Errorf("second hub on %s: exit %d, %s", h.db, code, errs)
	}
}
