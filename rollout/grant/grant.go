// Package grant is the checking side of rollout grants: what the device
// agent links to decide whether a grant the hub (or whoever carried it)
// handed over lets it converge on a commit. A grant is the hub CA key's
// signature over a small JSON body naming the device, the commit, the spec
// hash and the nonce of the device's request.
//
// The signing side lives in package rollout, with the controller; the
// device binary links only this package.
package grant

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/shoalfleet/shoal/api"
)

// Version is the grant body version this package signs and checks.
const Version = 1

// context separates grant signatures from anything else the CA key signs
// (certificates): a grant can never pass for a certificate, nor the reverse.
const context = "shoal/grant/v1\x00"

// Digest is what the hub signs for a grant body.
func Digest(body []byte) []byte {
	h := sha256.New()
	h.Write([]byte(context))
	h.Write(body)
	return h.Sum(nil)
}

// Errors of Check, by what went wrong.
var (
	// ErrForged: the signature does not verify under the hub CA's key.
	ErrForged = errors.New("grant signature does not verify under the hub CA key")
	// ErrReplayed: a genuine grant, but for another request: another
	// device, commit, spec or nonce.
	ErrReplayed = errors.New("grant is not for this request")
	// ErrMalformed: the body does not parse or is of an unknown version.
	ErrMalformed = errors.New("grant body malformed")
)

// Expect is what a grant must say to be accepted: the request the device made.
type Expect struct {
	Device   string
	Commit   string
	SpecHash string
	Nonce    []byte
}

// Checker checks grants against the hub CA's public key.
type Checker struct {
	key *ecdsa.PublicKey
}

// NewChecker takes the hub CA certificate, PEM encoded (api.Certificate.CA).
func NewChecker(caPEM []byte) (*Checker, error) {
	b, _ := pem.Decode(caPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("grant checker: hub CA is not a PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("grant checker: hub CA: %w", err)
	}
	k, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("grant checker: hub CA key is %T, want ECDSA", c.PublicKey)
	}
	return &Checker{key: k}, nil
}

// Check verifies g and that it answers want. It returns the grant's body;
// the error wraps ErrForged, ErrReplayed or ErrMalformed.
func (c *Checker) Check(g *api.Grant, want Expect) (*api.GrantBody, error) {
	if g == nil || len(g.Body) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformed)
	}
	if !ecdsa.VerifyASN1(c.key, Digest(g.Body), g.Signature) {
		return nil, ErrForged
	}
	var b api.GrantBody
	if err := json.Unmarshal(g.Body, &b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if b.Version != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrMalformed, b.Version, Version)
	}
	switch {
	case b.Device != want.Device:
		return nil, fmt.Errorf("%w: it is for device %q", ErrReplayed, b.Device)
	case b.Commit != want.Commit:
		return nil, fmt.Errorf("%w: it is for commit %.12s", ErrReplayed, b.Commit)
	case b.SpecHash != want.SpecHash:
		return nil, fmt.Errorf("%w: it is for spec %.12s", ErrReplayed, b.SpecHash)
	case string(b.Nonce) != string(want.Nonce):
		return nil, fmt.Errorf("%w: it answers another request (nonce)", ErrReplayed)
	}
	return &b, nil
}

// Machine reasons Reason returns (each is explained in
// docs/guide/troubleshooting.md).
const (
	ReasonForged    = "grant-forged"
	ReasonReplayed  = "grant-replayed"
	ReasonMalformed = "grant-malformed"
)

// Reason is the stable machine reason for a Check error.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrForged):
		return ReasonForged
	case errors.Is(err, ErrReplayed):
		return ReasonReplayed
	}
	return ReasonMalformed
}
