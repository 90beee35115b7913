// Package api holds the versioned JSON wire types exchanged between the
// device agent and the hub: status reports, enrolment and certificate
// renewal, attestation (nonce and quote), pokes, and error bodies.
//
// It imports nothing of ours, so both the device binary and the hub may use
// it. Every type that arrives from the other side has a Validate method that
// the receiver calls before trusting any field.
package api

import (
	"errors"
	"fmt"
	"regexp"
)

// Version is the wire version carried in every body's apiVersion field.
const Version = "shoal.api/v1"

// Size limits the hub enforces on request bodies, in bytes.
const (
	MaxStatusBytes = 256 << 10
	MaxEnrolBytes  = 64 << 10
	MaxAttestBytes = 256 << 10
	MaxPokeBytes   = 16 << 10
)

// ErrInvalid is wrapped by every Validate error.
var ErrInvalid = errors.New("invalid")

var idRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)

// ValidDeviceID reports whether id is a well-formed device ID: 1 to 64
// characters of lowercase letters, digits, '.', '_' and '-', starting and
// ending with a letter or digit.
func ValidDeviceID(id string) bool { return idRE.MatchString(id) }

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func checkVersion(v string) error {
	if v != Version {
		return invalid("apiVersion %q: want %q", v, Version)
	}
	return nil
}

// Error is the JSON body of every 4xx and 5xx response from the hub.
type Error struct {
	APIVersion string `json:"apiVersion"`
	Status     int    `json:"status"`  // the HTTP status code
	Reason     string `json:"reason"`  // stable machine reason, e.g. "token-used"
	Message    string `json:"message"` // for a person
}

func (e *Error) Error() string {
	return fmt.Sprintf("hub: %d %s: %s", e.Status, e.Reason, e.Message)
}

// Stable error reasons the hub returns.
const (
	ReasonBadRequest     = "bad-request"
	ReasonTooLarge       = "too-large"
	ReasonUnauthorized   = "unauthorized"
	ReasonForbidden      = "forbidden"
	ReasonNotFound       = "not-found"
	ReasonTokenInvalid   = "token-invalid" // unknown, used, expired or revoked: not told apart on purpose
	ReasonDeviceRevoked  = "device-revoked"
	ReasonNonceInvalid   = "nonce-invalid" // unknown, used or expired nonce
	ReasonQuoteInvalid   = "quote-invalid"
	ReasonConflict       = "conflict"
	ReasonInternal       = "internal"
	ReasonUnavailable    = "unavailable"
	ReasonMethod         = "method-not-allowed"
	ReasonUnsupportedVer = "unsupported-version"
	// ReasonDeviceNotInFleet refuses an enrolment token for a device the
	// fleet repo the hub follows (shoal hub --fleet) does not list.
	ReasonDeviceNotInFleet = "device-not-in-fleet"
)
