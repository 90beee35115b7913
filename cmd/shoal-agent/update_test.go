package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// runCLI runs shoal-agent as main wires it, with args.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newWiredRootCmd(t.Context())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// TestUpdateCommand drives `shoal-agent update` against file slots and a real
// GRUB env block, all named by the agent config (as the daemon reads it):
// install, status, rollback (cancel) and their refusals.
func TestUpdateCommand(t *testing.T) {
	editenv := testenv.LookPath(t, "grub-editenv", "grub-common")
	dir := t.TempDir()
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	roots := write("keys.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	write("a.img", []byte("factory image"))
	write("b.img", nil)
	img := make([]byte, 256<<10)
	rand.Read(img)
	imgPath := write("os-1.1.0.img", img)
	sum := sha256.Sum256(img)
	rel := spec.Release{Version: "1.1.0", Size: int64(len(img)), SHA256: hex.EncodeToString(sum[:])}
	rel.Signature, _ = updater.SignRelease(&rel, key)
	b, _ := json.Marshal(rel)
	write("os-1.1.0.img.release.json", b)
	bad := rel
	bad.Version = "1.2.0" // signature no longer matches
	b, _ = json.Marshal(bad)
	badRel := write("bad.release.json", b)

	write("booted", []byte("a\n"))
	cfg := write("agent.yaml", []byte(fmt.Sprintf(`device_id: d1
state_dir: %s
repo: {url: "file:///nonexistent"}
update:
  slot_a: %s
  slot_b: %s
  bootloader: grub
  grub_env: %s
  trust_roots: %s
  running_version: 1.0.0
  booted_slot_file: %s
`, filepath.Join(dir, "state"), filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img"), filepath.Join(dir, "grubenv"), roots, filepath.Join(dir, "booted"))))
	run := func(args ...string) (string, error) {
		return runCLI(t, append([]string{"--config", cfg, "update"}, args...)...)
	}
	tests := []struct {
		name    string
		args    []string
		wantOut string
		wantErr string
	}{
		{"status before", []string{"status"}, "phase:       idle", ""},
		{"bad signature refused", []string{"install", "--release", badRel, "--no-reboot", imgPath}, "reason:      signature-invalid", "signature"},
		{"install", []string{"install", "--no-reboot", imgPath}, "phase:       rebooting", ""},
		{"status json", []string{"status", "--json"}, `"phase": "rebooting"`, ""},
		{"commit refused before the trial boot", []string{"commit"}, "", "no update in a state"},
		{"rollback cancels the pending trial", []string{"rollback", "--no-reboot"}, "phase:       idle", ""},
		{"url needs --release", []string{"install", "http://127.0.0.1:1/os.img"}, "", "needs --release"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(tc.args...)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q; output:\n%s", err, tc.wantErr, out)
			}
			if !strings.Contains(out, tc.wantOut) {
				t.Fatalf("output lacks %q:\n%s", tc.wantOut, out)
			}
			if tc.name == "install" {
				// The update state is where the daemon keeps it.
				if _, err := os.Stat(filepath.Join(dir, "state", "update", "update.json")); err != nil {
					t.Fatalf("update state not in the config's state_dir/update: %v", err)
				}
				got, err := exec.CommandContext(context.Background(), editenv, filepath.Join(dir, "grubenv"), "list").Output()
				if err != nil || !strings.Contains(string(got), "shoal_slot=b\n") || !strings.Contains(string(got), "upgrade_available=1\n") {
					t.Fatalf("grub-editenv list after install: %v\n%s", err, got)
				}
				slot, _ := os.ReadFile(filepath.Join(dir, "b.img"))
				if !bytes.Equal(slot, img) {
					t.Fatal("slot b does not hold the image")
				}
			}
		})
	}
}

// A device with no A/B updates configured says so: status exits 0, the
// commands that would change something fail saying why, and no default path
// (/etc/fw_env.config) is read.
func TestUpdateNotConfigured(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte("device_id: d1\nstate_dir: "+filepath.Join(dir, "state")+"\nrepo: {url: \"file:///nonexistent\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "--config", cfg, "update", "status")
	if err != nil || !strings.Contains(out, "A/B OS updates are not configured on this device") || !strings.Contains(out, cfg) {
		t.Fatalf("update status: %v\n%s", err, out)
	}
	out, err = runCLI(t, "--config", cfg, "update", "status", "--json")
	var js struct {
		Configured *bool `json:"configured"`
	}
	if err != nil || json.Unmarshal([]byte(out), &js) != nil || js.Configured == nil || *js.Configured {
		t.Fatalf("update status --json: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "--config", cfg, "update", "commit"); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("update commit: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); !os.IsNotExist(err) {
		t.Fatalf("state dir written: %v", err)
	}
}
