package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/provision"
)

// provisionRoot is the root command with the provisioning commands, whether
// or not main registers them yet.
func provisionRoot() *cobra.Command {
	root := newRootCmd()
	have := map[string]bool{}
	for _, c := range root.Commands() {
		have[c.Name()] = true
	}
	for _, c := range []*cobra.Command{newProvisionCmd(), newKeysCmd(), newReceiptsCmd()} {
		if !have[c.Name()] {
			root.AddCommand(c)
		}
	}
	return root
}

func runShoal(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	root := provisionRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	if err := root.ExecuteContext(t.Context()); err != nil {
		if se, ok := err.(silentError); ok {
			return se.code, out.String()
		}
		return exitInvalid, out.String() + err.Error()
	}
	return 0, out.String()
}

// gitFleet makes a fleet checkout whose one app loads an image tar from a
// url (the tar itself waits in images/).
func gitFleet(t *testing.T) (fleet, images string) {
	t.Helper()
	git := testenv.LookPath(t, "git", "git")
	fleet, images = t.TempDir(), t.TempDir()
	tarData := []byte("not really an image, but bytes with a sha256")
	s := sha256.Sum256(tarData)
	sum := hex.EncodeToString(s[:])
	if err := os.WriteFile(filepath.Join(images, sum+".tar"), tarData, 0o644); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"fleet.cue":          "spec: network: \"edge\"\n",
		"groups/edge.yaml":   "selector:\n  match_labels:\n    role: edge\nspec:\n  apps:\n    web: {}\n",
		"devices/dev-1.yaml": "labels:\n  role: edge\n",
		"apps/web.yaml":      "image:\n  ref: example/web:1\n  source:\n    url: https://images.example/web.tar\n    sha256: " + sum + "\n",
	}
	for n, d := range files {
		p := filepath.Join(fleet, n)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(d), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"-c", "user.name=op", "-c", "user.email=op@example", "commit", "-q", "-m", "first"}} {
		if out, err := exec.Command(git, append([]string{"-C", fleet}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	return fleet, images
}

func TestProvisionCommands(t *testing.T) {
	fleet, images := gitFleet(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "bundle.key")
	if code, out := runShoal(t, "keys", "create", key); code != 0 || !strings.Contains(out, "written") {
		t.Fatalf("keys create: %d %s", code, out)
	}
	if code, _ := runShoal(t, "keys", "create", key); code == 0 {
		t.Fatal("keys create overwrote a key")
	}
	out := filepath.Join(dir, "dev-1.shoal")
	code, o := runShoal(t, "provision", "create", "--fleet", fleet, "--device", "dev-1", "--out", out, "--key", key,
		"--image-dir", images, "--no-docker", "--hub", "https://hub.example", "--token", "tok")
	if code != 0 {
		t.Fatalf("create: %d %s", code, o)
	}
	code, o = runShoal(t, "provision", "inspect", "--key", key+".pub", out)
	if code != 0 || !strings.Contains(o, "verify: ok") || !strings.Contains(o, "example/web:1") || !strings.Contains(o, "devices  dev-1") {
		t.Fatalf("inspect: %d\n%s", code, o)
	}
	other := filepath.Join(dir, "other.key")
	runShoal(t, "keys", "create", other)
	if code, o = runShoal(t, "provision", "inspect", "--key", other+".pub", out); code != exitInvalid || !strings.Contains(o, "bundle-signature-untrusted") {
		t.Fatalf("inspect with another key: %d\n%s", code, o)
	}
	b, _ := os.ReadFile(out)
	b[len(b)-2000] ^= 1
	bad := filepath.Join(dir, "bad.shoal")
	os.WriteFile(bad, b, 0o644)
	if code, o = runShoal(t, "provision", "inspect", bad); code != exitInvalid || !strings.Contains(o, "verify: FAILED") {
		t.Fatalf("inspect of a flipped byte: %d\n%s", code, o)
	}
	if code, o = runShoal(t, "provision", "create", "--fleet", fleet, "--out", out, "--key", key); code != exitUsage && !strings.Contains(o, "--device or --group") {
		t.Fatalf("create without device: %d %s", code, o)
	}
}

// TestReceiptsImport sends a stick's receipts to a hub that checks them the
// way the hub must: VerifyReceipt, then the key against the enrolled one.
func TestReceiptsImport(t *testing.T) {
	stick := t.TempDir()
	dk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mk := func(name, dev string, key *ecdsa.PrivateKey) {
		r := &provision.Receipt{APIVersion: provision.ReceiptVersion, DeviceID: dev, BundleHash: strings.Repeat("a", 64),
			Commit: strings.Repeat("b", 40), Result: provision.ResultApplied, Time: time.Now().UTC()}
		if err := provision.WriteReceipt(filepath.Join(stick, name), r, key); err != nil {
			t.Fatal(err)
		}
	}
	mk("x.dev-1.receipt.json", "dev-1", dk)
	mk("x.dev-2.receipt.json", "dev-2", stranger) // signed, but not by dev-2's enrolled key
	os.WriteFile(filepath.Join(stick, "y.dev-1.receipt.json"), []byte(`{"apiVersion":"shoal.receipt/v1","deviceID":"dev-1","result":"applied"}`), 0o644)

	enrolled := map[string]*ecdsa.PublicKey{"dev-1": &dk.PublicKey, "dev-2": &dk.PublicKey}
	var got []string
	hub := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/admin/receipts" || r.Header.Get("Authorization") != "Bearer op-token" {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		var batch provision.ReceiptBatch
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil || batch.Validate() != nil {
			http.Error(w, "bad batch", http.StatusBadRequest)
			return
		}
		res := provision.ReceiptBatchResult{APIVersion: provision.ReceiptVersion}
		for _, raw := range batch.Receipts {
			rc, pub, err := provision.VerifyReceipt(raw)
			switch {
			case err != nil:
				res.Outcomes = append(res.Outcomes, provision.ReceiptOutcome{Reason: "receipt-invalid", Message: err.Error()})
			case !enrolled[rc.DeviceID].Equal(pub):
				res.Outcomes = append(res.Outcomes, provision.ReceiptOutcome{DeviceID: rc.DeviceID, BundleHash: rc.BundleHash, Reason: "receipt-key-mismatch", Message: "not signed by the device's enrolled key"})
			default:
				got = append(got, rc.DeviceID)
				res.Outcomes = append(res.Outcomes, provision.ReceiptOutcome{DeviceID: rc.DeviceID, BundleHash: rc.BundleHash, Accepted: true})
			}
		}
		json.NewEncoder(w).Encode(res)
	}))
	defer hub.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hub.Certificate().Raw}), 0o644)
	tok := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tok, []byte("op-token\n"), 0o600)

	code, out := runShoal(t, "receipts", "import", "--hub", hub.URL, "--ca", ca, "--token-file", tok, stick)
	if code != exitInvalid {
		t.Fatalf("exit %d, want 1 (two bad receipts)\n%s", code, out)
	}
	if len(got) != 1 || got[0] != "dev-1" {
		t.Fatalf("hub recorded %v\n%s", got, out)
	}
	for _, want := range []string{"accepted dev-1", "refused  dev-2", "receipt-key-mismatch", "y.dev-1.receipt.json", "not signed"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
