package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/provision"
)

func runProvision(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "shoal-agent", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newProvisionApplyCmd())
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// TestProvisionApplyCmd applies a bundle from a stick directory with a
// software device key, then refuses the same bundle replayed; both leave a
// receipt that verifies.
func TestProvisionApplyCmd(t *testing.T) {
	git := testenv.LookPath(t, "git", "git")
	fleet, images, stick, state := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	tarData := []byte("image tar bytes")
	s := sha256.Sum256(tarData)
	sum := hex.EncodeToString(s[:])
	os.WriteFile(filepath.Join(images, sum+".tar"), tarData, 0o644)
	for n, d := range map[string]string{
		"fleet.cue":          "spec: network: \"edge\"\n",
		"groups/edge.yaml":   "selector:\n  match_labels:\n    role: edge\nspec:\n  apps:\n    web: {}\n",
		"devices/dev-1.yaml": "labels:\n  role: edge\n",
		"apps/web.yaml":      "image:\n  ref: example/web:1\n  source:\n    url: https://images.example/web.tar\n    sha256: " + sum + "\n",
	} {
		p := filepath.Join(fleet, n)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(d), 0o644)
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"-c", "user.name=op", "-c", "user.email=op@example", "commit", "-q", "-m", "first"}} {
		if out, err := exec.Command(git, append([]string{"-C", fleet}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	key, _ := provision.GenerateKey()
	f, _ := os.Create(filepath.Join(stick, "dev-1.shoal"))
	if _, err := provision.Create(t.Context(), f, provision.CreateOptions{FleetDir: fleet, Devices: []string{"dev-1"}, Key: key, ImageDir: images, TempDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	f.Close()

	args := []string{"provision", "apply", "--state-dir", state, "--device", "dev-1", "--no-docker", "--tpm", filepath.Join(t.TempDir(), "no-tpm"), stick}
	out, err := runProvision(t, args...)
	if err != nil || !strings.Contains(out, "device dev-1: applied commit") || !strings.Contains(out, "first true") {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(state, "images", sum+".tar")); err != nil {
		t.Fatalf("image tar not kept for the reconciler: %v", err)
	}
	rb, err := os.ReadFile(filepath.Join(stick, "dev-1.shoal.dev-1.receipt.json"))
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := api.VerifyReceipt(rb)
	if err != nil || rc.Result != api.ReceiptApplied || rc.KeyKind != "software" {
		t.Fatalf("receipt %+v: %v", rc, err)
	}
	// The stick again: nothing new for this device.
	if out, err = runProvision(t, args...); err != nil || !strings.Contains(out, "no new bundle") {
		t.Fatalf("stick again: %v\n%s", err, out)
	}
	// The same file named directly: refused as a replay, and the receipt of
	// the first application is kept for import.
	args[len(args)-1] = filepath.Join(stick, "dev-1.shoal")
	out, err = runProvision(t, args...)
	if err == nil || !strings.Contains(err.Error(), "already applied") || !strings.Contains(out, "refused (bundle-replayed)") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	rb, _ = os.ReadFile(filepath.Join(stick, "dev-1.shoal.dev-1.receipt.json"))
	if rc, _, err := api.VerifyReceipt(rb); err != nil || rc.Result != api.ReceiptApplied {
		t.Fatalf("receipt after replay %+v: %v", rc, err)
	}
}
