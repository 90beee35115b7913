package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Receipt is a device's signed account of an offline bundle it applied (or
// refused), as the hub accepted it after checking the device's key.
type Receipt struct {
	DeviceID string
	// BundleHash is the sha256 of the bundle's signed manifest; "" when the
	// bundle did not verify far enough to have one.
	BundleHash string
	// Digest is the sha256 of the receipt as signed. It identifies a
	// receipt that names no bundle.
	Digest   string
	Applied  time.Time // the receipt's time (the device's clock)
	Commit   string    // applied commit after the bundle
	Release  string    // release version after the bundle
	Result   string    // applied | refused | failed
	Reason   string
	Errors   []string
	Received time.Time // when the hub accepted it
	Body     []byte    // the receipt's JSON as the device signed it
}

// key is what makes a receipt a duplicate: one per device and bundle.
func (r Receipt) key() string {
	if r.BundleHash != "" {
		return r.BundleHash
	}
	return "receipt:" + r.Digest
}

// ReceiptStore keeps receipts and the device keys they are checked against.
type ReceiptStore interface {
	// SetDeviceKey records the public key (PKIX DER) a device enrolled or
	// last renewed with. ErrNotFound for an unknown device.
	SetDeviceKey(ctx context.Context, id string, pub []byte) error
	// DeviceKey returns the recorded key, nil when none is; ErrNotFound for
	// an unknown device.
	DeviceKey(ctx context.Context, id string) ([]byte, error)
	// PutReceipt stores an accepted receipt once per device and bundle hash
	// (per digest when it names no bundle); a second one is a duplicate and
	// writes nothing. ErrNotFound for an unknown device, ErrRevoked for a
	// revoked one; nothing is written then.
	PutReceipt(ctx context.Context, r Receipt) (duplicate bool, err error)
	// Receipts returns a device's receipts, latest applied first, at most limit.
	Receipts(ctx context.Context, id string, limit int) ([]Receipt, error)
	// LatestReceipts returns the latest applied receipt of each of ids that
	// has one.
	LatestReceipts(ctx context.Context, ids []string) (map[string]Receipt, error)
}

func (s *sqlStore) SetDeviceKey(ctx context.Context, id string, pub []byte) error {
	res, err := s.w.ExecContext(ctx, s.q(`UPDATE devices SET pubkey = ? WHERE id = ?`), pub, id)
	if err != nil {
		return fmt.Errorf("set key of device %q: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("set key of device %q: %w", id, ErrNotFound)
	}
	return nil
}

func (s *sqlStore) DeviceKey(ctx context.Context, id string) ([]byte, error) {
	var pub []byte
	err := s.r.QueryRowContext(ctx, s.q(`SELECT pubkey FROM devices WHERE id = ?`), id).Scan(&pub)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("key of device %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("key of device %q: %w", id, err)
	}
	if len(pub) == 0 {
		return nil, nil
	}
	return pub, nil
}

func (s *sqlStore) PutReceipt(ctx context.Context, r Receipt) (bool, error) {
	if r.BundleHash == "" && r.Digest == "" {
		return false, fmt.Errorf("put receipt of device %q: neither bundle hash nor digest", r.DeviceID)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("put receipt of device %q: %w", r.DeviceID, err)
	}
	defer tx.Rollback()
	sel := `SELECT revoked FROM devices WHERE id = ?`
	if s.d.name == "postgres" {
		sel += ` FOR SHARE` // a revocation waits for this receipt, or this receipt sees it
	}
	var revoked int64
	err = tx.QueryRowContext(ctx, s.q(sel), r.DeviceID).Scan(&revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("put receipt of device %q: %w", r.DeviceID, ErrNotFound)
	}
	if err != nil {
		return false, fmt.Errorf("put receipt of device %q: %w", r.DeviceID, err)
	}
	if revoked != 0 {
		return false, fmt.Errorf("put receipt of device %q: %w", r.DeviceID, ErrRevoked)
	}
	res, err := tx.ExecContext(ctx, s.q(`INSERT INTO receipts (device_id, rkey, bundle_hash, digest, applied, commit_id, release_version, result, reason, errors, received, body)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, rkey) DO NOTHING`),
		r.DeviceID, r.key(), r.BundleHash, r.Digest, nanos(r.Applied), r.Commit, r.Release, r.Result, r.Reason, jsonList(r.Errors), nanos(r.Received), r.Body)
	if err != nil {
		return false, fmt.Errorf("put receipt of device %q: %w", r.DeviceID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("put receipt of device %q: %w", r.DeviceID, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("put receipt of device %q: commit: %w", r.DeviceID, err)
	}
	return n == 0, nil
}

const receiptCols = `device_id, bundle_hash, digest, applied, commit_id, release_version, result, reason, errors, received, body`

func scanReceipt(sc scanner) (Receipt, error) {
	var r Receipt
	var applied, received int64
	var errs string
	if err := sc.Scan(&r.DeviceID, &r.BundleHash, &r.Digest, &applied, &r.Commit, &r.Release, &r.Result, &r.Reason, &errs, &received, &r.Body); err != nil {
		return Receipt{}, err
	}
	r.Applied, r.Received, r.Errors = fromNanos(applied), fromNanos(received), parseList(errs)
	return r, nil
}

func (s *sqlStore) Receipts(ctx context.Context, id string, limit int) ([]Receipt, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+receiptCols+` FROM receipts WHERE device_id = ? ORDER BY applied DESC, received DESC LIMIT ?`), id, limit)
	if err != nil {
		return nil, fmt.Errorf("receipts of device %q: %w", id, err)
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		r, err := scanReceipt(rows)
		if err != nil {
			return nil, fmt.Errorf("receipts of device %q: %w", id, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("receipts of device %q: %w", id, err)
	}
	return out, nil
}

func (s *sqlStore) LatestReceipts(ctx context.Context, ids []string) (map[string]Receipt, error) {
	out := map[string]Receipt{}
	// In chunks, to stay under both backends' limits on bound parameters.
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 500)]
		ids = ids[len(chunk):]
		in := strings.TrimSuffix(strings.Repeat("?, ", len(chunk)), ", ")
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+receiptCols+` FROM receipts WHERE device_id IN (`+in+`) ORDER BY device_id, applied DESC, received DESC`), args...)
		if err != nil {
			return nil, fmt.Errorf("latest receipts: %w", err)
		}
		for rows.Next() {
			r, err := scanReceipt(rows)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("latest receipts: %w", err)
			}
			if _, ok := out[r.DeviceID]; !ok {
				out[r.DeviceID] = r
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("latest receipts: %w", err)
		}
	}
	return out, nil
}
