package attest

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// ErrEKMismatch means the identity's EK forms or certificate disagree.
var ErrEKMismatch = errors.New("endorsement key does not match")

// Credential is the hub's enrolment challenge: a secret only the TPM that
// holds both the EK and the named AK can recover (TPM2_ActivateCredential).
// It proves to the hub that the AK it registers lives in that TPM, so a
// software key cannot enrol as a TPM one.
type Credential struct {
	IDObject  []byte `json:"idObject"`  // TPM2B_ID_OBJECT contents
	EncSecret []byte `json:"encSecret"` // TPM2B_ENCRYPTED_SECRET contents
}

// MakeCredential builds a challenge for the AK (TPMT_PUBLIC) encrypted to the
// EK (TPMT_PUBLIC, Identity.EKArea). The hub keeps secret and compares it,
// with CheckSecret, to what the device's ActivateCredential returns. Pure Go.
func MakeCredential(ekArea, ak []byte) (secret []byte, c *Credential, err error) {
	ek, err := parseEKArea(ekArea)
	if err != nil {
		return nil, nil, err
	}
	if _, err := akKey(ak, false); err != nil {
		return nil, nil, fmt.Errorf("make credential: attestation key: %v: %w", err, ErrUnknownKey)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ak)
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: %w", err)
	}
	name, err := tpm2.ObjectName(akPub)
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: AK name: %w", err)
	}
	kem, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: EK: %w", err)
	}
	secret = make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, nil, err
	}
	id, enc, err := tpm2.CreateCredential(rand.Reader, kem, name.Buffer, secret)
	if err != nil {
		return nil, nil, fmt.Errorf("make credential: %w", err)
	}
	return secret, &Credential{IDObject: id, EncSecret: enc}, nil
}

// CheckSecret compares the device's answer with the challenge's secret in constant time.
func CheckSecret(want, got []byte) bool {
	return len(want) > 0 && subtle.ConstantTimeCompare(want, got) == 1
}

// CheckEK checks that an identity's EK forms agree: EKArea is the key in
// EKPublic, and an EK certificate, when present, certifies that key. Whether
// the certificate chains to a TPM maker's CA is the hub's policy (EKRoots).
func CheckEK(id Identity) error {
	ek, err := parseEKArea(id.EKArea)
	if err != nil {
		return err
	}
	k, err := tpm2.Pub(*ek)
	if err != nil {
		return fmt.Errorf("EK area: %v: %w", err, ErrEKMismatch)
	}
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return fmt.Errorf("EK area: %v: %w", err, ErrEKMismatch)
	}
	if !bytes.Equal(der, id.EKPublic) {
		return fmt.Errorf("EK area and EK public key differ: %w", ErrEKMismatch)
	}
	if len(id.EKCert) == 0 {
		return nil
	}
	cert, err := ParseEKCert(id.EKCert)
	if err != nil {
		// Past what ParseEKCert undoes, we cannot tell which key it certifies.
		return fmt.Errorf("%v: %w", err, ErrEKMismatch)
	}
	certKey, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil || !bytes.Equal(certKey, id.EKPublic) {
		return fmt.Errorf("EK certificate is for another key: %w", ErrEKMismatch)
	}
	return nil
}

// parseEKArea decodes an EK TPMT_PUBLIC and checks it is a restricted
// decryption key that never leaves its TPM.
func parseEKArea(b []byte) (pub *tpm2.TPMTPublic, err error) {
	defer func() {
		if r := recover(); r != nil {
			pub, err = nil, fmt.Errorf("EK area: %v: %w", r, ErrEKMismatch)
		}
	}()
	pub, err = tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, fmt.Errorf("EK area: %v: %w", err, ErrEKMismatch)
	}
	a := pub.ObjectAttributes
	if !(a.Restricted && a.Decrypt && a.FixedTPM && a.FixedParent && !a.SignEncrypt) {
		return nil, fmt.Errorf("EK area is not a restricted TPM-resident decryption key: %w", ErrEKMismatch)
	}
	return pub, nil
}
