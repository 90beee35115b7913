package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

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
