package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Relay is an enrolled site relay (shoal relay). Relays are kept apart from
// devices: they enrol with their own kind of token, hold their own kind of
// certificate, and never appear in device lists, counts or rollouts.
type Relay struct {
	ID           string
	Hosts        []string // the names its server certificate covers
	CertSerial   string
	CertNotAfter time.Time
	Enrolled     time.Time
	Revoked      time.Time // zero unless revoked
	LastSeen     time.Time // when its last status arrived
	Status       []byte    // its last api.RelayStatus JSON; nil before the first
	DeviceCount  int       // devices whose latest report came through it (ListRelays only)
}

// Relays stores site relays and which relay each device reports through.
type Relays interface {
	// PeekRelayToken returns a usable relay token (its DeviceID is the
	// relay's ID) without using it, or ErrNotFound.
	PeekRelayToken(ctx context.Context, hash []byte, now time.Time) (Token, error)
	// EnrolRelay uses the relay token once and creates or replaces the
	// relay it names, with the token's hosts, in one transaction.
	EnrolRelay(ctx context.Context, tokenHash []byte, now time.Time, r Relay) (Relay, error)
	// Relay returns a relay, or ErrNotFound.
	Relay(ctx context.Context, id string) (Relay, error)
	// SetRelayCert records a renewed certificate; ErrRevoked for a revoked relay.
	SetRelayCert(ctx context.Context, id, serial string, notAfter time.Time) error
	// RevokeRelay revokes a relay at once.
	RevokeRelay(ctx context.Context, id string, now time.Time) error
	// ListRelays lists relays by ID, each with its device count.
	ListRelays(ctx context.Context) ([]Relay, error)
	// PutRelayStatus keeps a relay's latest status report.
	PutRelayStatus(ctx context.Context, id string, now time.Time, status []byte) error
	// SetDeviceRelay records the relay a device's reports come through ("" none).
	SetDeviceRelay(ctx context.Context, deviceID, relayID string) error
	// RelayDevices lists the devices whose latest report came through relayID.
	RelayDevices(ctx context.Context, relayID string) ([]string, error)
}

func (s *sqlStore) PeekRelayToken(ctx context.Context, hash []byte, now time.Time) (Token, error) {
	t := Token{Hash: hash, Kind: TokenRelay}
	var hosts string
	var created, expires int64
	err := s.r.QueryRowContext(ctx, s.q(`SELECT device_id, hosts, created, expires FROM tokens WHERE hash = ? AND kind = 'relay' AND used = 0 AND revoked = 0 AND expires > ?`), hash, nanos(now)).
		Scan(&t.DeviceID, &hosts, &created, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, fmt.Errorf("relay token: %w", ErrNotFound)
	}
	if err != nil {
		return Token{}, fmt.Errorf("relay token: %w", err)
	}
	t.Hosts, t.Created, t.Expires = parseList(hosts), fromNanos(created), fromNanos(expires)
	return t, nil
}

func (s *sqlStore) EnrolRelay(ctx context.Context, tokenHash []byte, now time.Time, r Relay) (Relay, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return Relay{}, fmt.Errorf("enrol relay: begin: %w", err)
	}
	defer tx.Rollback()
	var id, hosts string
	err = tx.QueryRowContext(ctx, s.q(`UPDATE tokens SET used = ? WHERE hash = ? AND kind = 'relay' AND used = 0 AND revoked = 0 AND expires > ? RETURNING device_id, hosts`),
		nanos(now), tokenHash, nanos(now)).Scan(&id, &hosts)
	if errors.Is(err, sql.ErrNoRows) {
		return Relay{}, fmt.Errorf("enrol relay: token: %w", ErrNotFound)
	}
	if err != nil {
		return Relay{}, fmt.Errorf("enrol relay: use token: %w", err)
	}
	if r.ID != "" && r.ID != id {
		return Relay{}, fmt.Errorf("enrol relay: token is for relay %q, not %q: %w", id, r.ID, ErrNotFound)
	}
	r.ID, r.Hosts, r.Enrolled, r.Revoked = id, parseList(hosts), now, time.Time{}
	_, err = tx.ExecContext(ctx, s.q(`INSERT INTO relays (id, hosts, cert_serial, cert_not_after, enrolled, revoked, last_seen)
		VALUES (?, ?, ?, ?, ?, 0, 0)
		ON CONFLICT (id) DO UPDATE SET hosts = excluded.hosts, cert_serial = excluded.cert_serial,
			cert_not_after = excluded.cert_not_after, enrolled = excluded.enrolled, revoked = 0`),
		r.ID, hosts, r.CertSerial, nanos(r.CertNotAfter), nanos(now))
	if err != nil {
		return Relay{}, fmt.Errorf("enrol relay %q: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return Relay{}, fmt.Errorf("enrol relay %q: commit: %w", id, err)
	}
	return r, nil
}

