package updater

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"testing"
)

func TestConfigOptions(t *testing.T) {
	dir := t.TempDir()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	roots := filepath.Join(dir, "keys.pem")
	writeFile(t, roots, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	fwcfg := filepath.Join(dir, "fw_env.config")
	writeFile(t, fwcfg, []byte(filepath.Join(dir, "env")+" 0x0 0x2000\n"+filepath.Join(dir, "env")+" 0x2000 0x2000\n"))
	tests := []struct {
		name    string
		c       Config
		wantErr bool
		uboot   bool
	}{
		{"uboot", Config{SlotA: "/a", SlotB: "/b", Bootloader: "uboot", FwEnvConfig: fwcfg, TrustRoots: roots, RunningVersion: "1.0.0"}, false, true},
		{"grub", Config{SlotA: "/a", SlotB: "/b", Bootloader: "grub", GRUBEnv: filepath.Join(dir, "grubenv"), TrustRoots: roots}, false, false},
		{"no trust roots", Config{SlotA: "/a", SlotB: "/b", Bootloader: "grub"}, true, false},
		{"unknown bootloader", Config{SlotA: "/a", SlotB: "/b", Bootloader: "lilo", TrustRoots: roots}, true, false},
		{"missing fw_env.config", Config{Bootloader: "uboot", FwEnvConfig: filepath.Join(dir, "nope"), TrustRoots: roots}, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := tc.c.Options(dir)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && (o.UBoot != tc.uboot || len(o.TrustRoots) != 1 || o.Env == nil) {
				t.Fatalf("options %+v", o)
			}
		})
	}
}

func TestOSReleaseVersion(t *testing.T) {
	p := filepath.Join(t.TempDir(), "os-release")
	writeFile(t, p, []byte("NAME=\"Shoal OS\"\nVERSION_ID=\"1.4.2\"\n"))
	if v := osReleaseVersion(p); v != "1.4.2" {
		t.Fatalf("VERSION_ID = %q", v)
	}
}
