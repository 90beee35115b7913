package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"

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
	extraData []byte
	clock     tpm2.TPMSClockInfo
	firmware  uint64
	banks     []pcrBank
	pcrDigest []byte
	r, s      *big.Int
}

// pcrBank is one TPMS_PCR_SELECTION.
type pcrBank struct {
	hash   tpm2.TPMAlgID
	bitmap []byte
}

// tpmSTAttestQuote is TPM_ST_ATTEST_QUOTE.
const tpmSTAttestQuote = 0x8018

// parseQuote decodes q's TPMS_ATTEST and signature. It is written out by hand
// rather than with go-tpm's reflection decoder, which took half the hub's
// verification time; it reads hostile input, so it refuses trailing bytes,
// and FuzzVerify exercises it. The magic and type are checked first so that a
// signed structure of another kind gets ErrNotQuote rather than ErrMalformed.
func parseQuote(q *Quote, software bool) (*parsedQuote, error) {
	if q == nil {
		return nil, fmt.Errorf("no quote: %w", ErrMalformed)
	}
	in := cryptobyte.String(q.Attest)
	var magic uint32
	var typ uint16
	if !in.ReadUint32(&magic) || !in.ReadUint16(&typ) {
		return nil, fmt.Errorf("attest is %d bytes: %w", len(q.Attest), ErrMalformed)
	}
	if magic != uint32(tpm2.TPMGeneratedValue) {
		return nil, fmt.Errorf("magic %#x: %w", magic, ErrNotQuote)
	}
	if typ != tpmSTAttestQuote {
		return nil, fmt.Errorf("attestation type %#x: %w", typ, ErrNotQuote)
	}
	p := &parsedQuote{}
	var signer, extra, digest cryptobyte.String
	var safe uint8
	var nBanks uint32
	if !in.ReadUint16LengthPrefixed(&signer) ||
		!in.ReadUint16LengthPrefixed(&extra) ||
		!in.ReadUint64(&p.clock.Clock) ||
		!in.ReadUint32(&p.clock.ResetCount) ||
		!in.ReadUint32(&p.clock.RestartCount) ||
		!in.ReadUint8(&safe) ||
		!in.ReadUint64(&p.firmware) ||
		!in.ReadUint32(&nBanks) {
		return nil, fmt.Errorf("attest header truncated: %w", ErrMalformed)
	}
	if safe > 1 {
		return nil, fmt.Errorf("clock safe flag %d: %w", safe, ErrMalformed)
	}
	p.clock.Safe = tpm2.TPMIYesNo(safe == 1)
	p.extraData = extra
	if nBanks > 16 {
		return nil, fmt.Errorf("%d PCR banks: %w", nBanks, ErrMalformed)
	}
	for range nBanks {
		var hash uint16
		var bitmap cryptobyte.String
		if !in.ReadUint16(&hash) || !in.ReadUint8LengthPrefixed(&bitmap) {
			return nil, fmt.Errorf("PCR selection truncated: %w", ErrMalformed)
		}
		p.banks = append(p.banks, pcrBank{hash: tpm2.TPMAlgID(hash), bitmap: bitmap})
	}
	if !in.ReadUint16LengthPrefixed(&digest) {
		return nil, fmt.Errorf("PCR digest truncated: %w", ErrMalformed)
	}
	p.pcrDigest = digest
	if !in.Empty() {
		return nil, fmt.Errorf("attest has %d trailing bytes: %w", len(in), ErrMalformed)
	}

	if software {
		var sig struct{ R, S *big.Int }
		rest, err := asn1.Unmarshal(q.Signature, &sig)
		if err != nil || len(rest) > 0 || sig.R == nil || sig.S == nil {
			return nil, fmt.Errorf("decode ASN.1 signature: %w", ErrMalformed)
		}
		p.r, p.s = sig.R, sig.S
		return p, nil
	}
	sig := cryptobyte.String(q.Signature)
	var alg, hash uint16
	var r, s cryptobyte.String
	if !sig.ReadUint16(&alg) {
		return nil, fmt.Errorf("signature truncated: %w", ErrMalformed)
	}
	if alg != uint16(tpm2.TPMAlgECDSA) {
		return nil, fmt.Errorf("signature algorithm %#x, want ECDSA: %w", alg, ErrBadSignature)
	}
	if !sig.ReadUint16(&hash) || !sig.ReadUint16LengthPrefixed(&r) || !sig.ReadUint16LengthPrefixed(&s) || !sig.Empty() {
		return nil, fmt.Errorf("ECDSA signature truncated or padded: %w", ErrMalformed)
	}
	if hash != uint16(tpm2.TPMAlgSHA256) {
		return nil, fmt.Errorf("signature hash %#x, want sha256: %w", hash, ErrBadSignature)
	}
	p.r = new(big.Int).SetBytes(r)
	p.s = new(big.Int).SetBytes(s)
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
