package hub

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

// recordKey keeps the public key a device enrolled or renewed with, which
// its receipts from offline bundles must be signed by. A failure is logged,
// not returned: the device is enrolled either way, and its receipts are
// refused as receipt-key-unknown until a renewal records the key.
func (h *Hub) recordKey(ctx context.Context, id string, pub crypto.PublicKey) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err == nil {
		err = h.st.SetDeviceKey(ctx, id, der)
	}
	if err != nil {
		h.log.Error("device key not recorded; its receipts will be refused until it renews", "device", id, "err", err)
	}
}

// handleReceipts ingests a batch of receipts devices left on a stick after
// applying offline bundles (POST /v1/admin/receipts, operator token). Each
// receipt must verify with the key it carries, and that key must be the one
// its device enrolled with; each gets an outcome, and only accepted ones
// are written.
func (h *Hub) handleReceipts(w http.ResponseWriter, r *http.Request) {
	var batch api.ReceiptBatch
	if !decode(w, r, api.MaxReceiptBatchBytes, &batch) {
		return
	}
	res := api.ReceiptBatchResult{APIVersion: api.ReceiptVersion, Outcomes: make([]api.ReceiptOutcome, 0, len(batch.Receipts))}
	accepted := 0
	for _, raw := range batch.Receipts {
		o, err := h.ingestReceipt(r.Context(), raw)
		if err != nil {
			h.internal(w, r, err)
			return
		}
		if o.Accepted && !o.Duplicate {
			accepted++
		}
		res.Outcomes = append(res.Outcomes, o)
	}
	h.log.Info("receipts imported", "receipts", len(batch.Receipts), "new", accepted)
	writeJSON(w, http.StatusOK, &res)
}

// ingestReceipt checks and stores one receipt. An error is the store's
// failure; a refused receipt is an outcome with a reason.
func (h *Hub) ingestReceipt(ctx context.Context, raw []byte) (api.ReceiptOutcome, error) {
	rc, pub, err := api.VerifyReceipt(raw)
	if err != nil {
		return api.ReceiptOutcome{Reason: api.ReasonReceiptInvalid, Message: err.Error()}, nil
	}
	o := api.ReceiptOutcome{DeviceID: rc.DeviceID, BundleHash: rc.BundleHash, Result: rc.Result}
	refuse := func(reason, format string, args ...any) (api.ReceiptOutcome, error) {
		o.Reason, o.Message = reason, fmt.Sprintf(format, args...)
		return o, nil
	}
	d, err := h.st.Device(ctx, rc.DeviceID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return refuse(api.ReasonDeviceUnknown, "device %q is not enrolled", rc.DeviceID)
	case err != nil:
		return o, err
	case !d.Revoked.IsZero():
		return refuse(api.ReasonDeviceRevoked, "device %q is revoked", rc.DeviceID)
	}
	enrolled, err := h.st.DeviceKey(ctx, rc.DeviceID)
	if errors.Is(err, store.ErrNotFound) {
		return refuse(api.ReasonDeviceUnknown, "device %q is not enrolled", rc.DeviceID)
	}
	if err != nil {
		return o, err
	}
	if enrolled == nil {
		return refuse(api.ReasonReceiptKeyUnknown, "the hub has no enrolled key for device %q (it enrolled before keys were recorded; it is recorded at its next renewal)", rc.DeviceID)
	}
	ek, err := x509.ParsePKIXPublicKey(enrolled)
	if err != nil {
		return o, fmt.Errorf("device %q: stored key: %w", rc.DeviceID, err)
	}
	if k, ok := ek.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(pub) {
		return refuse(api.ReasonReceiptKeyMismatch, "receipt for device %q is not signed by the key it enrolled with", rc.DeviceID)
	}
	digest := sha256.Sum256(rc.SignedBytes())
	dup, err := h.st.PutReceipt(ctx, store.Receipt{
		DeviceID: rc.DeviceID, BundleHash: rc.BundleHash, Digest: hex.EncodeToString(digest[:]),
		Applied: rc.Time, Commit: rc.Commit, Release: rc.Release, Result: rc.Result, Reason: rc.Reason, Errors: rc.Errors,
		Received: h.o.Now(), Body: raw,
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return refuse(api.ReasonDeviceUnknown, "device %q is not enrolled", rc.DeviceID)
	case errors.Is(err, store.ErrRevoked):
		return refuse(api.ReasonDeviceRevoked, "device %q is revoked", rc.DeviceID)
	case err != nil:
		return o, err
	}
	o.Accepted, o.Duplicate = true, dup
	if dup {
		o.Message = "already recorded"
	}
	return o, nil
}

// handleDeviceReceipts lists a device's accepted receipts, latest first
// (GET /v1/admin/devices/{id}/receipts, operator token).
func (h *Hub) handleDeviceReceipts(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := h.st.Device(r.Context(), id); errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("no device %q", id))
		return
	} else if err != nil {
		h.internal(w, r, err)
		return
	}
	rs, err := h.st.Receipts(r.Context(), id, 100)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	out := make([]api.ReceiptRecord, 0, len(rs))
	for _, rc := range rs {
		out = append(out, api.ReceiptRecord{DeviceID: rc.DeviceID, BundleHash: rc.BundleHash, Applied: rc.Applied, Commit: rc.Commit,
			Release: rc.Release, Result: rc.Result, Reason: rc.Reason, Errors: rc.Errors, Received: rc.Received})
	}
	writeJSON(w, http.StatusOK, out)
}
