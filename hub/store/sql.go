package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// dialect holds what differs between the backends.
type dialect struct {
	name       string
	migrations []string
	// lock serialises migrations across processes inside the transaction.
	lock string
}

// sqlStore implements Store over database/sql for both backends. SQLite
// writes go through a single connection (w) so writers queue in Go rather
// than spin on SQLITE_BUSY; reads use a pool (r). PostgreSQL uses one pool.
type sqlStore struct {
	d     dialect
	w, r  *sql.DB
	close func() error
	stmts sync.Map // prepared hot-path statements, by pool and query
	batch *batcher // group commit of status reports

	view viewState // the status page's fleet index (fleetindex.go)
}

type stmtKey struct {
	db *sql.DB
	q  string
}

// prep returns query prepared on db, once: SQLite would otherwise parse
// every statement on every call, which is most of the ingest cost.
func (s *sqlStore) prep(ctx context.Context, db *sql.DB, query string) (*sql.Stmt, error) {
	k := stmtKey{db, query}
	if st, ok := s.stmts.Load(k); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := db.PrepareContext(ctx, s.q(query))
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.stmts.LoadOrStore(k, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// txStmt returns a write statement prepared by prepareHot, bound to tx.
// It never prepares on the pool: with SQLite's single writer connection held
// by tx, that would wait forever.
func (s *sqlStore) txStmt(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	if st, ok := s.stmts.Load(stmtKey{s.w, query}); ok {
		return tx.StmtContext(ctx, st.(*sql.Stmt)), nil
	}
	return tx.PrepareContext(ctx, s.q(query))
}

// Hot-path write statements, prepared once at open.
const (
	qStatusDeviceSQLite   = `SELECT revoked, latest_seq FROM devices WHERE id = ?`
	qStatusDevicePostgres = `SELECT revoked, latest_seq FROM devices WHERE id = ? FOR UPDATE`
	qStatusInsert         = `INSERT INTO reports (device_id, seq, time, received, state, body) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING`
	qStatusLatest         = `UPDATE devices SET latest_seq = ?, state = ?, groups = ?, last_seen = ? WHERE id = ?`
	qStatusSeen           = `UPDATE devices SET last_seen = ? WHERE id = ?`
)

func (s *sqlStore) prepareHot(ctx context.Context) error {
	sel := qStatusDeviceSQLite
	if s.d.name == "postgres" {
		sel = qStatusDevicePostgres
	}
	for _, q := range []string{sel, qStatusInsert, qStatusLatest, qStatusSeen} {
		if _, err := s.prep(ctx, s.w, q); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
	}
	return nil
}

func (s *sqlStore) Backend() string { return s.d.name }

func (s *sqlStore) Close() error {
	if s.batch != nil {
		s.batch.close()
	}
	s.stmts.Range(func(_, v any) bool { v.(*sql.Stmt).Close(); return true })
	return s.close()
}

func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.r.PingContext(ctx); err != nil {
		return fmt.Errorf("ping %s: %w", s.d.name, err)
	}
	return nil
}

// q rewrites ? placeholders to $n for PostgreSQL.
func (s *sqlStore) q(query string) string {
	if s.d.name != "postgres" {
		return query
	}
	var b strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

// migrate applies the dialect's migrations not yet applied, in one transaction.
func (s *sqlStore) migrate(ctx context.Context) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback()
	if s.d.lock != "" {
		if _, err := tx.ExecContext(ctx, s.d.lock); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var have int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("migrate: read version: %w", err)
	}
	if have > len(s.d.migrations) {
		return fmt.Errorf("migrate: database schema version %d is newer than this hub's %d", have, len(s.d.migrations))
	}
	for v := have + 1; v <= len(s.d.migrations); v++ {
		for _, stmt := range strings.Split(s.d.migrations[v-1], ";\n") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migrate: version %d: %w", v, err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`), v, time.Now().UnixNano()); err != nil {
			return fmt.Errorf("migrate: record version %d: %w", v, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func jsonList(l []string) string {
	if len(l) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(l)
	return string(b)
}

func parseList(s string) []string {
	var l []string
	_ = json.Unmarshal([]byte(s), &l)
	if len(l) == 0 {
		return nil
	}
	return l
}

// --- tokens

func (s *sqlStore) CreateToken(ctx context.Context, t Token) error {
	if t.Kind != TokenEnrol && t.Kind != TokenOperator && t.Kind != TokenRelay {
		return fmt.Errorf("create token: kind %q", t.Kind)
	}
	_, err := s.w.ExecContext(ctx, s.q(`INSERT INTO tokens (hash, kind, device_id, created, expires, used, revoked, hosts) VALUES (?, ?, ?, ?, ?, 0, 0, ?)`),
		t.Hash, t.Kind, t.DeviceID, nanos(t.Created), nanos(t.Expires), jsonList(t.Hosts))
	if err != nil {
		return fmt.Errorf("create %s token: %w", t.Kind, err)
	}
	return nil
}

func (s *sqlStore) PeekEnrolToken(ctx context.Context, hash []byte, now time.Time) (string, error) {
	var id string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT device_id FROM tokens WHERE hash = ? AND kind = 'enrol' AND used = 0 AND revoked = 0 AND expires > ?`), hash, nanos(now)).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("enrol token: %w", ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("enrol token: %w", err)
	}
	return id, nil
}

func (s *sqlStore) CheckOperatorToken(ctx context.Context, hash []byte, now time.Time) error {
	var one int
	err := s.r.QueryRowContext(ctx, s.q(`SELECT 1 FROM tokens WHERE hash = ? AND kind = 'operator' AND revoked = 0 AND (expires = 0 OR expires > ?)`), hash, nanos(now)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("operator token: %w", ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("operator token: %w", err)
	}
	return nil
}

func (s *sqlStore) RevokeToken(ctx context.Context, hash []byte) (Token, error) {
	t := Token{Hash: hash, Revoked: true}
	var created, expires, used int64
	err := s.w.QueryRowContext(ctx, s.q(`UPDATE tokens SET revoked = 1 WHERE hash = ? RETURNING kind, device_id, created, expires, used`), hash).
		Scan(&t.Kind, &t.DeviceID, &created, &expires, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, fmt.Errorf("revoke token: %w", ErrNotFound)
	}
	if err != nil {
		return Token{}, fmt.Errorf("revoke token: %w", err)
	}
	t.Created, t.Expires, t.Used = fromNanos(created), fromNanos(expires), fromNanos(used)
	return t, nil
}

// --- devices

func (s *sqlStore) Enrol(ctx context.Context, tokenHash []byte, now time.Time, d Device) (Device, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return Device{}, fmt.Errorf("enrol: begin: %w", err)
	}
	defer tx.Rollback()
	var id string
	err = tx.QueryRowContext(ctx, s.q(`UPDATE tokens SET used = ? WHERE hash = ? AND kind = 'enrol' AND used = 0 AND revoked = 0 AND expires > ? RETURNING device_id`),
		nanos(now), tokenHash, nanos(now)).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("enrol: token: %w", ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("enrol: use token: %w", err)
	}
	if d.ID != "" && d.ID != id {
		return Device{}, fmt.Errorf("enrol: token is for device %q, not %q: %w", id, d.ID, ErrNotFound)
	}
	d.ID = id
	d.Enrolled = now
	d.Revoked = time.Time{}
	// Re-enrolment with a fresh token replaces the key and lifts a revocation;
	// history and sequence numbers are kept.
	_, err = tx.ExecContext(ctx, s.q(`INSERT INTO devices (id, key_kind, cert_serial, cert_not_after, enrolled, revoked, latest_seq, state, groups, last_seen, ak)
		VALUES (?, ?, ?, ?, ?, 0, 0, '', '[]', 0, ?)
		ON CONFLICT (id) DO UPDATE SET key_kind = excluded.key_kind, cert_serial = excluded.cert_serial,
			cert_not_after = excluded.cert_not_after, enrolled = excluded.enrolled, revoked = 0, ak = excluded.ak`),
		d.ID, d.KeyKind, d.CertSerial, nanos(d.CertNotAfter), nanos(now), d.AK)
	if err != nil {
		return Device{}, fmt.Errorf("enrol device %q: %w", id, err)
	}
	if err := s.notifyDevice(ctx, tx, id); err != nil {
		return Device{}, fmt.Errorf("enrol device %q: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return Device{}, fmt.Errorf("enrol device %q: commit: %w", id, err)
	}
	s.markDirty(id)
	return d, nil
}

// notifyDevice tells every hub on a shared PostgreSQL database, when tx
// commits, that something its mutual-TLS check reads of device id changed,
// so each drops its cached copy (pgStore.WatchDevices). SQLite has one hub,
// which drops its own.
func (s *sqlStore) notifyDevice(ctx context.Context, tx *sql.Tx, id string) error {
	if s.d.name != "postgres" {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_notify('`+chanDevice+`', $1)`, id); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// updateDevice runs an UPDATE of device id's row and returns the rows it
// changed; on PostgreSQL a change is announced to every hub (notifyDevice)
// in the same transaction.
func (s *sqlStore) updateDevice(ctx context.Context, id, query string, args ...any) (int64, error) {
	if s.d.name != "postgres" {
		res, err := s.w.ExecContext(ctx, s.q(query), args...)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, s.q(query), args...)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil || n == 0 {
		return 0, err
	}
	if err := s.notifyDevice(ctx, tx, id); err != nil {
		return 0, err
	}
	return n, tx.Commit()
}

const deviceCols = `id, key_kind, cert_serial, cert_not_after, enrolled, revoked, latest_seq, state, groups, last_seen, attest_ok, attest_time, ak, relay, attest_pcrs`

type scanner interface{ Scan(...any) error }

func scanDevice(r scanner) (Device, error) {
	var d Device
	var notAfter, enrolled, revoked, lastSeen, attestTime int64
	var latest int64
	var groups string
	var attestOK, attestPCRs sql.NullInt64
	if err := r.Scan(&d.ID, &d.KeyKind, &d.CertSerial, &notAfter, &enrolled, &revoked, &latest, &d.State, &groups, &lastSeen, &attestOK, &attestTime, &d.AK, &d.Relay, &attestPCRs); err != nil {
		return Device{}, err
	}
	d.AttestPCRs = attestPCRs.Valid && attestPCRs.Int64 == 1
	d.CertNotAfter, d.Enrolled, d.Revoked, d.LastSeen, d.AttestTime = fromNanos(notAfter), fromNanos(enrolled), fromNanos(revoked), fromNanos(lastSeen), fromNanos(attestTime)
	d.LatestSeq = uint64(latest)
	d.Groups = parseList(groups)
	if attestOK.Valid {
		ok := attestOK.Int64 == 1
		d.AttestOK = &ok
	}
	return d, nil
}

func (s *sqlStore) Device(ctx context.Context, id string) (Device, error) {
	st, err := s.prep(ctx, s.r, `SELECT `+deviceCols+` FROM devices WHERE id = ?`)
	if err != nil {
		return Device{}, fmt.Errorf("device %q: %w", id, err)
	}
	d, err := scanDevice(st.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("device %q: %w", id, err)
	}
	return d, nil
}

func (s *sqlStore) SetCert(ctx context.Context, id, serial string, notAfter time.Time) error {
	n, err := s.updateDevice(ctx, id, `UPDATE devices SET cert_serial = ?, cert_not_after = ? WHERE id = ? AND revoked = 0`, serial, nanos(notAfter), id)
	if err != nil {
		return fmt.Errorf("set certificate of device %q: %w", id, err)
	}
	if n == 0 {
		if _, err := s.Device(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("device %q: %w", id, ErrRevoked)
	}
	return nil
}

func (s *sqlStore) RevokeDevice(ctx context.Context, id string, now time.Time) error {
	n, err := s.updateDevice(ctx, id, `UPDATE devices SET revoked = ? WHERE id = ?`, nanos(now), id)
	if err != nil {
		return fmt.Errorf("revoke device %q: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("revoke device %q: %w", id, ErrNotFound)
	}
	s.markDirty(id)
	return nil
}

func (s *sqlStore) ListDevices(ctx context.Context) ([]Device, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+deviceCols+` FROM devices ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

func (s *sqlStore) CountByState(ctx context.Context) (map[string]int, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT state, COUNT(*) FROM devices WHERE revoked = 0 GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("count devices: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count devices: %w", err)
		}
		out[st] = n
	}
	return out, rows.Err()
}

// --- reports

func (s *sqlStore) PutStatus(ctx context.Context, r Report) (PutResult, error) {
	if r.Seq == 0 || r.Seq > 1<<62 {
		return PutResult{}, fmt.Errorf("put status of device %q: seq %d out of range", r.DeviceID, r.Seq)
	}
	res, err := s.putStatus(ctx, r)
	if err != nil {
		return PutResult{}, fmt.Errorf("put status %d of device %q: %w", r.Seq, r.DeviceID, err)
	}
	s.markDirty(r.DeviceID)
	return res, nil
}

func (s *sqlStore) putStatus(ctx context.Context, r Report) (PutResult, error) {
	if s.batch != nil {
		return s.batch.put(ctx, r)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return PutResult{}, err
	}
	defer tx.Rollback()
	res, err := s.putInTx(ctx, tx, r)
	if err != nil {
		return PutResult{}, err
	}
	if err := tx.Commit(); err != nil {
		return PutResult{}, fmt.Errorf("commit: %w", err)
	}
	return res, nil
}

// putInTx stores one report inside tx. ErrNotFound and ErrRevoked come
// before any write.
func (s *sqlStore) putInTx(ctx context.Context, tx *sql.Tx, r Report) (PutResult, error) {
	selQ := qStatusDeviceSQLite
	if s.d.name == "postgres" {
		selQ = qStatusDevicePostgres
	}
	sel, err := s.txStmt(ctx, tx, selQ)
	if err != nil {
		return PutResult{}, err
	}
	var revoked, latest int64
	err = sel.QueryRowContext(ctx, r.DeviceID).Scan(&revoked, &latest)
	if errors.Is(err, sql.ErrNoRows) {
		return PutResult{}, fmt.Errorf("device: %w", ErrNotFound)
	}
	if err != nil {
		return PutResult{}, err
	}
	if revoked != 0 {
		return PutResult{}, fmt.Errorf("device: %w", ErrRevoked)
	}
	ins, err := s.txStmt(ctx, tx, qStatusInsert)
	if err != nil {
		return PutResult{}, err
	}
	res, err := ins.ExecContext(ctx, r.DeviceID, int64(r.Seq), nanos(r.Time), nanos(r.Received), r.State, r.Body)
	if err != nil {
		return PutResult{}, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return PutResult{Duplicate: true, Latest: uint64(latest)}, nil
	}
	if int64(r.Seq) > latest {
		latest = int64(r.Seq)
		up, err := s.txStmt(ctx, tx, qStatusLatest)
		if err != nil {
			return PutResult{}, err
		}
		if _, err := up.ExecContext(ctx, latest, r.State, jsonList(r.Groups), nanos(r.Received), r.DeviceID); err != nil {
			return PutResult{}, err
		}
	} else {
		up, err := s.txStmt(ctx, tx, qStatusSeen)
		if err != nil {
			return PutResult{}, err
		}
		if _, err := up.ExecContext(ctx, nanos(r.Received), r.DeviceID); err != nil {
			return PutResult{}, err
		}
	}
	return PutResult{Latest: uint64(latest)}, nil
}

func (s *sqlStore) Reports(ctx context.Context, id string, limit int) ([]Report, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT r.seq, r.time, r.received, r.state, r.body FROM reports r WHERE r.device_id = ? ORDER BY r.seq DESC LIMIT ?`), id, limit)
	if err != nil {
		return nil, fmt.Errorf("reports of device %q: %w", id, err)
	}
	defer rows.Close()
	var out []Report
	for rows.Next() {
		r := Report{DeviceID: id}
		var seq, t, rec int64
		if err := rows.Scan(&seq, &t, &rec, &r.State, &r.Body); err != nil {
			return nil, fmt.Errorf("reports of device %q: %w", id, err)
		}
		r.Seq, r.Time, r.Received = uint64(seq), fromNanos(t), fromNanos(rec)
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *sqlStore) PruneReports(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := s.w.ExecContext(ctx, s.q(`DELETE FROM reports WHERE received < ? AND seq < (SELECT d.latest_seq FROM devices d WHERE d.id = reports.device_id)`), nanos(cutoff))
	if err != nil {
		return 0, fmt.Errorf("prune reports: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// --- attestation

func (s *sqlStore) PutNonce(ctx context.Context, deviceID string, nonce []byte, expires time.Time) error {
	if _, err := s.w.ExecContext(ctx, s.q(`INSERT INTO nonces (nonce, device_id, expires, used) VALUES (?, ?, ?, 0)`), nonce, deviceID, nanos(expires)); err != nil {
		return fmt.Errorf("put nonce for device %q: %w", deviceID, err)
	}
	// Expired nonces are useless; drop them as we go.
	if _, err := s.w.ExecContext(ctx, s.q(`DELETE FROM nonces WHERE expires < ?`), nanos(expires.Add(-24*time.Hour))); err != nil {
		return fmt.Errorf("expire nonces: %w", err)
	}
	return nil
}

func (s *sqlStore) UseNonce(ctx context.Context, deviceID string, nonce []byte, now time.Time) error {
	res, err := s.w.ExecContext(ctx, s.q(`UPDATE nonces SET used = 1 WHERE nonce = ? AND device_id = ? AND used = 0 AND expires > ?`), nonce, deviceID, nanos(now))
	if err != nil {
		return fmt.Errorf("use nonce of device %q: %w", deviceID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("nonce for device %q: %w", deviceID, ErrNotFound)
	}
	return nil
}

func (s *sqlStore) PutAttestation(ctx context.Context, a Attestation) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("put attestation: begin: %w", err)
	}
	defer tx.Rollback()
	ok := 0
	if a.OK {
		ok = 1
	}
	pcrs := 0
	if a.OK && a.PCRsChecked {
		pcrs = 1
	}
	res, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET attest_ok = ?, attest_pcrs = ?, attest_time = ?, ak = COALESCE(ak, ?) WHERE id = ? AND revoked = 0`), ok, pcrs, nanos(a.Time), a.AK, a.DeviceID)
	if err != nil {
		return fmt.Errorf("put attestation of device %q: %w", a.DeviceID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("put attestation: device %q: %w", a.DeviceID, ErrNotFound)
	}
	if err := s.notifyDevice(ctx, tx, a.DeviceID); err != nil {
		return fmt.Errorf("put attestation of device %q: %w", a.DeviceID, err)
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO attestations (device_id, time, ok, result) VALUES (?, ?, ?, ?)`), a.DeviceID, nanos(a.Time), ok, a.Result); err != nil {
		return fmt.Errorf("put attestation of device %q: %w", a.DeviceID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("put attestation of device %q: commit: %w", a.DeviceID, err)
	}
	s.markDirty(a.DeviceID)
	return nil
}

func (s *sqlStore) Attestations(ctx context.Context, id string, limit int) ([]Attestation, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT time, ok, result FROM attestations WHERE device_id = ? ORDER BY id DESC LIMIT ?`), id, limit)
	if err != nil {
		return nil, fmt.Errorf("attestations of device %q: %w", id, err)
	}
	defer rows.Close()
	var out []Attestation
	for rows.Next() {
		a := Attestation{DeviceID: id}
		var t, ok int64
		if err := rows.Scan(&t, &ok, &a.Result); err != nil {
			return nil, fmt.Errorf("attestations of device %q: %w", id, err)
		}
		a.Time, a.OK = fromNanos(t), ok == 1
		out = append(out, a)
	}
	return out, rows.Err()
}

// --- pokes

func (s *sqlStore) AddPoke(ctx context.Context, p Poke) (int64, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("add poke: begin: %w", err)
	}
	defer tx.Rollback()
	var id int64
	err = tx.QueryRowContext(ctx, s.q(`INSERT INTO pokes (grp, devices, commit_id, reason, time) VALUES (?, ?, ?, ?, ?) RETURNING id`),
		p.Group, jsonList(p.Devices), p.Commit, p.Reason, nanos(p.Time)).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("add poke: %w", err)
	}
	if s.d.name == "postgres" {
		// Delivered at commit to every hub LISTENing (see Listen).
		if _, err := tx.ExecContext(ctx, `SELECT pg_notify('shoal_poke', $1)`, strconv.FormatInt(id, 10)); err != nil {
			return 0, fmt.Errorf("add poke: notify: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("add poke: commit: %w", err)
	}
	return id, nil
}

func (s *sqlStore) PokesAfter(ctx context.Context, after int64, limit int) ([]Poke, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT id, grp, devices, commit_id, reason, time FROM pokes WHERE id > ? ORDER BY id LIMIT ?`), after, limit)
	if err != nil {
		return nil, fmt.Errorf("pokes after %d: %w", after, err)
	}
	defer rows.Close()
	var out []Poke
	for rows.Next() {
		var p Poke
		var devs string
		var t int64
		if err := rows.Scan(&p.ID, &p.Group, &devs, &p.Commit, &p.Reason, &t); err != nil {
			return nil, fmt.Errorf("pokes after %d: %w", after, err)
		}
		p.Devices, p.Time = parseList(devs), fromNanos(t)
		out = append(out, p)
	}
	return out, rows.Err()
}

func (s *sqlStore) LatestPoke(ctx context.Context) (int64, error) {
	var id int64
	if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM pokes`).Scan(&id); err != nil {
		return 0, fmt.Errorf("latest poke: %w", err)
	}
	return id, nil
}

// --- CA

func (s *sqlStore) CA(ctx context.Context) (CA, error) {
	var ca CA
	err := s.r.QueryRowContext(ctx, `SELECT cert, key FROM ca WHERE id = 1`).Scan(&ca.CertPEM, &ca.KeyPEM)
	if errors.Is(err, sql.ErrNoRows) {
		return CA{}, fmt.Errorf("hub CA: %w", ErrNotFound)
	}
	if err != nil {
		return CA{}, fmt.Errorf("hub CA: %w", err)
	}
	return ca, nil
}

func (s *sqlStore) InitCA(ctx context.Context, ca CA) (CA, error) {
	if _, err := s.w.ExecContext(ctx, s.q(`INSERT INTO ca (id, cert, key) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING`), ca.CertPEM, ca.KeyPEM); err != nil {
		return CA{}, fmt.Errorf("init hub CA: %w", err)
	}
	return s.CA(ctx)
}
