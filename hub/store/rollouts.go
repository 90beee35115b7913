package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrLeaseLost means a fenced write was refused: the writer no longer holds
// the lease (another hub took it after it expired). Nothing was written.
var ErrLeaseLost = errors.New("lease lost")

// RolloutRecord is one rollout: a commit going out to the devices it changes.
type RolloutRecord struct {
	ID     int64
	Commit string
	// Status is the controller's: running, paused, halted, aborted, done, superseded.
	Status  string
	Urgent  bool
	Reason  string // why halted, aborted or superseded
	Created time.Time
	Updated time.Time
	// Policies is the JSON of each track's policy (track → spec.Rollout).
	Policies []byte
	// Paused and Aborted are the operator's requests, apart from Status,
	// which only the controller writes.
	Paused  bool
	Aborted bool
}

// RolloutWave is one wave of one track of a rollout.
type RolloutWave struct {
	RolloutID int64
	Track     string
	Index     int
	Name      string
	State     string
	Opened    time.Time
	BakeStart time.Time
	Ended     time.Time
	Note      string
	// Approved is the operator's; the controller never writes it.
	Approved bool
}

// RolloutMember is one device of a rollout.
type RolloutMember struct {
	RolloutID int64
	DeviceID  string
	Track     string
	Wave      int // -1: not placed yet (a device that joined)
	Labels    map[string]string
	FromSpec  string
	ToSpec    string
	Release   string
	Why       string
	Admitted  time.Time
	Verdict   string
	Gates     []string
	Flag      string
	// Granted and GrantID are written once, by GrantMember.
	Granted time.Time
	GrantID string
}

// RolloutEvent is something that happened in a rollout.
type RolloutEvent struct {
	ID        int64
	RolloutID int64
	Time      time.Time
	DeviceID  string
	Kind      string
	Message   string
}

// Fence is the lease a controller's write must still hold: the write and
// the lease's renewal to Now+TTL happen in one transaction, or neither.
type Fence struct {
	Name, Holder string
	Now          time.Time
	TTL          time.Duration
}

// RolloutStep is what one step of the controller writes.
type RolloutStep struct {
	RolloutID int64
	Status    string
	Reason    string
	Waves     []RolloutWave
	Members   []RolloutMember
	Events    []RolloutEvent
}

// DeviceLatest is what LatestSeqs says of a device.
type DeviceLatest struct {
	ID  string
	Seq uint64
	// AttestOK is the hub's verdict on the device's last quote (nil: none),
	// made at AttestTime.
	AttestOK   *bool
	AttestTime time.Time
}

// ReportRef names one stored report.
type ReportRef struct {
	DeviceID string
	Seq      uint64
}

