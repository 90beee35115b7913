package provision

import (
	"context"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// Receipts are the wire type api.Receipt: provision writes and signs them on
// the device, the hub verifies them with api.VerifyReceipt.

func (o *ApplyOptions) receipt(ctx context.Context, res *Result, err error) *api.Receipt {
	r := &api.Receipt{
		APIVersion: api.ReceiptVersion, DeviceID: res.DeviceID, BundleHash: res.BundleHash,
		Commit: res.Commit, Release: res.Release, First: res.First && err == nil,
		Result: api.ReceiptApplied, Images: res.Images, Time: o.Now().UTC(), KeyKind: o.KeyKind,
	}
	if err != nil {
		r.Result, r.Reason, r.Errors = api.ReceiptFailed, Reason(err), []string{err.Error()}
		if refused(err) {
			r.Result = api.ReceiptRefused
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

// WriteReceipt signs r with key (when not nil) and writes it atomically to p.
func WriteReceipt(p string, r *api.Receipt, key crypto.Signer) error {
	if key != nil {
		if err := api.SignReceipt(r, key); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(p, append(b, '\n'), 0o644)
}

// ReadReceipts reads every *.receipt.json in dir and checks each one's own
// signature; the bad ones are returned as errors naming the file.
func ReadReceipts(dir string) (good []json.RawMessage, recs []*api.Receipt, errs []error) {
	ms, err := filepath.Glob(filepath.Join(dir, "*.receipt.json"))
	if err != nil {
		return nil, nil, []error{err}
	}
	sort.Strings(ms)
	for _, p := range ms {
		b, err := readLimited(p, api.MaxReceiptBytes)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r, _, err := api.VerifyReceipt(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", filepath.Base(p), err))
			continue
		}
		good = append(good, json.RawMessage(b))
		recs = append(recs, r)
	}
	return good, recs, errs
}

// readLimited reads p, refusing a file larger than limit bytes (a stick may
// hold anything).
func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", filepath.Base(p), limit, api.ErrReceipt)
	}
	return b, nil
}
