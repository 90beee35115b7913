package attest

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ErrEKUntrusted means an EK certificate is missing or malformed, does not
// chain to a trusted TPM maker's CA, is not marked for EK use, or certifies
// another key than the EK sent.
var ErrEKUntrusted = errors.New("endorsement key not certified by a trusted TPM maker")

var (
	// tcg-kp-EKCertificate, the extended key usage of an EK certificate
	// (TCG EK Credential Profile).
	oidEKCertificate  = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// ParseEKCert decodes an EK certificate as a TPM stores it in NV. Two
// departures from a bare DER certificate are common and undone here: a
// 5-byte header (0x10 0x01 0x00, then the length; TCG PC Client) before the
// certificate, and padding after it, when the NV index is larger than the
// certificate. Anything else Go's x509 parser rejects (a negative serial
// number, a non-DER length, a bad string type) is an error that names it.
func ParseEKCert(b []byte) (*x509.Certificate, error) {
	if len(b) == 0 {
		return nil, errors.New("EK certificate: empty")
	}
	if len(b) > 5 && bytes.Equal(b[:3], []byte{0x10, 0x01, 0x00}) {
		n := int(binary.BigEndian.Uint16(b[3:5]))
		if n > len(b)-5 {
			return nil, fmt.Errorf("EK certificate: NV header says %d bytes, %d follow", n, len(b)-5)
		}
		b = b[5 : 5+n]
	}
	var outer asn1.RawValue
	rest, err := asn1.Unmarshal(b, &outer)
	if err != nil {
		return nil, fmt.Errorf("EK certificate: not a DER certificate: %v", err)
	}
	if outer.Class != asn1.ClassUniversal || outer.Tag != asn1.TagSequence || !outer.IsCompound {
		return nil, errors.New("EK certificate: not a DER certificate: does not start with a SEQUENCE")
	}
	cert, err := x509.ParseCertificate(b[:len(b)-len(rest)])
	if err != nil {
		return nil, fmt.Errorf("EK certificate: %v", err)
	}
	return cert, nil
}

// EKRoots are the CAs of the TPM makers whose EK certificates a hub trusts:
// roots (self-signed) and the intermediates that lead to them.
type EKRoots struct {
	roots, inters *x509.CertPool
	nRoots        int
	nInters       int
}

// NewEKRoots sorts certs into roots (self-signed) and intermediates (the
// rest). At least one root is required.
func NewEKRoots(certs []*x509.Certificate) (*EKRoots, error) {
	r := &EKRoots{roots: x509.NewCertPool(), inters: x509.NewCertPool()}
	for _, c := range certs {
		if selfSigned(c) {
			r.roots.AddCert(c)
			r.nRoots++
		} else {
			r.inters.AddCert(c)
			r.nInters++
		}
	}
	if r.nRoots == 0 {
		return nil, fmt.Errorf("EK roots: none of the %d certificates is self-signed: at least one root CA is needed", len(certs))
	}
	return r, nil
}

// selfSigned reports whether c names itself as issuer and its signature
// verifies with its own key. The CA flag is not asked for here: Verify
// checks it on every certificate of a chain.
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// LoadEKRoots reads the TPM makers' CA certificates at path: a PEM file of
// one or more certificates, or a directory whose files (not hidden, not in
// subdirectories) each hold PEM certificates or one DER certificate. A file
// that holds anything else (a private key, text) is an error naming it.
func LoadEKRoots(path string) (*EKRoots, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("EK roots: %w", err)
	}
	files := []string{path}
	if fi.IsDir() {
		ents, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("EK roots: %w", err)
		}
		files = files[:0]
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") || e.IsDir() {
				continue
			}
			files = append(files, filepath.Join(path, e.Name()))
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("EK roots: directory %s holds no certificate files", path)
		}
	}
	var certs []*x509.Certificate
	for _, f := range files {
		cs, err := readCerts(f)
		if err != nil {
			return nil, fmt.Errorf("EK roots: %s: %w", f, err)
		}
		certs = append(certs, cs...)
	}
	r, err := NewEKRoots(certs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// readCerts returns the certificates of a PEM or DER file.
func readCerts(file string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(b, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, fmt.Errorf("neither PEM nor a DER certificate: %v", err)
		}
		return []*x509.Certificate{c}, nil
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q: only certificates belong here", len(certs)+1, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %v", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

// Counts returns how many roots and intermediates r holds.
func (r *EKRoots) Counts() (roots, intermediates int) { return r.nRoots, r.nInters }

// Verify checks an EK certificate (as the TPM stores it, see ParseEKCert)
// for the EK ekPublic (PKIX DER): it must certify that key, carry the
// extended key usage tcg-kp-EKCertificate, and chain through r's
// intermediates to one of its roots, valid at now. It returns the parsed
// certificate; every error wraps ErrEKUntrusted.
//
// TCG EK certificates often have an empty subject and a critical subject
// alternative name holding only a directoryName (the TPM's maker, model and
// version). Go's x509 does not read directory names and so counts that
// extension as unhandled and critical, which fails every chain; Verify
// accepts it when it is a well-formed SAN with a directoryName. Any other
// unhandled critical extension still fails.
func (r *EKRoots) Verify(der, ekPublic []byte, now time.Time) (*x509.Certificate, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("the TPM sent no EK certificate: %w", ErrEKUntrusted)
	}
	cert, err := ParseEKCert(der)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrEKUntrusted)
	}
	certKey, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil || !bytes.Equal(certKey, ekPublic) {
		return nil, fmt.Errorf("EK certificate (serial %s, issuer %q) certifies another key than the EK sent: %w", cert.SerialNumber, cert.Issuer, ErrEKUntrusted)
	}
	if !slices.ContainsFunc(cert.UnknownExtKeyUsage, oidEKCertificate.Equal) {
		return nil, fmt.Errorf("EK certificate (issuer %q) lacks the extended key usage tcg-kp-EKCertificate (%s): %w", cert.Issuer, oidEKCertificate, ErrEKUntrusted)
	}
	c := *cert
	c.UnhandledCriticalExtensions = slices.DeleteFunc(slices.Clone(cert.UnhandledCriticalExtensions), func(oid asn1.ObjectIdentifier) bool {
		return oid.Equal(oidSubjectAltName) && sanHasDirectoryName(cert)
	})
	if len(c.UnhandledCriticalExtensions) > 0 {
		return nil, fmt.Errorf("EK certificate (issuer %q) has unsupported critical extensions %v: %w", cert.Issuer, c.UnhandledCriticalExtensions, ErrEKUntrusted)
	}
	if _, err := c.Verify(x509.VerifyOptions{
		Roots: r.roots, Intermediates: r.inters, CurrentTime: now,
		// The EK's own usage is checked above; Go knows no TCG usages.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("EK certificate (issuer %q) does not chain to a trusted TPM maker CA: %v: %w", cert.Issuer, err, ErrEKUntrusted)
	}
	return cert, nil
}

// sanHasDirectoryName reports whether cert's subject alternative name
// extension is well formed and holds a directoryName.
func sanHasDirectoryName(cert *x509.Certificate) bool {
	for _, e := range cert.Extensions {
		if !e.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(e.Value, &names); err != nil || len(rest) > 0 {
			return false
		}
		for _, n := range names {
			// directoryName [4] EXPLICIT Name (RFC 5280, 4.2.1.6).
			if n.Class != asn1.ClassContextSpecific || n.Tag != 4 || !n.IsCompound {
				continue
			}
			var dn pkix.RDNSequence
			if rest, err := asn1.Unmarshal(n.Bytes, &dn); err == nil && len(rest) == 0 {
				return true
			}
		}
	}
	return false
}