// Rollouts stores rollouts, the controller's lease, and reads reports for it.
type Rollouts interface {
	// AcquireLease takes or renews the lease name for holder until now+ttl
	// when it is free, expired, or already holder's; it reports whether
	// holder holds it.
	AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error)
	// ReleaseLease gives up the lease if holder holds it.
	ReleaseLease(ctx context.Context, name, holder string) error
	// CreateRollout stores a rollout with its waves and members and marks
	// every earlier one not yet finished (running, paused, done) superseded
	// with supersedeReason; fenced. It returns the new ID.
	CreateRollout(ctx context.Context, f Fence, r RolloutRecord, waves []RolloutWave, members []RolloutMember, supersedeReason string) (int64, error)
	// SaveRolloutStep writes a step (status, changed waves and members,
	// events); fenced. It leaves Approved, Granted and GrantID alone.
	SaveRolloutStep(ctx context.Context, f Fence, st RolloutStep) error
	// CurrentRollout returns the newest rollout, or ErrNotFound.
	CurrentRollout(ctx context.Context) (RolloutRecord, error)
	// RolloutByID returns a rollout by ID, or ErrNotFound.
	RolloutByID(ctx context.Context, id int64) (RolloutRecord, error)
	// ListRollouts returns the newest rollouts first, at most limit.
	ListRollouts(ctx context.Context, limit int) ([]RolloutRecord, error)
	RolloutWaves(ctx context.Context, id int64) ([]RolloutWave, error)
	RolloutMembers(ctx context.Context, id int64) ([]RolloutMember, error)
	// RolloutMember returns one member, or ErrNotFound.
	RolloutMember(ctx context.Context, id int64, device string) (RolloutMember, error)
	// JoinRollout adds m (with Wave -1) unless the device is a member; it
	// reports whether it added it.
	JoinRollout(ctx context.Context, m RolloutMember) (bool, error)
	// UnplacedMembers returns the members that joined and wait for a wave (Wave -1).
	UnplacedMembers(ctx context.Context, id int64) ([]RolloutMember, error)
	// GrantMember records the grant of an admitted member, once: a member
	// granted before keeps its grant ID and time. It returns the member as
	// stored and whether this call granted it; a member not admitted comes
	// back ungranted. ErrNotFound if the device is no member.
	GrantMember(ctx context.Context, id int64, device, grantID string, now time.Time) (RolloutMember, bool, error)
	AddRolloutEvents(ctx context.Context, events []RolloutEvent) error
	// RolloutEvents returns a rollout's events, newest first, at most limit.
	RolloutEvents(ctx context.Context, id int64, limit int) ([]RolloutEvent, error)
	// SetRolloutControl records an operator's pause (or resume) and abort.
	SetRolloutControl(ctx context.Context, id int64, paused, aborted bool) error
	// ApproveWave records an operator's approval of a wave; ErrNotFound if there is no such wave.
	ApproveWave(ctx context.Context, id int64, track string, index int) error
	// GrantedFromSpecs returns, for each device, the specs it ran before
	// the commits it was granted in rollouts older than id.
	GrantedFromSpecs(ctx context.Context, id int64) (map[string][]string, error)
	// LatestSeqs calls fn with every unrevoked device's latest report seq
	// (0: none) and the hub's last attestation verdict on it.
	LatestSeqs(ctx context.Context, fn func(DeviceLatest)) error
	// ReportBodies returns the bodies of the reports named, by ref; missing ones are left out.
	ReportBodies(ctx context.Context, refs []ReportRef) (map[ReportRef][]byte, error)
}

const leaseFence = `UPDATE leases SET expires = ? WHERE name = ? AND holder = ? AND expires > ?`