const relayCols = `id, hosts, cert_serial, cert_not_after, enrolled, revoked, last_seen, status`

func scanRelay(sc scanner, extra ...any) (Relay, error) {
	var r Relay
	var hosts string
	var notAfter, enrolled, revoked, seen int64
	if err := sc.Scan(append([]any{&r.ID, &hosts, &r.CertSerial, &notAfter, &enrolled, &revoked, &seen, &r.Status}, extra...)...); err != nil {
		return Relay{}, err
	}
	r.Hosts = parseList(hosts)
	r.CertNotAfter, r.Enrolled, r.Revoked, r.LastSeen = fromNanos(notAfter), fromNanos(enrolled), fromNanos(revoked), fromNanos(seen)
	return r, nil
}

func (s *sqlStore) Relay(ctx context.Context, id string) (Relay, error) {
	r, err := scanRelay(s.r.QueryRowContext(ctx, s.q(`SELECT `+relayCols+` FROM relays WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Relay{}, fmt.Errorf("relay %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Relay{}, fmt.Errorf("relay %q: %w", id, err)
	}
	return r, nil
}

func (s *sqlStore) SetRelayCert(ctx context.Context, id, serial string, notAfter time.Time) error {
	res, err := s.w.ExecContext(ctx, s.q(`UPDATE relays SET cert_serial = ?, cert_not_after = ? WHERE id = ? AND revoked = 0`), serial, nanos(notAfter), id)
	if err != nil {
		return fmt.Errorf("set certificate of relay %q: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := s.Relay(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("relay %q: %w", id, ErrRevoked)
	}
	return nil
}

func (s *sqlStore) RevokeRelay(ctx context.Context, id string, now time.Time) error {
	res, err := s.w.ExecContext(ctx, s.q(`UPDATE relays SET revoked = ? WHERE id = ?`), nanos(now), id)
	if err != nil {
		return fmt.Errorf("revoke relay %q: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("revoke relay %q: %w", id, ErrNotFound)
	}
	return nil
}

func (s *sqlStore) ListRelays(ctx context.Context) ([]Relay, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+relayCols+`, (SELECT COUNT(*) FROM devices d WHERE d.relay = relays.id AND d.revoked = 0) FROM relays ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list relays: %w", err)
	}
	defer rows.Close()
	var out []Relay
	for rows.Next() {
		var n int64
		r, err := scanRelay(rows, &n)
		if err != nil {
			return nil, fmt.Errorf("list relays: %w", err)
		}
		r.DeviceCount = int(n)
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *sqlStore) PutRelayStatus(ctx context.Context, id string, now time.Time, status []byte) error {
	res, err := s.w.ExecContext(ctx, s.q(`UPDATE relays SET status = ?, last_seen = ? WHERE id = ? AND revoked = 0`), status, nanos(now), id)
	if err != nil {
		return fmt.Errorf("put status of relay %q: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := s.Relay(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("relay %q: %w", id, ErrRevoked)
	}
	return nil
}

func (s *sqlStore) SetDeviceRelay(ctx context.Context, deviceID, relayID string) error {
	n, err := s.updateDevice(ctx, deviceID, `UPDATE devices SET relay = ? WHERE id = ? AND relay <> ?`, relayID, deviceID, relayID)
	if err != nil {
		return fmt.Errorf("set relay of device %q: %w", deviceID, err)
	}
	if n > 0 {
		s.markDirty(deviceID)
	}
	return nil
}

func (s *sqlStore) RelayDevices(ctx context.Context, relayID string) ([]string, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT id FROM devices WHERE relay = ? ORDER BY id`), relayID)
	if err != nil {
		return nil, fmt.Errorf("devices of relay %q: %w", relayID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("devices of relay %q: %w", relayID, err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}
