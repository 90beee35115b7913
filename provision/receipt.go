package provision

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// ReceiptVersion is the version of the receipt format.
const ReceiptVersion = "shoal.receipt/v1"

// Receipt results.
const (
	ResultApplied = "applied" // the bundle is in place
	ResultRefused = "refused" // it did not verify or was a replay; nothing changed
	ResultFailed  = "failed"  // it verified, but applying it failed part way
)

// maxReceipt bounds a receipt file read from a stick.
const maxReceipt = 256 << 10

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
		return fmt.Errorf("receipt: %s: %w", fmt.Sprintf(format, args...), ErrReceipt)
	}
	switch {
	case r.APIVersion != ReceiptVersion:
		return bad("apiVersion %q, want %q", r.APIVersion, ReceiptVersion)
	case !deviceRE.MatchString(r.DeviceID):
		return bad("device ID %q is malformed", r.DeviceID)
	case r.BundleHash != "" && !hexRE.MatchString(r.BundleHash):
		return bad("bundle hash %q is malformed", r.BundleHash)
	case r.Commit != "" && !commitRE.MatchString(r.Commit):
		return bad("commit %q is malformed", r.Commit)
	case len(r.Errors) > 32:
		return bad("%d errors, at most 32", len(r.Errors))
	}
	switch r.Result {
	case ResultApplied, ResultRefused, ResultFailed:
	default:
		return bad("result %q", r.Result)
	}
	return nil
}

func (o *ApplyOptions) receipt(ctx context.Context, res *Result, err error) *Receipt {
	r := &Receipt{
		APIVersion: ReceiptVersion, DeviceID: res.DeviceID, BundleHash: res.BundleHash,
		Commit: res.Commit, Release: res.Release, First: res.First && err == nil,
		Result: ResultApplied, Images: res.Images, Time: o.Now().UTC(), KeyKind: o.KeyKind,
	}
	if err != nil {
		r.Result, r.Reason, r.Errors = ResultFailed, Reason(err), []string{err.Error()}
		if refused(err) {
			r.Result = ResultRefused
		}
	}
	if o.Quote != nil && res.BundleHash != "" {
		nonce, _ := hex.DecodeString(res.BundleHash)
		q, qerr := o.Quote(ctx, nonce)
		if qerr != nil {
			r.Errors = append(r.Errors, "tpm quote: "+qerr.Error())
		} else {
			r.Quote = q
		}
	}
	return r
}

// refused reports whether err stopped the bundle before anything was written.
func refused(err error) bool {
	for _, e := range []error{ErrInvalid, ErrSignature, ErrHash, ErrReplay, ErrWrongDevice} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
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
	if len(b) > maxReceipt {
		return nil, nil, fmt.Errorf("receipt of %d bytes: %w", len(b), ErrReceipt)
	}
	var r Receipt
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, nil, fmt.Errorf("receipt: %v: %w", err, ErrReceipt)
	}
	if err := r.Validate(); err != nil {
		return nil, nil, err
	}
	if len(r.Signature) == 0 || len(r.PublicKey) == 0 {
		return nil, nil, fmt.Errorf("receipt from %q is not signed: %w", r.DeviceID, ErrReceipt)
	}
	pub, err := x509.ParsePKIXPublicKey(r.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("receipt key: %v: %w", err, ErrReceipt)
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
		return nil, nil, fmt.Errorf("receipt key type %T: %w", pub, ErrReceipt)
	}
	if !ok {
		return nil, nil, fmt.Errorf("receipt from %q: signature does not verify: %w", r.DeviceID, ErrReceipt)
	}
	return &r, pub, nil
}

// WriteReceipt signs r with key (when not nil) and writes it atomically to p.
func WriteReceipt(p string, r *Receipt, key crypto.Signer) error {
	if key != nil {
		if err := SignReceipt(r, key); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(p, append(b, '\n'), 0o644)
}

// ReceiptBatch is the body `shoal receipts import` posts to the hub
// (POST /v1/admin/receipts, operator token): the receipt files as they
// are on the stick, so the hub checks the device signatures itself.
type ReceiptBatch struct {
	APIVersion string            `json:"apiVersion"` // ReceiptVersion
	Receipts   []json.RawMessage `json:"receipts"`
}

// ReceiptOutcome is the hub's answer for one receipt of a batch.
type ReceiptOutcome struct {
	DeviceID   string `json:"deviceID"`
	BundleHash string `json:"bundleHash,omitempty"`
	Accepted   bool   `json:"accepted"`
	Reason     string `json:"reason,omitempty"` // e.g. receipt-invalid, receipt-key-mismatch, device-unknown
	Message    string `json:"message,omitempty"`
}

// ReceiptBatchResult is the hub's answer to a ReceiptBatch.
type ReceiptBatchResult struct {
	APIVersion string           `json:"apiVersion"`
	Outcomes   []ReceiptOutcome `json:"outcomes"`
}

// ReadReceipts reads every *.receipt.json in dir and checks each one's own
// signature; the bad ones are returned as errors naming the file.
func ReadReceipts(dir string) (good []json.RawMessage, recs []*Receipt, errs []error) {
	ms, err := filepath.Glob(filepath.Join(dir, "*.receipt.json"))
	if err != nil {
		return nil, nil, []error{err}
	}
	sort.Strings(ms)
	for _, p := range ms {
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r, _, err := VerifyReceipt(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", filepath.Base(p), err))
			continue
		}
		good = append(good, json.RawMessage(b))
		recs = append(recs, r)
	}
	return good, recs, errs
}

// MaxReceiptBatch is the most receipts one ReceiptBatch may carry.
const MaxReceiptBatch = 1000

// Validate checks the batch's shape; the hub then checks each receipt with
// VerifyReceipt and against the device's enrolled key.
func (b *ReceiptBatch) Validate() error {
	switch {
	case b.APIVersion != ReceiptVersion:
		return fmt.Errorf("receipt batch: apiVersion %q, want %q: %w", b.APIVersion, ReceiptVersion, ErrReceipt)
	case len(b.Receipts) == 0 || len(b.Receipts) > MaxReceiptBatch:
		return fmt.Errorf("receipt batch: %d receipts, want 1 to %d: %w", len(b.Receipts), MaxReceiptBatch, ErrReceipt)
	}
	for i, r := range b.Receipts {
		if len(r) > maxReceipt {
			return fmt.Errorf("receipt batch: receipt %d is %d bytes: %w", i, len(r), ErrReceipt)
		}
	}
	return nil
}
