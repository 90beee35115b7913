package api

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"regexp"
	"time"
)

// ReceiptVersion is the version of the receipt format and of a ReceiptBatch.
const ReceiptVersion = "shoal.receipt/v1"

// Receipt results.
const (
	ReceiptApplied = "applied" // the bundle is in place
	ReceiptRefused = "refused" // it did not verify or was a replay; nothing changed
	ReceiptFailed  = "failed"  // it verified, but applying it failed part way
)

// Size limits for receipts: one receipt, a batch's count, and a batch's body.
const (
	MaxReceiptBytes      = 256 << 10
	MaxReceiptBatch      = 1000
	MaxReceiptBatchBytes = 16 << 20
)

// Reasons the hub gives for a receipt it does not accept.
const (
	ReasonReceiptInvalid     = "receipt-invalid"      // malformed, or its signature does not verify
	ReasonReceiptKeyMismatch = "receipt-key-mismatch" // signed, but not by the device's enrolled key
	ReasonReceiptKeyUnknown  = "receipt-key-unknown"  // the hub has no enrolled key for the device
	ReasonDeviceUnknown      = "device-unknown"
)

// ErrReceipt is wrapped by every receipt error; it wraps ErrInvalid.
var ErrReceipt = fmt.Errorf("receipt: %w", ErrInvalid)

var (
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// Receipt is what a device leaves on the stick after applying a bundle, for
// `shoal receipts import` to carry to the hub. It is signed by the device key
// (TPM or software); the hub checks PublicKey against the key the device
// enrolled with before it trusts anything in it.
type Receipt struct {
	APIVersion string    `json:"apiVersion"`
	DeviceID   string    `json:"deviceID"`
	BundleHash string    `json:"bundleHash,omitempty"` // sha256 of the signed manifest
	Commit     string    `json:"commit,omitempty"`     // applied commit after the bundle
	Release    string    `json:"release,omitempty"`    // release version after the bundle
	First      bool      `json:"first,omitempty"`      // the bundle provisioned the device
	Result     string    `json:"result"`
	Reason     string    `json:"reason,omitempty"` // stable machine reason when not applied
	Errors     []string  `json:"errors,omitempty"`
	Images     []string  `json:"images,omitempty"`
	Time       time.Time `json:"time"` // device clock; may be untrusted on a device with no RTC
	KeyKind    string    `json:"keyKind,omitempty"`
	// Quote is the TPM quote (attest.Quote JSON) whose nonce is the bundle hash.
	Quote     json.RawMessage `json:"quote,omitempty"`
	PublicKey []byte          `json:"publicKey,omitempty"` // PKIX DER of the signing key
	Signature []byte          `json:"signature,omitempty"` // over SignedBytes
}

// SignedBytes is what Signature covers: the receipt's JSON with Signature empty.
func (r *Receipt) SignedBytes() []byte {
	c := *r
	c.Signature = nil
	b, _ := json.Marshal(&c)
	return b
}

// Validate checks the receipt's fields, not its signature.
func (r *Receipt) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrReceipt, fmt.Sprintf(format, args...))
	}
	switch {
	case r == nil:
		return bad("empty")
	case r.APIVersion != ReceiptVersion:
		return bad("apiVersion %q, want %q", r.APIVersion, ReceiptVersion)
	case !ValidDeviceID(r.DeviceID):
		return bad("device ID %q is malformed", r.DeviceID)
	case r.BundleHash != "" && !sha256RE.MatchString(r.BundleHash):
		return bad("bundle hash %q is malformed", r.BundleHash)
	case r.Commit != "" && !commitRE.MatchString(r.Commit):
		return bad("commit %q is malformed", r.Commit)
	case len(r.Release) > 128:
		return bad("release of %d characters, at most 128", len(r.Release))
	case len(r.Reason) > 128:
		return bad("reason of %d characters, at most 128", len(r.Reason))
	case len(r.Errors) > 32:
		return bad("%d errors, at most 32", len(r.Errors))
	case len(r.Images) > 256:
		return bad("%d images, at most 256", len(r.Images))
	}
	for i, e := range r.Errors {
		if len(e) > 4096 {
			return bad("errors[%d] of %d bytes, at most 4096", i, len(e))
		}
	}
	switch r.Result {
	case ReceiptApplied, ReceiptRefused, ReceiptFailed:
	default:
		return bad("result %q: want %q, %q or %q", r.Result, ReceiptApplied, ReceiptRefused, ReceiptFailed)
	}
	return nil
}