func (s *sqlStore) AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error) {
	res, err := s.w.ExecContext(ctx, s.q(`INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
		WHERE leases.holder = excluded.holder OR leases.expires <= ?`), name, holder, nanos(now.Add(ttl)), nanos(now))
	if err != nil {
		return false, fmt.Errorf("lease %q: %w", name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("lease %q: %w", name, err)
	}
	return n == 1, nil
}

func (s *sqlStore) ReleaseLease(ctx context.Context, name, holder string) error {
	if _, err := s.w.ExecContext(ctx, s.q(`DELETE FROM leases WHERE name = ? AND holder = ?`), name, holder); err != nil {
		return fmt.Errorf("release lease %q: %w", name, err)
	}
	return nil
}

// fenced runs fn in a transaction that first renews f's lease, and
// refuses with ErrLeaseLost when f.Holder no longer holds it.
func (s *sqlStore) fenced(ctx context.Context, f Fence, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, s.q(leaseFence), nanos(f.Now.Add(f.TTL)), f.Name, f.Holder, nanos(f.Now))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return fmt.Errorf("lease %q of %q: %w", f.Name, f.Holder, ErrLeaseLost)
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqlStore) CreateRollout(ctx context.Context, f Fence, r RolloutRecord, waves []RolloutWave, members []RolloutMember, supersedeReason string) (int64, error) {
	var id int64
	err := s.fenced(ctx, f, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE rollouts SET status = 'superseded', reason = ?, updated = ? WHERE status IN ('running', 'paused', 'done')`),
			supersedeReason, nanos(r.Created)); err != nil {
			return err
		}
		err := tx.QueryRowContext(ctx, s.q(`INSERT INTO rollouts (commit_id, status, urgent, reason, created, updated, policies, paused, aborted)
			VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0) RETURNING id`), r.Commit, r.Status, b2i(r.Urgent), r.Reason, nanos(r.Created), nanos(r.Created), r.Policies).Scan(&id)
		if err != nil {
			return err
		}
		for i := range waves {
			waves[i].RolloutID = id
		}
		for i := range members {
			members[i].RolloutID = id
		}
		return s.writeStep(ctx, tx, RolloutStep{RolloutID: id, Status: r.Status, Reason: r.Reason, Waves: waves, Members: members}, r.Created, false)
	})
	if err != nil {
		return 0, fmt.Errorf("create rollout of %.12s: %w", r.Commit, err)
	}
	return id, nil
}

func (s *sqlStore) SaveRolloutStep(ctx context.Context, f Fence, st RolloutStep) error {
	err := s.fenced(ctx, f, func(tx *sql.Tx) error { return s.writeStep(ctx, tx, st, f.Now, true) })
	if err != nil {
		return fmt.Errorf("save rollout %d: %w", st.RolloutID, err)
	}
	return nil
}

func (s *sqlStore) writeStep(ctx context.Context, tx *sql.Tx, st RolloutStep, now time.Time, status bool) error {
	if status {
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE rollouts SET status = ?, reason = ?, updated = ? WHERE id = ?`), st.Status, st.Reason, nanos(now), st.RolloutID); err != nil {
			return err
		}
	}
	if len(st.Waves) > 0 {
		ws, err := tx.PrepareContext(ctx, s.q(`INSERT INTO rollout_waves (rollout_id, track, idx, name, state, opened, bake_start, ended, approved, note)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
			ON CONFLICT (rollout_id, track, idx) DO UPDATE SET name = excluded.name, state = excluded.state, opened = excluded.opened,
				bake_start = excluded.bake_start, ended = excluded.ended, note = excluded.note`))
		if err != nil {
			return err
		}
		defer ws.Close()
		for _, w := range st.Waves {
			if _, err := ws.ExecContext(ctx, st.RolloutID, w.Track, w.Index, w.Name, w.State, nanos(w.Opened), nanos(w.BakeStart), nanos(w.Ended), w.Note); err != nil {
				return err
			}
		}
	}
	if len(st.Members) > 0 {
		ms, err := tx.PrepareContext(ctx, s.q(`INSERT INTO rollout_members (rollout_id, device_id, track, wave, labels, from_spec, to_spec, release, why, admitted, granted, grant_id, verdict, gates, flag)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, '', ?, ?, ?)
			ON CONFLICT (rollout_id, device_id) DO UPDATE SET track = excluded.track, wave = excluded.wave, labels = excluded.labels,
				from_spec = excluded.from_spec, to_spec = excluded.to_spec, release = excluded.release, why = excluded.why,
				admitted = excluded.admitted, verdict = excluded.verdict, gates = excluded.gates, flag = excluded.flag`))
		if err != nil {
			return err
		}
		defer ms.Close()
		for _, m := range st.Members {
			if _, err := ms.ExecContext(ctx, st.RolloutID, m.DeviceID, m.Track, m.Wave, jsonMap(m.Labels), m.FromSpec, m.ToSpec, m.Release, m.Why,
				nanos(m.Admitted), m.Verdict, jsonList(m.Gates), m.Flag); err != nil {
				return err
			}
		}
	}
	return s.addEvents(ctx, tx, st.RolloutID, st.Events)
}

func (s *sqlStore) addEvents(ctx context.Context, tx *sql.Tx, rollout int64, events []RolloutEvent) error {
	if len(events) == 0 {
		return nil
	}
	es, err := tx.PrepareContext(ctx, s.q(`INSERT INTO rollout_events (rollout_id, time, device_id, kind, message) VALUES (?, ?, ?, ?, ?)`))
	if err != nil {
		return err
	}
	defer es.Close()
	for _, e := range events {
		id := e.RolloutID
		if id == 0 {
			id = rollout
		}
		if _, err := es.ExecContext(ctx, id, nanos(e.Time), e.DeviceID, e.Kind, e.Message); err != nil {
			return err
		}
	}
	return nil
}

func (s *sqlStore) AddRolloutEvents(ctx context.Context, events []RolloutEvent) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add rollout events: %w", err)
	}
	defer tx.Rollback()
	if err := s.addEvents(ctx, tx, 0, events); err != nil {
		return fmt.Errorf("add rollout events: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("add rollout events: %w", err)
	}
	return nil
}

