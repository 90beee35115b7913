package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrStale means a write would move a value backwards: the store holds a
// later one (another hub got there first, or the write replays an old one).
var ErrStale = errors.New("stored value is later")

// TPMCounters are the TPM clock info of a device's last accepted quote. They
// belong to one attestation key: counters stored for another key (the device
// enrolled again with a new one) are as good as none.
type TPMCounters struct {
	DeviceID     string
	AKHash       []byte // sha256 of the AK's public area
	ResetCount   uint32
	RestartCount uint32
	Clock        uint64 // ms the TPM has been powered
	Updated      time.Time
}

// Before reports whether c is earlier than o. Reset and restart counts
// compare as serial numbers (RFC 1982), since a TPM adds a fixed per-key
// offset to them that may wrap; within one reset and restart, the clock
// compares plainly. Counters of different keys are never before each other.
func (c TPMCounters) Before(o TPMCounters) bool {
	if !bytes.Equal(c.AKHash, o.AKHash) {
		return false
	}
	if d := int32(c.ResetCount - o.ResetCount); d != 0 {
		return d < 0
	}
	if d := int32(c.RestartCount - o.RestartCount); d != 0 {
		return d < 0
	}
	return c.Clock < o.Clock
}

// Counters stores each device's TPM counters so every hub on the database,
// and a restarted one, holds quotes to them.
type Counters interface {
	// TPMCounters returns the device's last stored counters, or ErrNotFound.
	TPMCounters(ctx context.Context, deviceID string) (TPMCounters, error)
	// AdvanceTPMCounters stores c unless the device's stored counters, for
	// the same AK, are later (ErrStale; nothing written). Concurrent calls
	// for one device never move its counters backwards.
	AdvanceTPMCounters(ctx context.Context, c TPMCounters) error
}

// maxAdvanceTries bounds the conditional-update loop; each retry means
// another writer changed the row in between.
const maxAdvanceTries = 16

func (s *sqlStore) TPMCounters(ctx context.Context, deviceID string) (TPMCounters, error) {
	c, _, err := s.readCounters(ctx, s.r, deviceID)
	return c, err
}

func (s *sqlStore) readCounters(ctx context.Context, db *sql.DB, deviceID string) (TPMCounters, int64, error) {
	c := TPMCounters{DeviceID: deviceID}
	var reset, restart, clock, updated, version int64
	err := db.QueryRowContext(ctx, s.q(`SELECT ak_hash, reset_count, restart_count, clock, updated, version FROM tpm_counters WHERE device_id = ?`), deviceID).
		Scan(&c.AKHash, &reset, &restart, &clock, &updated, &version)
	if errors.Is(err, sql.ErrNoRows) {
		return TPMCounters{}, 0, fmt.Errorf("tpm counters of device %q: %w", deviceID, ErrNotFound)
	}
	if err != nil {
		return TPMCounters{}, 0, fmt.Errorf("tpm counters of device %q: %w", deviceID, err)
	}
	// Stored as signed 64-bit integers, the width both databases have; the
	// clock round-trips bit for bit.
	c.ResetCount, c.RestartCount, c.Clock = uint32(reset), uint32(restart), uint64(clock)
	c.Updated = fromNanos(updated)
	return c, version, nil
}

// AdvanceTPMCounters is a compare-and-swap on the row's version: read,
// compare in Go (serial-number arithmetic is awkward in SQL), then update
// only if nobody wrote in between, else read again.
func (s *sqlStore) AdvanceTPMCounters(ctx context.Context, c TPMCounters) error {
	if c.DeviceID == "" || len(c.AKHash) == 0 {
		return fmt.Errorf("advance tpm counters: device ID and AK hash are required")
	}
	for range maxAdvanceTries {
		old, version, err := s.readCounters(ctx, s.w, c.DeviceID)
		switch {
		case errors.Is(err, ErrNotFound):
			res, err := s.w.ExecContext(ctx, s.q(`INSERT INTO tpm_counters (device_id, ak_hash, reset_count, restart_count, clock, updated, version)
				VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (device_id) DO NOTHING`),
				c.DeviceID, c.AKHash, int64(c.ResetCount), int64(c.RestartCount), int64(c.Clock), nanos(c.Updated))
			if err != nil {
				return fmt.Errorf("advance tpm counters of device %q: %w", c.DeviceID, err)
			}
			if n, _ := res.RowsAffected(); n == 1 {
				return nil
			}
			continue // another writer inserted first: compare with theirs
		case err != nil:
			return fmt.Errorf("advance: %w", err)
		}
		if c.Before(old) {
			return fmt.Errorf("tpm counters of device %q: reset/restart/clock %d/%d/%d before stored %d/%d/%d: %w",
				c.DeviceID, c.ResetCount, c.RestartCount, c.Clock, old.ResetCount, old.RestartCount, old.Clock, ErrStale)
		}
		res, err := s.w.ExecContext(ctx, s.q(`UPDATE tpm_counters SET ak_hash = ?, reset_count = ?, restart_count = ?, clock = ?, updated = ?, version = version + 1
			WHERE device_id = ? AND version = ?`),
			c.AKHash, int64(c.ResetCount), int64(c.RestartCount), int64(c.Clock), nanos(c.Updated), c.DeviceID, version)
		if err != nil {
			return fmt.Errorf("advance tpm counters of device %q: %w", c.DeviceID, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return nil
		}
	}
	return fmt.Errorf("advance tpm counters of device %q: still contended after %d tries", c.DeviceID, maxAdvanceTries)
}