// SignReceipt sets r.PublicKey and r.Signature with key: ed25519 signs the
// bytes, ECDSA and RSA (a TPM key) sign their sha256.
func SignReceipt(r *Receipt, key crypto.Signer) error {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return fmt.Errorf("receipt key: %w", err)
	}
	r.PublicKey, r.Signature = der, nil
	msg := r.SignedBytes()
	var sig []byte
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		sig, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
	} else {
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		return fmt.Errorf("sign receipt: %w", err)
	}
	r.Signature = sig
	return nil
}

// VerifyReceipt parses a receipt and checks its fields and that its
// signature verifies with the key it carries. It returns that key: the hub
// must also check it is the device's enrolled key, or a forger could sign
// with a key of their own.
func VerifyReceipt(b []byte) (*Receipt, crypto.PublicKey, error) {
	if len(b) > MaxReceiptBytes {
		return nil, nil, fmt.Errorf("%w: %d bytes, at most %d", ErrReceipt, len(b), MaxReceiptBytes)
	}
	var r Receipt
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrReceipt, err)
	}
	if err := r.Validate(); err != nil {
		return nil, nil, err
	}
	if len(r.Signature) == 0 || len(r.PublicKey) == 0 {
		return nil, nil, fmt.Errorf("%w: from %q is not signed", ErrReceipt, r.DeviceID)
	}
	pub, err := x509.ParsePKIXPublicKey(r.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: key: %v", ErrReceipt, err)
	}
	msg := r.SignedBytes()
	d := sha256.Sum256(msg)
	ok := false
	switch k := pub.(type) {
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, msg, r.Signature)
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, d[:], r.Signature)
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], r.Signature) == nil
	default:
		return nil, nil, fmt.Errorf("%w: key type %T", ErrReceipt, pub)
	}
	if !ok {
		return nil, nil, fmt.Errorf("%w: from %q: signature does not verify", ErrReceipt, r.DeviceID)
	}
	return &r, pub, nil
}

// ReceiptBatch is the body `shoal receipts import` posts to the hub
// (POST /v1/admin/receipts, operator token): the receipt files as they
// are on the stick, so the hub checks the device signatures itself.
type ReceiptBatch struct {
	APIVersion string            `json:"apiVersion"` // ReceiptVersion
	Receipts   []json.RawMessage `json:"receipts"`
}

// Validate checks the batch's shape; the hub then checks each receipt with
// VerifyReceipt and against the device's enrolled key.
func (b *ReceiptBatch) Validate() error {
	switch {
	case b == nil:
		return fmt.Errorf("%w: batch: empty", ErrReceipt)
	case b.APIVersion != ReceiptVersion:
		return fmt.Errorf("%w: batch: apiVersion %q, want %q", ErrReceipt, b.APIVersion, ReceiptVersion)
	case len(b.Receipts) == 0 || len(b.Receipts) > MaxReceiptBatch:
		return fmt.Errorf("%w: batch: %d receipts, want 1 to %d", ErrReceipt, len(b.Receipts), MaxReceiptBatch)
	}
	for i, r := range b.Receipts {
		if len(r) > MaxReceiptBytes {
			return fmt.Errorf("%w: batch: receipt %d is %d bytes, at most %d", ErrReceipt, i, len(r), MaxReceiptBytes)
		}
	}
	return nil
}

// ReceiptOutcome is the hub's answer for one receipt of a batch, in the
// batch's order.
type ReceiptOutcome struct {
	DeviceID   string `json:"deviceID,omitempty"`
	BundleHash string `json:"bundleHash,omitempty"`
	Result     string `json:"result,omitempty"` // the receipt's own result, once it verified
	Accepted   bool   `json:"accepted"`
	// Duplicate: accepted before (same device and bundle); nothing written this time.
	Duplicate bool   `json:"duplicate,omitempty"`
	Reason    string `json:"reason,omitempty"` // ReasonReceipt…, ReasonDeviceUnknown, ReasonDeviceRevoked
	Message   string `json:"message,omitempty"`
}

// ReceiptBatchResult is the hub's answer to a ReceiptBatch.
type ReceiptBatchResult struct {
	APIVersion string           `json:"apiVersion"` // ReceiptVersion
	Outcomes   []ReceiptOutcome `json:"outcomes"`
}

// ReceiptRecord is a receipt the hub accepted, as the operator API returns
// it (GET /v1/admin/devices/{id}/receipts).
type ReceiptRecord struct {
	DeviceID   string    `json:"deviceID"`
	BundleHash string    `json:"bundleHash"`
	Applied    time.Time `json:"applied"` // the receipt's time (device clock)
	Commit     string    `json:"commit,omitempty"`
	Release    string    `json:"release,omitempty"`
	Result     string    `json:"result"`
	Reason     string    `json:"reason,omitempty"`
	Errors     []string  `json:"errors,omitempty"`
	Received   time.Time `json:"received"` // when the hub accepted it
}
