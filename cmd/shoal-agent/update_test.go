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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// TestUpdateCommand drives `shoal-agent update` against file slots and a real
// GRUB env block: install, status, rollback (cancel) and their refusals.
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

	common := []string{"--state-dir", filepath.Join(dir, "state"), "--slot-a", filepath.Join(dir, "a.img"), "--slot-b", filepath.Join(dir, "b.img"),
		"--bootloader", "grub", "--grub-env", filepath.Join(dir, "grubenv"), "--trust-roots", roots, "--running-version", "1.0.0", "--booted-slot", "a"}
	run := func(args ...string) (string, error) {
		cmd := newUpdateCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append(args, common...))
		err := cmd.ExecuteContext(context.Background())
		return out.String(), err
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
