package api

import (
	"crypto/x509"
	"encoding/pem"
	"time"
)

// Key kinds for EnrolRequest.KeyKind.
const (
	KeyTPM      = "tpm"      // the device key lives in a TPM
	KeySoftware = "software" // a software key: weaker, flagged on the status page
)

// EnrolRequest is sent once by a device with a one-time token (over plain
// server-authenticated TLS) to get its first client certificate.
type EnrolRequest struct {
	APIVersion string `json:"apiVersion"`
	Token      string `json:"token"`
	// CSR is a PEM "CERTIFICATE REQUEST" signed by the device key (ECDSA
	// P-256). Its subject is ignored: the token decides the device ID.
	CSR         string         `json:"csr"`
	KeyKind     string         `json:"keyKind"`
	Attestation *AttestRequest `json:"attestation,omitempty"` // when the device has a TPM
	// EK goes with Attestation from a TPM (KeyKind "tpm") to
	// /v1/enrol/challenge: the hub encrypts its challenge to it.
	EK *EndorsementKey `json:"ek,omitempty"`
	// Activation answers that challenge; it replaces Attestation in the
	// second step, at /v1/enrol.
	Activation *Activation `json:"activation,omitempty"`
}

// Validate checks the shape of an enrolment request, including that the CSR
// parses and its signature verifies.
func (r *EnrolRequest) Validate() error {
	if r == nil {
		return invalid("enrol: empty")
	}
	if err := checkVersion(r.APIVersion); err != nil {
		return err
	}
	if r.Token == "" || len(r.Token) > 256 {
		return invalid("token: missing or too long")
	}
	if r.KeyKind != KeyTPM && r.KeyKind != KeySoftware {
		return invalid("keyKind %q: want %q or %q", r.KeyKind, KeyTPM, KeySoftware)
	}
	if _, err := ParseCSR(r.CSR); err != nil {
		return err
	}
	if r.Attestation != nil {
		if err := r.Attestation.Validate(); err != nil {
			return err
		}
	}
	if r.EK != nil {
		if err := r.EK.validate(); err != nil {
			return err
		}
	}
	if r.Activation != nil {
		if r.Attestation != nil {
			return invalid("activation: send it instead of the attestation, which the challenge step verified")
		}
		if r.KeyKind != KeyTPM {
			return invalid("activation: only for keyKind %q", KeyTPM)
		}
		if err := r.Activation.validate(); err != nil {
			return err
		}
	}
	return nil
}

// RenewRequest asks for a fresh client certificate. It is sent over mutual
// TLS with the current (unexpired) certificate; the key may be the same or new.
type RenewRequest struct {
	APIVersion string `json:"apiVersion"`
	CSR        string `json:"csr"`
}

// Validate checks the renewal request and its CSR.
func (r *RenewRequest) Validate() error {
	if r == nil {
		return invalid("renew: empty")
	}
	if err := checkVersion(r.APIVersion); err != nil {
		return err
	}
	_, err := ParseCSR(r.CSR)
	return err
}

// Certificate is the hub's answer to enrolment and renewal.
type Certificate struct {
	APIVersion  string    `json:"apiVersion"`
	DeviceID    string    `json:"deviceID"`
	Certificate string    `json:"certificate"` // PEM, the device's client certificate
	CA          string    `json:"ca"`          // PEM, the hub CA: trust it for the hub's server certificate too
	NotAfter    time.Time `json:"notAfter"`
	RenewAfter  time.Time `json:"renewAfter"` // renew from this time on
}

// Validate checks the certificate response a device receives.
func (c *Certificate) Validate() error {
	if c == nil {
		return invalid("certificate: empty")
	}
	if err := checkVersion(c.APIVersion); err != nil {
		return err
	}
	if !ValidDeviceID(c.DeviceID) {
		return invalid("deviceID %q", c.DeviceID)
	}
	if b, _ := pem.Decode([]byte(c.Certificate)); b == nil || b.Type != "CERTIFICATE" {
		return invalid("certificate: not a PEM certificate")
	}
	if b, _ := pem.Decode([]byte(c.CA)); b == nil || b.Type != "CERTIFICATE" {
		return invalid("ca: not a PEM certificate")
	}
	if c.NotAfter.IsZero() || c.RenewAfter.After(c.NotAfter) {
		return invalid("notAfter/renewAfter")
	}
	return nil
}

// ParseCSR decodes a PEM certificate request and checks its signature and key type.
func ParseCSR(p string) (*x509.CertificateRequest, error) {
	if len(p) > 16<<10 {
		return nil, invalid("csr: too long")
	}
	b, _ := pem.Decode([]byte(p))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, invalid("csr: not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, invalid("csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, invalid("csr: signature: %v", err)
	}
	if csr.PublicKeyAlgorithm != x509.ECDSA {
		return nil, invalid("csr: key algorithm %v: want ECDSA", csr.PublicKeyAlgorithm)
	}
	return csr, nil
}
