package api

import "time"

// ReasonActivationFailed: the device did not prove that its attestation key
// lives in the TPM whose endorsement key it sent (credential activation).
const ReasonActivationFailed = "activation-failed"

// ReasonEKUntrusted: the hub checks EK certificates against TPM makers' CAs
// and the device's EK had no certificate, or one that does not chain to
// those CAs, is not marked for EK use, or certifies another key.
const ReasonEKUntrusted = "ek-untrusted"

// EndorsementKey is a TPM's endorsement key, sent at enrolment so the hub can
// encrypt a credential challenge to it.
type EndorsementKey struct {
	Area   []byte `json:"area"`           // TPMT_PUBLIC, for MakeCredential
	Public []byte `json:"public"`         // the same key, PKIX DER
	Cert   []byte `json:"cert,omitempty"` // DER, when the TPM maker stored one
}

func (ek *EndorsementKey) validate() error {
	if len(ek.Area) == 0 || len(ek.Area) > 1024 || len(ek.Public) == 0 || len(ek.Public) > 1024 || len(ek.Cert) > 8192 {
		return invalid("ek: area and public are required (at most 1 KiB each; cert at most 8 KiB)")
	}
	return nil
}

// EnrolChallenge is the hub's answer to a TPM enrolment's first step
// (POST /v1/enrol/challenge): a secret encrypted to the device's EK for its
// AK's name (TPM2_MakeCredential). Only that TPM, holding that AK, recovers
// it (TPM2_ActivateCredential); the device sends it back in
// EnrolRequest.Activation before Expires.
type EnrolChallenge struct {
	APIVersion string    `json:"apiVersion"`
	IDObject   []byte    `json:"idObject"`  // TPM2B_ID_OBJECT contents
	EncSecret  []byte    `json:"encSecret"` // TPM2B_ENCRYPTED_SECRET contents
	Expires    time.Time `json:"expires"`
}

// Validate checks a challenge's shape.
func (c *EnrolChallenge) Validate() error {
	if c == nil {
		return invalid("enrol challenge: empty")
	}
	if err := checkVersion(c.APIVersion); err != nil {
		return err
	}
	if len(c.IDObject) == 0 || len(c.IDObject) > 1024 || len(c.EncSecret) == 0 || len(c.EncSecret) > 1024 {
		return invalid("enrol challenge: idObject and encSecret are required (at most 1 KiB each)")
	}
	return nil
}

// Activation is the second step of a TPM enrolment: the secret the TPM
// recovered from the challenge, for the AK the challenge named.
type Activation struct {
	AKPublic []byte `json:"akPublic"` // the AK of the attestation in the first step
	Secret   []byte `json:"secret"`
}

func (a *Activation) validate() error {
	if len(a.AKPublic) == 0 || len(a.AKPublic) > 1024 || len(a.Secret) == 0 || len(a.Secret) > 64 {
		return invalid("activation: akPublic (at most 1 KiB) and secret (at most 64 bytes) are required")
	}
	return nil
}
