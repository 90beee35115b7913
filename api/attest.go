package api

import "time"

// Nonce is issued by the hub for one attestation; it works once and expires.
type Nonce struct {
	APIVersion string    `json:"apiVersion"`
	Nonce      []byte    `json:"nonce"` // base64 in JSON
	Expires    time.Time `json:"expires"`
}

// Validate checks a nonce response.
func (n *Nonce) Validate() error {
	if n == nil {
		return invalid("nonce: empty")
	}
	if err := checkVersion(n.APIVersion); err != nil {
		return err
	}
	if len(n.Nonce) < 16 || len(n.Nonce) > 64 {
		return invalid("nonce: %d bytes, want 16..64", len(n.Nonce))
	}
	return nil
}

// AttestRequest carries a TPM quote over the requested PCRs, made with the
// hub's nonce as qualifying data.
type AttestRequest struct {
	APIVersion string `json:"apiVersion"`
	Nonce      []byte `json:"nonce"`
	// AKPublic is the attestation key's public area (TPM2B_PUBLIC contents) or,
	// for a software key, a PKIX DER public key.
	AKPublic  []byte `json:"akPublic"`
	Quote     []byte `json:"quote"`     // TPMS_ATTEST, marshalled
	Signature []byte `json:"signature"` // TPMT_SIGNATURE, marshalled (or ASN.1 ECDSA for software)
	// PCRs are the sha256-bank values the quote covers, index -> digest.
	PCRs map[int][]byte `json:"pcrs"`
	// EventLog is the optional TCG event log.
	EventLog []byte `json:"eventLog,omitempty"`
	// Claims the quote should confirm through the application PCR.
	SpecHash       string `json:"specHash,omitempty"`
	ReleaseVersion string `json:"releaseVersion,omitempty"`
}

// Validate checks an attestation request's shape; the hub's verifier checks the crypto.
func (r *AttestRequest) Validate() error {
	if r == nil {
		return invalid("attest: empty")
	}
	if err := checkVersion(r.APIVersion); err != nil {
		return err
	}
	if len(r.Nonce) < 16 || len(r.Nonce) > 64 {
		return invalid("nonce: %d bytes, want 16..64", len(r.Nonce))
	}
	if len(r.AKPublic) == 0 || len(r.Quote) == 0 || len(r.Signature) == 0 {
		return invalid("akPublic, quote and signature are required")
	}
	if len(r.PCRs) > 24 {
		return invalid("pcrs: %d entries, at most 24", len(r.PCRs))
	}
	for i, d := range r.PCRs {
		if i < 0 || i > 23 {
			return invalid("pcrs: index %d out of 0..23", i)
		}
		if len(d) != 32 {
			return invalid("pcrs[%d]: %d bytes, want 32 (sha256)", i, len(d))
		}
	}
	return nil
}

// AttestResult is the hub's verdict on a quote, stored and returned to the device.
type AttestResult struct {
	APIVersion string   `json:"apiVersion"`
	OK         bool     `json:"ok"`
	Reasons    []string `json:"reasons,omitempty"` // each failed condition, by name
	// Unchecked lists, a sentence each, what the hub's policy left
	// unchecked in a passing verdict (the PCR values of a release the
	// device does not run): such a pass is not a full one.
	Unchecked []string  `json:"unchecked,omitempty"`
	Time      time.Time `json:"time"`
	// CheckedPCRs are the PCRs (besides the application PCR) whose values
	// the hub held to expected ones: the release's, from the fleet repo the
	// hub follows. Empty on a passed verdict means the quote was only
	// proved fresh and signed by the device's key, with its claimed spec
	// and release: the boot PCRs were not checked.
	CheckedPCRs []int `json:"checkedPCRs,omitempty"`
}

// PCRsChecked reports whether a verdict held boot PCR values to expected ones.
func (r *AttestResult) PCRsChecked() bool { return len(r.CheckedPCRs) > 0 }

// Validate checks an attestation result.
func (r *AttestResult) Validate() error {
	if r == nil {
		return invalid("attest result: empty")
	}
	if err := checkVersion(r.APIVersion); err != nil {
		return err
	}
	if !r.OK && len(r.Reasons) == 0 {
		return invalid("attest result: failed with no reason")
	}
	return nil
}
