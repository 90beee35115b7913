package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// Quote is a device's answer to a hub nonce: the TPMS_ATTEST the attestation
// key signed, the signature, the AK public key and the sha256-bank values of
// the quoted PCRs. Its fields are those of api.AttestRequest (Quote, Signature,
// AKPublic, PCRs), which carries it on the wire with the API version.
//
// For a TPM key, AK is a TPMT_PUBLIC and Signature a TPMT_SIGNATURE; for a
// software key, AK is a PKIX DER public key and Signature ASN.1 ECDSA.
type Quote struct {
	Attest    []byte         `json:"quote"`
	Signature []byte         `json:"signature"`
	AK        []byte         `json:"akPublic"`
	PCRs      map[int][]byte `json:"pcrs"`
}

// parsedQuote is a Quote whose TPM structures decoded.
type parsedQuote struct {
	attest *tpm2.TPMSAttest
	info   *tpm2.TPMSQuoteInfo
	r, s   *big.Int
}

// tpmSTAttestQuote is TPM_ST_ATTEST_QUOTE.
const tpmSTAttestQuote = 0x8018

// parseQuote decodes q's structures. It checks the TPM_GENERATED magic and the
// quote type itself, before the generic decoder, so that a signed structure
// of another kind gets ErrNotQuote rather than ErrMalformed.
func parseQuote(q *Quote, software bool) (p *parsedQuote, err error) {
	if q == nil {
		return nil, fmt.Errorf("no quote: %w", ErrMalformed)
	}
	if len(q.Attest) < 6 {
		return nil, fmt.Errorf("attest is %d bytes: %w", len(q.Attest), ErrMalformed)
	}
	if m := binary.BigEndian.Uint32(q.Attest); m != uint32(tpm2.TPMGeneratedValue) {
		return nil, fmt.Errorf("magic %#x: %w", m, ErrNotQuote)
	}
	if ty := binary.BigEndian.Uint16(q.Attest[4:]); ty != tpmSTAttestQuote {
		return nil, fmt.Errorf("attestation type %#x: %w", ty, ErrNotQuote)
	}
	// The decoder is reflection-driven over hostile input; a panic there must
	// become a refusal, never a crash of the hub.
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("decode: %v: %w", r, ErrMalformed)
		}
	}()
	a, err := tpm2.Unmarshal[tpm2.TPMSAttest](q.Attest)
	if err != nil {
		return nil, fmt.Errorf("decode attest: %v: %w", err, ErrMalformed)
	}
	if n := len(tpm2.Marshal(a)); n != len(q.Attest) {
		return nil, fmt.Errorf("attest has %d trailing bytes: %w", len(q.Attest)-n, ErrMalformed)
	}
	info, err := a.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("quote info: %v: %w", err, ErrNotQuote)
	}
	p = &parsedQuote{attest: a, info: info}
	if software {
		var sig struct{ R, S *big.Int }
		rest, err := asn1.Unmarshal(q.Signature, &sig)
		if err != nil || len(rest) > 0 || sig.R == nil || sig.S == nil {
			return nil, fmt.Errorf("decode ASN.1 signature: %w", ErrMalformed)
		}
		p.r, p.s = sig.R, sig.S
		return p, nil
	}
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
	if err != nil {
		return nil, fmt.Errorf("decode signature: %v: %w", err, ErrMalformed)
	}
	if s.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("signature algorithm %#x, want ECDSA: %w", uint16(s.SigAlg), ErrBadSignature)
	}
	ecc, err := s.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("signature: %v: %w", err, ErrMalformed)
	}
	if ecc.Hash != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("signature hash %#x, want sha256: %w", uint16(ecc.Hash), ErrBadSignature)
	}
	p.r = new(big.Int).SetBytes(ecc.SignatureR.Buffer)
	p.s = new(big.Int).SetBytes(ecc.SignatureS.Buffer)
	return p, nil
}

// akKey decodes a TPMT_PUBLIC attestation key. A TPM AK must be a restricted
// ECC P-256 signing key that never leaves its TPM: only such a key guarantees
// that anything it signed with the TPM_GENERATED magic came from the TPM.
func akKey(b []byte, software bool) (k *ecdsa.PublicKey, err error) {
	if software {
		pk, err := x509.ParsePKIXPublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("decode software key: %w", err)
		}
		k, ok := pk.(*ecdsa.PublicKey)
		if !ok || k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("software key is not ECDSA P-256")
		}
		return k, nil
	}
	defer func() {
		if r := recover(); r != nil {
			k, err = nil, fmt.Errorf("decode key: %v", r)
		}
	}()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, fmt.Errorf("decode key: %w", err)
	}
	if pub.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("key type %#x is not ECC", uint16(pub.Type))
	}
	a := pub.ObjectAttributes
	if !(a.Restricted && a.SignEncrypt && a.FixedTPM && a.FixedParent && a.SensitiveDataOrigin && !a.Decrypt) {
		return nil, fmt.Errorf("key is not a restricted TPM-resident signing key")
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, err
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, fmt.Errorf("curve %#x is not P-256", uint16(parms.CurveID))
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, err
	}
	return p256Key(pt.X.Buffer, pt.Y.Buffer)
}

// p256Key builds a P-256 public key from its coordinates, refusing points off the curve.
func p256Key(x, y []byte) (*ecdsa.PublicKey, error) {
	if len(x) > 32 || len(y) > 32 {
		return nil, fmt.Errorf("P-256 coordinate longer than 32 bytes")
	}
	u := make([]byte, 65)
	u[0] = 4
	copy(u[1+32-len(x):33], x)
	copy(u[33+32-len(y):], y)
	k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), u)
	if err != nil {
		return nil, fmt.Errorf("public point: %w", err)
	}
	return k, nil
}

// verifySig checks the AK's ECDSA signature over the attest bytes.
func verifySig(key *ecdsa.PublicKey, attest []byte, p *parsedQuote) bool {
	d := sha256.Sum256(attest)
	return ecdsa.Verify(key, d[:], p.r, p.s)
}

// sameKey reports whether the quote's AK is the registered one.
func sameKey(quoteAK, registered []byte) bool {
	return len(registered) > 0 && bytes.Equal(quoteAK, registered)
}
