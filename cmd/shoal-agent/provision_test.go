package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/swtpmtest"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/provision"
)

// provisionConfig writes an agent config for a device with no TPM and no
// Docker Engine (unless extra has a trust: section), trusting the bundle
// keys in keysPEM (none when empty).
func provisionConfig(t *testing.T, dir, keysPEM, extra string) (cfg, state string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	state = filepath.Join(dir, "state")
	keys := ""
	if keysPEM != "" {
		p := filepath.Join(dir, "bundle-keys.pem")
		if err := os.WriteFile(p, []byte(keysPEM), 0o644); err != nil {
			t.Fatal(err)
		}
		keys = "  bundle_keys: " + p + "\n"
	}
	cfg = filepath.Join(dir, "agent.yaml")
	if !strings.Contains(extra, "trust:") {
		extra += "trust:\n  tpm: none\n"
	}
	y := "device_id: dev-1\nstate_dir: " + state + "\nrepo: {url: \"file:///nonexistent\"}\ncontainers: {enabled: false}\n" +
		"provision:\n" + keys + "  interval: 5s\n" + extra
	if err := os.WriteFile(cfg, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, state
}

// provisionStick makes a stick directory holding a bundle for dev-1 (one
// image tar, sha256 sum), signed by a new bundle key whose public PEM it returns.
func provisionStick(t *testing.T) (stick, sum, pubPEM string) {
	t.Helper()
	git := testenv.LookPath(t, "git", "git")
	fleet, images := t.TempDir(), t.TempDir()
	stick = t.TempDir()
	tarData := []byte("image tar bytes")
	s := sha256.Sum256(tarData)
	sum = hex.EncodeToString(s[:])
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
	pub, _ := provision.MarshalPublicKey(key.Public().(ed25519.PublicKey))
	return stick, sum, string(pub)
}

// TestProvisionApplyCmd applies a bundle from a stick directory with a
// software device key, all settings from the agent config, then refuses the
// same bundle replayed; both leave a receipt that verifies.
func TestProvisionApplyCmd(t *testing.T) {
	stick, sum, pub := provisionStick(t)
	dir := t.TempDir()

	// A device whose config trusts no bundle key refuses the bundle, says
	// what to do, and writes nothing to its state dir.
	cfgNone, stateNone := provisionConfig(t, filepath.Join(dir, "none"), "", "")
	out, err := runCLI(t, "--config", cfgNone, "provision", "apply", stick)

	if err == nil || !strings.Contains(err.Error(), "provision.bundle_keys") || !strings.Contains(out, "refused (bundle-signature-untrusted)") {
		t.Fatalf("apply with no bundle key: %v\n%s", err, out)
	}
	for _, sub := range []string{"provision", "repo", "images"} {
		if _, err := os.Stat(filepath.Join(stateNone, sub)); !os.IsNotExist(err) {
			t.Fatalf("refused bundle wrote %s: %v", sub, err)
		}
	}
	// Signed by another key than the config trusts: refused the same way.
	other, _ := provision.GenerateKey()
	otherPub, _ := provision.MarshalPublicKey(other.Public().(ed25519.PublicKey))
	cfgOther, stateOther := provisionConfig(t, filepath.Join(dir, "other"), string(otherPub), "")
	out, err = runCLI(t, "--config", cfgOther, "provision", "apply", stick)
	if err == nil || !strings.Contains(err.Error(), "not a trusted bundle key") || !strings.Contains(out, "refused (bundle-signature-untrusted)") {
		t.Fatalf("apply with another bundle key: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(stateOther, "provision")); !os.IsNotExist(err) {
		t.Fatalf("refused bundle wrote provision/: %v", err)
	}
	os.Remove(filepath.Join(stick, "dev-1.shoal.dev-1.receipt.json"))

	cfg, state := provisionConfig(t, filepath.Join(dir, "good"), pub, "")
	args := []string{"--config", cfg, "provision", "apply", stick}
	out, err = runCLI(t, args...)
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
	if out, err = runCLI(t, args...); err != nil || !strings.Contains(out, "no new bundle") {
		t.Fatalf("stick again: %v\n%s", err, out)
	}
	// The same file named directly: refused as a replay, and the receipt of
	// the first application is kept for import.
	args[len(args)-1] = filepath.Join(stick, "dev-1.shoal")
	out, err = runCLI(t, args...)
	if err == nil || !strings.Contains(err.Error(), "already applied") || !strings.Contains(out, "refused (bundle-replayed)") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	rb, _ = os.ReadFile(filepath.Join(stick, "dev-1.shoal.dev-1.receipt.json"))
	if rc, _, err := api.VerifyReceipt(rb); err != nil || rc.Result != api.ReceiptApplied {
		t.Fatalf("receipt after replay %+v: %v", rc, err)
	}
}

// TestProvisionApplyReceiptKeyFollowsPolicy: the receipt key is the one the
// device's config names. A TPM at tcp:HOST:PORT (swtpm), from the config or
// from --tpm, signs the receipt and quotes the bundle hash; where the config
// says allow_software: false and that TPM cannot be reached, nothing is
// applied and no weaker (software-signed, quote-less) receipt is written.
func TestProvisionApplyReceiptKeyFollowsPolicy(t *testing.T) {
	sw := swtpmtest.Start(t, "")
	receipt := func(stick string) *api.Receipt {
		t.Helper()
		rb, err := os.ReadFile(filepath.Join(stick, "dev-1.shoal.dev-1.receipt.json"))
		if err != nil {
			t.Fatal(err)
		}
		rc, _, err := api.VerifyReceipt(rb)
		if err != nil {
			t.Fatal(err)
		}
		return rc
	}
	t.Run("config", func(t *testing.T) {
		stick, _, pub := provisionStick(t)
		cfg, _ := provisionConfig(t, t.TempDir(), pub, "trust:\n  tpm: tcp:"+sw.Addr+"\n  allow_software: false\n")
		if out, err := runCLI(t, "--config", cfg, "provision", "apply", stick); err != nil {
			t.Fatalf("apply: %v\n%s", err, out)
		}
		if rc := receipt(stick); rc.KeyKind != "tpm" || len(rc.Quote) == 0 || rc.Result != api.ReceiptApplied {
			t.Fatalf("receipt kind %q, quote %d bytes, result %s: want a TPM quote", rc.KeyKind, len(rc.Quote), rc.Result)
		}
	})
	t.Run("flag", func(t *testing.T) {
		stick, _, pub := provisionStick(t)
		cfg, _ := provisionConfig(t, t.TempDir(), pub, "trust:\n  tpm: /nonexistent/tpmrm0\n  allow_software: false\n")
		if out, err := runCLI(t, "--config", cfg, "provision", "apply", "--tpm", "tcp:"+sw.Addr, stick); err != nil {
			t.Fatalf("apply --tpm tcp: %v\n%s", err, out)
		}
		if rc := receipt(stick); rc.KeyKind != "tpm" || len(rc.Quote) == 0 {
			t.Fatalf("receipt kind %q, quote %d bytes: want a TPM quote", rc.KeyKind, len(rc.Quote))
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		stick, _, pub := provisionStick(t)
		dead := swtpmtest.Start(t, "")
		dead.Stop()
		cfg, state := provisionConfig(t, t.TempDir(), pub, "trust:\n  tpm: tcp:"+dead.Addr+"\n  allow_software: false\n")
		out, err := runCLI(t, "--config", cfg, "provision", "apply", stick)
		if err == nil || !strings.Contains(err.Error(), "device key for receipts") {
			t.Fatalf("apply with the TPM unreachable: %v\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(stick, "dev-1.shoal.dev-1.receipt.json")); !os.IsNotExist(err) {
			t.Fatalf("a receipt was written: %v", err)
		}
		if _, err := os.Stat(filepath.Join(state, "provision")); !os.IsNotExist(err) {
			t.Fatalf("the bundle was applied: %v", err)
		}
	})
}