func jsonMap(m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func parseMap(s string) map[string]string {
	var m map[string]string
	_ = json.Unmarshal([]byte(s), &m)
	if len(m) == 0 {
		return nil
	}
	return m
}

const rolloutCols = `id, commit_id, status, urgent, reason, created, updated, policies, paused, aborted`

func scanRollout(sc scanner) (RolloutRecord, error) {
	var r RolloutRecord
	var urgent, paused, aborted int
	var created, updated int64
	if err := sc.Scan(&r.ID, &r.Commit, &r.Status, &urgent, &r.Reason, &created, &updated, &r.Policies, &paused, &aborted); err != nil {
		return RolloutRecord{}, err
	}
	r.Urgent, r.Paused, r.Aborted = urgent != 0, paused != 0, aborted != 0
	r.Created, r.Updated = fromNanos(created), fromNanos(updated)
	return r, nil
}

func (s *sqlStore) oneRollout(ctx context.Context, what, query string, args ...any) (RolloutRecord, error) {
	r, err := scanRollout(s.r.QueryRowContext(ctx, s.q(`SELECT `+rolloutCols+` FROM rollouts `+query), args...))
	if errors.Is(err, sql.ErrNoRows) {
		return RolloutRecord{}, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	if err != nil {
		return RolloutRecord{}, fmt.Errorf("%s: %w", what, err)
	}
	return r, nil
}

func (s *sqlStore) CurrentRollout(ctx context.Context) (RolloutRecord, error) {
	return s.oneRollout(ctx, "current rollout", `ORDER BY id DESC LIMIT 1`)
}

func (s *sqlStore) RolloutByID(ctx context.Context, id int64) (RolloutRecord, error) {
	return s.oneRollout(ctx, fmt.Sprintf("rollout %d", id), `WHERE id = ?`, id)
}

func (s *sqlStore) ListRollouts(ctx context.Context, limit int) ([]RolloutRecord, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+rolloutCols+` FROM rollouts ORDER BY id DESC LIMIT ?`), limit)
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	defer rows.Close()
	var out []RolloutRecord
	for rows.Next() {
		r, err := scanRollout(rows)
		if err != nil {
			return nil, fmt.Errorf("list rollouts: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *sqlStore) RolloutWaves(ctx context.Context, id int64) ([]RolloutWave, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT track, idx, name, state, opened, bake_start, ended, approved, note
		FROM rollout_waves WHERE rollout_id = ? ORDER BY track, idx`), id)
	if err != nil {
		return nil, fmt.Errorf("waves of rollout %d: %w", id, err)
	}
	defer rows.Close()
	var out []RolloutWave
	for rows.Next() {
		w := RolloutWave{RolloutID: id}
		var opened, bake, ended int64
		var approved int
		if err := rows.Scan(&w.Track, &w.Index, &w.Name, &w.State, &opened, &bake, &ended, &approved, &w.Note); err != nil {
			return nil, fmt.Errorf("waves of rollout %d: %w", id, err)
		}
		w.Opened, w.BakeStart, w.Ended, w.Approved = fromNanos(opened), fromNanos(bake), fromNanos(ended), approved != 0
		out = append(out, w)
	}
	return out, rows.Err()
}

const memberCols = `rollout_id, device_id, track, wave, labels, from_spec, to_spec, release, why, admitted, granted, grant_id, verdict, gates, flag`

func scanMember(sc scanner) (RolloutMember, error) {
	var m RolloutMember
	var labels, gates string
	var admitted, granted int64
	if err := sc.Scan(&m.RolloutID, &m.DeviceID, &m.Track, &m.Wave, &labels, &m.FromSpec, &m.ToSpec, &m.Release, &m.Why,
		&admitted, &granted, &m.GrantID, &m.Verdict, &gates, &m.Flag); err != nil {
		return RolloutMember{}, err
	}
	m.Labels, m.Gates = parseMap(labels), parseList(gates)
	m.Admitted, m.Granted = fromNanos(admitted), fromNanos(granted)
	return m, nil
}

func (s *sqlStore) RolloutMembers(ctx context.Context, id int64) ([]RolloutMember, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+memberCols+` FROM rollout_members WHERE rollout_id = ? ORDER BY device_id`), id)
	if err != nil {
		return nil, fmt.Errorf("members of rollout %d: %w", id, err)
	}
	defer rows.Close()
	var out []RolloutMember
	for rows.Next() {
		m, err := scanMember(rows)
		if err != nil {
			return nil, fmt.Errorf("members of rollout %d: %w", id, err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

func (s *sqlStore) UnplacedMembers(ctx context.Context, id int64) ([]RolloutMember, error) {
	st, err := s.prep(ctx, s.r, `SELECT `+memberCols+` FROM rollout_members WHERE rollout_id = ? AND wave = -1`)
	if err != nil {
		return nil, fmt.Errorf("unplaced members of rollout %d: %w", id, err)
	}
	rows, err := st.QueryContext(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("unplaced members of rollout %d: %w", id, err)
	}
	defer rows.Close()
	var out []RolloutMember
	for rows.Next() {
		m, err := scanMember(rows)
		if err != nil {
			return nil, fmt.Errorf("unplaced members of rollout %d: %w", id, err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

func (s *sqlStore) RolloutMember(ctx context.Context, id int64, device string) (RolloutMember, error) {
	st, err := s.prep(ctx, s.r, `SELECT `+memberCols+` FROM rollout_members WHERE rollout_id = ? AND device_id = ?`)
	if err != nil {
		return RolloutMember{}, fmt.Errorf("member %q of rollout %d: %w", device, id, err)
	}
	m, err := scanMember(st.QueryRowContext(ctx, id, device))
	if errors.Is(err, sql.ErrNoRows) {
		return RolloutMember{}, fmt.Errorf("member %q of rollout %d: %w", device, id, ErrNotFound)
	}
	if err != nil {
		return RolloutMember{}, fmt.Errorf("member %q of rollout %d: %w", device, id, err)
	}
	return m, nil
}

func (s *sqlStore) JoinRollout(ctx context.Context, m RolloutMember) (bool, error) {
	res, err := s.w.ExecContext(ctx, s.q(`INSERT INTO rollout_members (`+memberCols+`) VALUES (?, ?, ?, -1, ?, ?, ?, ?, '', 0, 0, '', 'pending', '[]', '')
		ON CONFLICT (rollout_id, device_id) DO NOTHING`), m.RolloutID, m.DeviceID, m.Track, jsonMap(m.Labels), m.FromSpec, m.ToSpec, m.Release)
	if err != nil {
		return false, fmt.Errorf("join %q to rollout %d: %w", m.DeviceID, m.RolloutID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("join %q to rollout %d: %w", m.DeviceID, m.RolloutID, err)
	}
	return n == 1, nil
}

func (s *sqlStore) GrantMember(ctx context.Context, id int64, device, grantID string, now time.Time) (RolloutMember, bool, error) {
	res, err := s.w.ExecContext(ctx, s.q(`UPDATE rollout_members SET granted = ?, grant_id = ? WHERE rollout_id = ? AND device_id = ? AND admitted <> 0 AND granted = 0`),
		nanos(now), grantID, id, device)
	if err != nil {
		return RolloutMember{}, false, fmt.Errorf("grant %q in rollout %d: %w", device, id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return RolloutMember{}, false, fmt.Errorf("grant %q in rollout %d: %w", device, id, err)
	}
	// Read back through the writer: on SQLite a reader could lag the write just made.
	m, err := scanMember(s.w.QueryRowContext(ctx, s.q(`SELECT `+memberCols+` FROM rollout_members WHERE rollout_id = ? AND device_id = ?`), id, device))
	if errors.Is(err, sql.ErrNoRows) {
		return RolloutMember{}, false, fmt.Errorf("member %q of rollout %d: %w", device, id, ErrNotFound)
	}
	if err != nil {
		return RolloutMember{}, false, fmt.Errorf("grant %q in rollout %d: %w", device, id, err)
	}
	return m, n == 1, nil
}

func (s *sqlStore) RolloutEvents(ctx context.Context, id int64, limit int) ([]RolloutEvent, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT id, rollout_id, time, device_id, kind, message FROM rollout_events WHERE rollout_id = ? ORDER BY id DESC LIMIT ?`), id, limit)
	if err != nil {
		return nil, fmt.Errorf("events of rollout %d: %w", id, err)
	}
	defer rows.Close()
	var out []RolloutEvent
	for rows.Next() {
		var e RolloutEvent
		var t int64
		if err := rows.Scan(&e.ID, &e.RolloutID, &t, &e.DeviceID, &e.Kind, &e.Message); err != nil {
			return nil, fmt.Errorf("events of rollout %d: %w", id, err)
		}
		e.Time = fromNanos(t)
		out = append(out, e)
	}
	return out, rows.Err()
}

func (s *sqlStore) SetRolloutControl(ctx context.Context, id int64, paused, aborted bool) error {
	res, err := s.w.ExecContext(ctx, s.q(`UPDATE rollouts SET paused = ?, aborted = ? WHERE id = ?`), b2i(paused), b2i(aborted), id)
	if err != nil {
		return fmt.Errorf("control rollout %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("control rollout %d: %w", id, ErrNotFound)
	}
	return nil
}

func (s *sqlStore) ApproveWave(ctx context.Context, id int64, track string, index int) error {
	res, err := s.w.ExecContext(ctx, s.q(`UPDATE rollout_waves SET approved = 1 WHERE rollout_id = ? AND track = ? AND idx = ?`), id, track, index)
	if err != nil {
		return fmt.Errorf("approve wave %d of track %q in rollout %d: %w", index+1, track, id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("approve wave %d of track %q in rollout %d: %w", index+1, track, id, ErrNotFound)
	}
	return nil
}

func (s *sqlStore) GrantedFromSpecs(ctx context.Context, id int64) (map[string][]string, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT DISTINCT device_id, from_spec FROM rollout_members WHERE rollout_id < ? AND granted <> 0 AND from_spec <> ''`), id)
	if err != nil {
		return nil, fmt.Errorf("granted specs: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var dev, spec string
		if err := rows.Scan(&dev, &spec); err != nil {
			return nil, fmt.Errorf("granted specs: %w", err)
		}
		out[dev] = append(out[dev], spec)
	}
	return out, rows.Err()
}

func (s *sqlStore) LatestSeqs(ctx context.Context, fn func(DeviceLatest)) error {
	st, err := s.prep(ctx, s.r, `SELECT id, latest_seq, attest_ok, attest_time FROM devices WHERE revoked = 0`)
	if err != nil {
		return fmt.Errorf("latest seqs: %w", err)
	}
	rows, err := st.QueryContext(ctx)
	if err != nil {
		return fmt.Errorf("latest seqs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d DeviceLatest
		var seq, at int64
		var ok sql.NullInt64
		if err := rows.Scan(&d.ID, &seq, &ok, &at); err != nil {
			return fmt.Errorf("latest seqs: %w", err)
		}
		d.Seq, d.AttestTime = uint64(seq), fromNanos(at)
		if ok.Valid {
			v := ok.Int64 == 1
			d.AttestOK = &v
		}
		fn(d)
	}
	return rows.Err()
}

// reportChunk is how many reports one ReportBodies query fetches.
const reportChunk = 200

func (s *sqlStore) ReportBodies(ctx context.Context, refs []ReportRef) (map[ReportRef][]byte, error) {
	out := make(map[ReportRef][]byte, len(refs))
	for len(refs) > 0 {
		n := min(len(refs), reportChunk)
		chunk := refs[:n]
		refs = refs[n:]
		var b strings.Builder
		args := make([]any, 0, 2*n)
		b.WriteString(`SELECT device_id, seq, body FROM reports WHERE (device_id, seq) IN (VALUES `)
		for i, r := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?)")
			args = append(args, r.DeviceID, int64(r.Seq))
		}
		b.WriteString(")")
		query := b.String()
		if s.d.name == "postgres" {
			// PostgreSQL types the VALUES list from its first row: say what it holds.
			query = strings.Replace(query, "(?, ?)", "(?::text, ?::bigint)", 1)
		}
		rows, err := s.r.QueryContext(ctx, s.q(query), args...)
		if err != nil {
			return nil, fmt.Errorf("report bodies: %w", err)
		}
		for rows.Next() {
			var r ReportRef
			var seq int64
			var body []byte
			if err := rows.Scan(&r.DeviceID, &seq, &body); err != nil {
				rows.Close()
				return nil, fmt.Errorf("report bodies: %w", err)
			}
			r.Seq = uint64(seq)
			out[r] = body
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("report bodies: %w", err)
		}
	}
	return out, nil
}
