package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA is a CA made for a test: a root, or an intermediate under one.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

func newTestCA(t testing.TB, name string, parent *testCA) *testCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name, Organization: []string{"Test TPM Maker"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	signer, signKey := tmpl, crypto.Signer(k)
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &k.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: c, key: k}
}

// tcgSAN is a subject alternative name as TPM makers write it: only a
// directoryName with the TPM's manufacturer, model and version.
func tcgSAN(t testing.TB) []byte {
	t.Helper()
	dn := pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: "id:53544D20"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: "ST33HTPHAHD4"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: "id:00010101"},
	}}
	name, err := asn1.Marshal(dn.ToRDNSequence())
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
	if err != nil {
		t.Fatal(err)
	}
	return san
}

// ekCertShape says how issueEK deviates from a TCG EK certificate.
type ekCertShape struct {
	noEKU       bool
	subject     string // empty: the TCG shape (empty subject, critical SAN)
	sanCritical []byte // the critical SAN; nil: tcgSAN
	extra       []pkix.Extension
	notAfter    time.Time
}

// issueEK certifies pub as an EK, signed by ca.
func issueEK(t testing.TB, ca *testCA, pub crypto.PublicKey, s ekCertShape) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(20 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, BasicConstraintsValid: true,
		ExtraExtensions: s.extra,
	}
	if !s.notAfter.IsZero() {
		tmpl.NotAfter = s.notAfter
	}
	if !s.noEKU {
		tmpl.UnknownExtKeyUsage = []asn1.ObjectIdentifier{oidEKCertificate}
	}
	if s.subject != "" {
		tmpl.Subject = pkix.Name{CommonName: s.subject}
	} else {
		san := s.sanCritical
		if san == nil {
			san = tcgSAN(t)
		}
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidSubjectAltName, Critical: true, Value: san})
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pkixOf(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	b, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEKRootsVerify checks the chain check on generated certificates: the
// TCG shape (empty subject, critical SAN with a directoryName, the EK
// certificate usage) through an intermediate, the encodings TPMs store, and
// each way a certificate must be refused.
func TestEKRootsVerify(t *testing.T) {
	root := newTestCA(t, "Test TPM Maker Root", nil)
	inter := newTestCA(t, "Test TPM Maker EK CA 01", root)
	other := newTestCA(t, "Another Root", nil)
	rsaEK, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	eccEK, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, eccPub := pkixOf(t, &rsaEK.PublicKey), pkixOf(t, &eccEK.PublicKey)
	good := issueEK(t, inter, &rsaEK.PublicKey, ekCertShape{})
	registeredIDOnly, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: []byte{0x67, 0x81, 0x05}}})
	if err != nil {
		t.Fatal(err)
	}
	withHeader := append([]byte{0x10, 0x01, 0x00, byte(len(good) >> 8), byte(len(good))}, good...)

	roots, err := NewEKRoots([]*x509.Certificate{inter.cert, root.cert})
	if err != nil {
		t.Fatal(err)
	}
	if r, i := roots.Counts(); r != 1 || i != 1 {
		t.Fatalf("counts %d roots, %d intermediates; want 1, 1", r, i)
	}
	rootOnly, err := NewEKRoots([]*x509.Certificate{root.cert})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		roots *EKRoots
		cert  []byte
		ek    []byte
		want  string // "" verifies; else a part of the error
	}{
		{"TCG shape through an intermediate (RSA EK)", roots, good, rsaPub, ""},
		{"TCG shape, ECC EK", roots, issueEK(t, inter, &eccEK.PublicKey, ekCertShape{}), eccPub, ""},
		{"signed by the root itself", roots, issueEK(t, root, &rsaEK.PublicKey, ekCertShape{}), rsaPub, ""},
		{"a subject and no SAN", roots, issueEK(t, inter, &rsaEK.PublicKey, ekCertShape{subject: "EK"}), rsaPub, ""},
		{"padded to the NV index size", roots, append(bytes.Clone(good), bytes.Repeat([]byte{0xff}, 300)...), rsaPub, ""},
		{"behind a TCG NV header", roots, withHeader, rsaPub, ""},
		{"no certificate", roots, nil, rsaPub, "sent no EK certificate"},
		{"another CA", roots, issueEK(t, other, &rsaEK.PublicKey, ekCertShape{}), rsaPub, "does not chain to a trusted TPM maker CA"},
		{"intermediate not configured", rootOnly, good, rsaPub, "does not chain"},
		{"certifies another key", roots, good, eccPub, "certifies another key"},
		{"no EK usage", roots, issueEK(t, inter, &rsaEK.PublicKey, ekCertShape{noEKU: true}), rsaPub, "tcg-kp-EKCertificate"},
		{"expired", roots, issueEK(t, inter, &rsaEK.PublicKey, ekCertShape{notAfter: time.Now().Add(-time.Minute)}), rsaPub, "expired"},
		{"critical SAN without a directoryName", roots, issueEK(t, inter, &rsaEK.PublicKey, ekCertShape{sanCritical: registeredIDOnly}), rsaPub, "unsupported critical extensions [2.5.29.17]"},
		{"unknown critical extension", roots, issueEK(t, inter, &rsaEK.PublicKey, ekCertShape{
			extra: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}}}}), rsaPub, "unsupported critical extensions [1.2.3.4]"},
		{"truncated", roots, good[:len(good)-10], rsaPub, "not a DER certificate"},
		{"NV header longer than the data", roots, withHeader[:100], rsaPub, "NV header says"},
		{"not a certificate", roots, []byte("-----BEGIN CERTIFICATE-----"), rsaPub, "not a DER certificate"},
		{"a SEQUENCE that is no certificate", roots, []byte{0x30, 0x03, 0x02, 0x01, 0x01}, rsaPub, "EK certificate: x509:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.roots.Verify(tt.cert, tt.ek, time.Now())
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if !bytes.Equal(pkixOf(t, c.PublicKey), tt.ek) {
					t.Fatal("Verify returned a certificate for another key")
				}
				return
			}
			if !errors.Is(err, ErrEKUntrusted) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Verify = %v, want ErrEKUntrusted with %q", err, tt.want)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func writePEM(t *testing.T, path string, blocks ...*pem.Block) {
	t.Helper()
	var b []byte
	for _, blk := range blocks {
		b = append(b, pem.EncodeToMemory(blk)...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLoadEKRoots reads roots from a PEM bundle and from directories of PEM
// and DER files, and refuses what is not a set of CA certificates, naming
// the file.
func TestLoadEKRoots(t *testing.T) {
	root := newTestCA(t, "Test TPM Maker Root", nil)
	inter := newTestCA(t, "Test TPM Maker EK CA 01", root)
	certBlock := func(c *testCA) *pem.Block { return &pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw} }
	keyDER, err := x509.MarshalPKCS8PrivateKey(root.key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := func(name string, write func(p string)) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		write(p)
		return p
	}
	pemFile := func(blocks ...*pem.Block) func(string) { return func(p string) { writePEM(t, p, blocks...) } }
	raw := func(b []byte) func(string) {
		return func(p string) {
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	bundle := file("bundle.pem", pemFile(certBlock(root), certBlock(inter)))
	mixed := filepath.Dir(file("mixed/root.pem", pemFile(certBlock(root))))
	file("mixed/inter.der", raw(inter.cert.Raw))
	file("mixed/.hidden", raw([]byte("not read")))
	withKey := filepath.Dir(file("withkey/root.pem", pemFile(certBlock(root))))
	keyFile := file("withkey/ca.key", pemFile(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	withText := filepath.Dir(file("withtext/root.pem", pemFile(certBlock(root))))
	readme := file("withtext/README", raw([]byte("TPM maker CAs")))
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	interOnly := file("inter.pem", pemFile(certBlock(inter)))

	tests := []struct {
		name         string
		path         string
		roots, inter int
		want         string // error part; "" loads
	}{
		{"PEM bundle", bundle, 1, 1, ""},
		{"directory of PEM and DER", mixed, 1, 1, ""},
		{"a private key among them", withKey, 0, 0, keyFile + `: PEM block 1 is "PRIVATE KEY"`},
		{"a text file among them", withText, 0, 0, readme + ": neither PEM nor a DER certificate"},
		{"empty directory", empty, 0, 0, "holds no certificate files"},
		{"no root", interOnly, 0, 0, "none of the 1 certificates is self-signed"},
		{"missing", filepath.Join(dir, "nope"), 0, 0, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := LoadEKRoots(tt.path)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("LoadEKRoots = %v, want an error with %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if nr, ni := r.Counts(); nr != tt.roots || ni != tt.inter {
				t.Fatalf("%d roots, %d intermediates; want %d, %d", nr, ni, tt.roots, tt.inter)
			}
		})
	}
}
