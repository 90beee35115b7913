package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/sshdtest"
)

// TestHubFleetSSH runs `shoal hub --fleet ssh://…` against a real sshd on
// loopback with --fleet-ssh-key and --fleet-known-hosts: the hub holds
// quotes to the fleet it fetched (a device the fleet lists enrols, another
// is refused). With a known_hosts naming another host key the hub does
// not start, and says why.
func TestHubFleetSSH(t *testing.T) {
	repo := fleetRepo(t)
	keys := t.TempDir()
	key, pub := sshdtest.Key(t, keys, "hub")
	_, impostorPub := sshdtest.Key(t, keys, "impostor")
	srv := sshdtest.Start(t, pub)

	hubWithFleet(t, srv.URL(repo), "--fleet-ssh-key", key, "--fleet-known-hosts", srv.KnownHosts(t, srv.HostPub))

	code, _, errs := (inProcess{}).run(t, nil, "hub", "--listen", freeAddr(t), "--db", "sqlite://"+filepath.Join(t.TempDir(), "hub.db"),
		"--fleet", srv.URL(repo), "--fleet-ssh-key", key, "--fleet-known-hosts", srv.KnownHosts(t, impostorPub))
	if code != exitInvalid || !strings.Contains(errs, "key mismatch") || !strings.Contains(errs, "git authentication failed") {
		t.Fatalf("hub with a wrong known_hosts: exit %d, %s; want 1 and a host key mismatch", code, errs)
	}
	t.Logf("refused: %s", errs)
}

// TestHubFleetAuthFlags: credentials that cannot work are refused at start,
// naming the flag, before anything is fetched or stored.
func TestHubFleetAuthFlags(t *testing.T) {
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key, kh, tok, empty := file("key", "x"), file("known_hosts", "x"), file("token", "secret-token\n"), file("empty", "\n")
	fleetDir := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"ssh key without known_hosts", []string{"--fleet", "ssh://git@127.0.0.1/fleet", "--fleet-ssh-key", key}, exitUsage, "--fleet-ssh-key and --fleet-known-hosts go together"},
		{"known_hosts without a key", []string{"--fleet", "ssh://git@127.0.0.1/fleet", "--fleet-known-hosts", kh}, exitUsage, "go together"},
		{"credentials without --fleet", []string{"--fleet-token-file", tok}, exitUsage, "go with --fleet"},
		{"signers without --fleet", []string{"--fleet-signers-ssh", key}, exitUsage, "go with --fleet"},
		{"signers file empty", []string{"--fleet", "https://git.example/fleet", "--fleet-signers-ssh", empty}, exitInvalid, "no commit could ever be accepted"},
		{"signers not SSH keys", []string{"--fleet", "https://git.example/fleet", "--fleet-signers-ssh", key}, exitInvalid, "--fleet-signers-*"},
		{"fleet CA not PEM", []string{"--fleet", "https://git.example/fleet", "--fleet-ca", key}, exitInvalid, "no PEM certificate"},
		{"credentials for a directory", []string{"--fleet", fleetDir, "--fleet-token-file", tok}, exitUsage, "is a directory"},
		{"token over plain http", []string{"--fleet", "http://git.example/fleet", "--fleet-token-file", tok}, exitUsage, "a token is only sent over https"},
		{"token file missing", []string{"--fleet", "https://git.example/fleet", "--fleet-token-file", filepath.Join(dir, "nope")}, exitInvalid, "--fleet-token-file"},
		{"token file empty", []string{"--fleet", "https://git.example/fleet", "--fleet-token-file", empty}, exitInvalid, "empty"},
		{"token user without a token", []string{"--fleet", "https://git.example/fleet", "--fleet-token-user", "ci"}, exitUsage, "--fleet-token-user goes with --fleet-token-file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "hub.db")
			args := append([]string{"hub", "--listen", freeAddr(t), "--db", "sqlite://" + db}, tt.args...)
			code, _, errs := (inProcess{}).run(t, nil, args...)
			if code != tt.code || !strings.Contains(errs, tt.want) {
				t.Fatalf("exit %d, %q; want %d with %q", code, errs, tt.code, tt.want)
			}
			if strings.Contains(errs, "secret-token") {
				t.Fatalf("the token leaked into the error: %s", errs)
			}
		})
	}
}
