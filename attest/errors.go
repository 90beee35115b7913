package attest

import (
	"errors"
	"fmt"
)

// Verification failures. Each is its own sentinel so the hub can record a
// stable reason (see Reason); any of them means "not attested".
var (
	ErrMalformed         = errors.New("malformed quote")
	ErrNotQuote          = errors.New("signed structure is not a TPM-generated quote")
	ErrUnknownKey        = errors.New("quote key is not the device's registered attestation key")
	ErrBadSignature      = errors.New("bad quote signature")
	ErrShortNonce        = errors.New("nonce shorter than 16 bytes")
	ErrWrongNonce        = errors.New("quote is for a nonce not issued to this device")
	ErrStaleNonce        = errors.New("nonce expired")
	ErrReplay            = errors.New("nonce already used (replayed quote)")
	ErrHashBank          = errors.New("quote is not over the sha256 PCR bank")
	ErrPCRSelection      = errors.New("quote PCR selection differs from the policy's")
	ErrPCRDigest         = errors.New("reported PCR values do not match the quoted digest")
	ErrPCRMismatch       = errors.New("PCR value differs from policy")
	ErrCountersBackwards = errors.New("TPM reset/restart counters or clock went backwards")
	ErrClockUnsafe       = errors.New("TPM clock info is not safe")
	ErrPolicy            = errors.New("invalid attestation policy")
)

// Device-side errors.
var (
	// ErrNoTPM means no TPM was found and a software key was not allowed.
	ErrNoTPM = errors.New("no TPM available")
	// ErrKeyMismatch means the key blobs in the state dir do not load in this
	// TPM (it was cleared or replaced); the device must enrol again.
	ErrKeyMismatch = errors.New("stored keys do not belong to this TPM")
)

// PCRMismatchError names the PCR whose quoted value differs from the policy.
type PCRMismatchError struct {
	PCR       int
	Got, Want []byte
}

func (e *PCRMismatchError) Error() string {
	return fmt.Sprintf("PCR %d: got %x, policy wants %x", e.PCR, e.Got, e.Want)
}

// Is makes errors.Is(err, ErrPCRMismatch) true.
func (e *PCRMismatchError) Is(target error) bool { return target == ErrPCRMismatch }

// Machine reasons Reason returns, one per verification failure (each is
// explained in docs/guide/troubleshooting.md).
const (
	ReasonMalformed         = "malformed"
	ReasonNotQuote          = "not-quote"
	ReasonUnknownKey        = "unknown-key"
	ReasonBadSignature      = "bad-signature"
	ReasonShortNonce        = "short-nonce"
	ReasonWrongNonce        = "wrong-nonce"
	ReasonStaleNonce        = "stale-nonce"
	ReasonReplay            = "replay"
	ReasonHashBank          = "hash-bank"
	ReasonPCRSelection      = "pcr-selection"
	ReasonPCRDigest         = "pcr-digest"
	ReasonPCRMismatch       = "pcr-mismatch"
	ReasonCountersBackwards = "counters-backwards"
	ReasonClockUnsafe       = "clock-unsafe"
	ReasonPolicy            = "policy-invalid"
	ReasonError             = "error" // not a verification failure: a store error, a cancelled request
)

var reasons = []struct {
	err    error
	reason string
}{
	{ErrMalformed, ReasonMalformed},
	{ErrNotQuote, ReasonNotQuote},
	{ErrUnknownKey, ReasonUnknownKey},
	{ErrBadSignature, ReasonBadSignature},
	{ErrShortNonce, ReasonShortNonce},
	{ErrWrongNonce, ReasonWrongNonce},
	{ErrStaleNonce, ReasonStaleNonce},
	{ErrReplay, ReasonReplay},
	{ErrHashBank, ReasonHashBank},
	{ErrPCRSelection, ReasonPCRSelection},
	{ErrPCRDigest, ReasonPCRDigest},
	{ErrPCRMismatch, ReasonPCRMismatch},
	{ErrCountersBackwards, ReasonCountersBackwards},
	{ErrClockUnsafe, ReasonClockUnsafe},
	{ErrPolicy, ReasonPolicy},
}

// Reason returns the stable machine reason for a verification error
// ("replay", "pcr-mismatch", ...), "" for nil and "error" for anything else
// (a store failure, a cancelled context).
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ReasonError
}
