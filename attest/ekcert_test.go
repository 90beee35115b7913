package attest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/shoalfleet/shoal/internal/swtpmtest"
)

// provisionEKCert stores cert at the ECC EK certificate index, as a TPM maker
// does at the factory (here with owner auth, which swtpm permits).
func provisionEKCert(t *testing.T, tpm transport.TPM, cert []byte) {
	t.Helper()
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	pub := tpm2.TPMSNVPublic{
		NVIndex: tpm2.TPMHandle(ekCertNVECC),
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, AuthRead: true, NoDA: true,
			NT: tpm2.TPMNTOrdinary},
		DataSize: uint16(len(cert)),
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: owner, PublicInfo: tpm2.New2B(pub)}).Execute(tpm); err != nil {
		t.Fatalf("define EK cert index: %v", err)
	}
	rp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(ekCertNVECC)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(cert); off += 512 {
		end := min(off+512, len(cert))
		if _, err := (tpm2.NVWrite{
			AuthHandle: owner,
			NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(ekCertNVECC), Name: rp.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: cert[off:end]},
			Offset:     uint16(off),
		}).Execute(tpm); err != nil {
			t.Fatalf("write EK cert: %v", err)
		}
	}
}

// TestEKCertificate: when the TPM holds an EK certificate, the identity
// reports it (read in chunks from NV) beside the EK public key.
func TestEKCertificate(t *testing.T) {
	sw := startSwtpm(t, "")
	tpm := sw.Open(t)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test TPM maker EK"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		// Long enough to need more than one NV read.
		DNSNames: []string{"a-rather-long-name-to-make-the-certificate-bigger-than-one-nv-read.example"},
	}
	for len(tmpl.DNSNames) < 12 {
		tmpl.DNSNames = append(tmpl.DNSNames, tmpl.DNSNames[0])
	}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert) <= 512 {
		t.Fatalf("certificate is %d bytes; the test wants a multi-chunk read", len(cert))
	}
	provisionEKCert(t, tpm, cert)

	a, err := New(context.Background(), Options{StateDir: t.TempDir(), TPM: tpm})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	id := a.Identity()
	if !bytes.Equal(id.EKCert, cert) {
		t.Fatalf("EK cert: got %d bytes, want the %d provisioned", len(id.EKCert), len(cert))
	}
	if _, err := x509.ParsePKIXPublicKey(id.EKPublic); err != nil {
		t.Fatalf("EK public: %v", err)
	}
	// This certificate is for another key than the TPM's EK: the hub must see it.
	if err := CheckEK(id); !errors.Is(err, ErrEKMismatch) {
		t.Fatalf("CheckEK with a certificate for another key = %v, want ErrEKMismatch", err)
	}
}

// TestManufacturedEKCert: a TPM manufactured with swtpm_setup (RSA and ECC
// P-384 EK certificates from a test CA's intermediate) gives the attester
// the RSA EK with its certificate, a consistent pair: the certificate
// certifies the EK the identity sends, chains to that CA's root and no
// other, and the EK answers a credential challenge.
func TestManufacturedEKCert(t *testing.T) {
	ca, otherCA := swtpmtest.NewEKCA(t), swtpmtest.NewEKCA(t)
	dir := t.TempDir()
	want := ca.Manufacture(t, dir)
	otherCA.Manufacture(t, t.TempDir())
	tpm := (&swtpm{swtpmtest.Start(t, dir)}).Open(t)
	a, err := New(t.Context(), Options{StateDir: t.TempDir(), TPM: tpm})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	id := a.Identity()
	if !bytes.Equal(id.EKCert, want) {
		t.Fatalf("EK cert: got %d bytes, want the %d-byte RSA EK certificate swtpm_setup wrote", len(id.EKCert), len(want))
	}
	if err := CheckEK(id); err != nil {
		t.Fatalf("CheckEK: %v", err)
	}
	for _, c := range []struct {
		name  string
		files []string
		want  string // "" verifies
	}{
		{"its maker's root and intermediate", []string{ca.Root(), ca.Intermediate()}, ""},
		{"its maker's root only", []string{ca.Root()}, "does not chain"},
		{"another maker", []string{otherCA.Root(), otherCA.Intermediate()}, "does not chain"},
	} {
		t.Run(c.name, func(t *testing.T) {
			bundle := filepath.Join(t.TempDir(), "roots.pem")
			var b []byte
			for _, f := range c.files {
				p, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				b = append(b, p...)
			}
			if err := os.WriteFile(bundle, b, 0o600); err != nil {
				t.Fatal(err)
			}
			roots, err := LoadEKRoots(bundle)
			if err != nil {
				t.Fatal(err)
			}
			_, err = roots.Verify(id.EKCert, id.EKPublic, time.Now())
			if c.want == "" && err != nil || c.want != "" && (!errors.Is(err, ErrEKUntrusted) || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Verify = %v, want %q", err, c.want)
			}
		})
	}
	secret, cred, err := MakeCredential(id.EKArea, id.AK)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.ActivateCredential(t.Context(), *cred); err != nil || !CheckSecret(secret, got) {
		t.Fatalf("ActivateCredential with the certified RSA EK = %x, %v; want the secret", got, err)
	}
}
