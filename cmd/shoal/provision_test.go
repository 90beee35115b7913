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

	"github.com/shoalfleet/shoal/internal/testenv"
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
