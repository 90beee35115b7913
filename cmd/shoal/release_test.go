package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

func TestReleaseSign(t *testing.T) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tests := []struct {
		name string
		key  any
	}{{"ed25519", edKey}, {"ecdsa-p256", ecKey}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			der, err := x509.MarshalPKCS8PrivateKey(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			keyPath := filepath.Join(dir, "key.pem")
			os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
			relPath := filepath.Join(dir, "os-2.yaml")
			src := "# a release\nversion: 2.0.0\nurl: https://example/os.img\nsize: 10\nsha256: " + strings.Repeat("e", 64) + "\nsignature: unsigned\n"
			os.WriteFile(relPath, []byte(src), 0o644)

			code, out, errs := shoal(t, "release", "sign", "--key", keyPath, relPath)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			if !strings.Contains(out, "signed") {
				t.Errorf("stdout: %s", out)
			}
			data, _ := os.ReadFile(relPath)
			if !strings.HasPrefix(string(data), "# a release\n") {
				t.Errorf("comment lost:\n%s", data)
			}
			f, err := spec.Load(fstest.MapFS{"releases/os-2.yaml": {Data: data}})
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := x509.MarshalPKIXPublicKey(tc.key.(crypto.Signer).Public())
			roots, err := updater.ParseTrustRoots(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
			if err != nil {
				t.Fatal(err)
			}
			if err := updater.VerifyRelease(f.Release("os-2"), roots); err != nil {
				t.Fatalf("signature does not verify: %v", err)
			}
		})
	}
	if code, _, _ := shoal(t, "release", "sign", "x.yaml"); code != 2 {
		t.Errorf("missing --key: exit %d, want 2", code)
	}
}

// TestReleaseDelta: shoal release delta writes a store and an index that
// Debian's casync reads, and a delta block that the signature covers;
// --from says what a device on the previous release fetches.
func TestReleaseDelta(t *testing.T) {
	casync := testenv.LookPath(t, "casync", "casync")
	dir := t.TempDir()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyPath := filepath.Join(dir, "key.pem")
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	old := make([]byte, 3<<20)
	rand.Read(old)
	img := append(append([]byte(nil), old[:1<<20]...), make([]byte, 100<<10)...)
	img = append(img, old[1<<20:]...)
	sum := sha256.Sum256(img)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	oldPath, imgPath := write("os-1.img", old), write("os-2.img", img)
	store := filepath.Join(dir, "store")
	rel1 := write("os-1.yaml", []byte(fmt.Sprintf("version: 1.0.0\nurl: os-1.img\nsize: %d\nsha256: %x\nsignature: unsigned\n", len(old), sha256.Sum256(old))))
	if code, _, errs := shoal(t, "release", "delta", "--image", oldPath, "--store", store, rel1); code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	src := fmt.Sprintf("# release 2\nversion: 2.0.0\nurl: os-2.img\nsize: %d\nsha256: %x\nsignature: unsigned\ndelta:\n  index: stale.caibx\n  sha256: \"%s\"\n  store: stale/\n", len(img), sum, strings.Repeat("0", 64))
	rel2 := write("os-2.yaml", []byte(src))
	code, out, errs := shoal(t, "release", "delta", "--image", imgPath, "--store", store, "--store-url", "https://updates.example/store/",
		"--from", filepath.Join(dir, "os-1.caibx"), "--key", keyPath, rel2)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"chunks", "a device running", "signed it (version 2.0.0)"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	data, _ := os.ReadFile(rel2)
	if !strings.HasPrefix(string(data), "# release 2\n") || strings.Contains(string(data), "stale") {
		t.Fatalf("release file:\n%s", data)
	}
	f, err := spec.Load(fstest.MapFS{"releases/os-2.yaml": {Data: data}})
	if err != nil {
		t.Fatal(err)
	}
	rel := f.Release("os-2")
	idx, _ := os.ReadFile(filepath.Join(dir, "os-2.caibx"))
	if d := rel.Delta; d == nil || d.Store != "https://updates.example/store/" || d.Index != filepath.Join(dir, "os-2.caibx") || d.SHA256 != fmt.Sprintf("%x", sha256.Sum256(idx)) {
		t.Fatalf("delta %+v", rel.Delta)
	}
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	roots, _ := updater.ParseTrustRoots(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	if err := updater.VerifyRelease(rel, roots); err != nil {
		t.Fatalf("signature: %v", err)
	}
	// casync rebuilds the image from what shoal wrote.
	outImg := filepath.Join(dir, "extracted.img")
	if b, err := exec.Command(casync, "extract", "--store="+store, filepath.Join(dir, "os-2.caibx"), outImg).CombinedOutput(); err != nil {
		t.Fatalf("casync extract: %v\n%s", err, b)
	}
	if got, _ := os.ReadFile(outImg); !bytes.Equal(got, img) {
		t.Fatal("casync extracted another image")
	}
	// A release whose sha256 is not the image's is refused.
	bad := write("os-3.yaml", []byte(fmt.Sprintf("version: 3.0.0\nurl: x\nsize: %d\nsha256: %s\nsignature: unsigned\n", len(img), strings.Repeat("a", 64))))
	if code, _, errs := shoal(t, "release", "delta", "--image", imgPath, "--store", store, bad); code != 1 || !strings.Contains(errs, "the release says") {
		t.Fatalf("mismatched image: exit %d: %s", code, errs)
	}
	if code, _, _ := shoal(t, "release", "delta", bad); code != 2 {
		t.Fatalf("no --image: exit %d", code)
	}
}
