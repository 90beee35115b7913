package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The fleet index keeps, per open store, the few facts about every device
// that FleetCounts needs (state, last seen, key kind, attestation, groups,
// labels, update state, drift, clock), about a hundred bytes each, so the
// status page's counts are a scan in memory instead of a join over every
// device in SQL. Offline is decided from last_seen against the query's Now,
// so it is exact without any timer.
//
// The index follows the database through three channels:
//   - this process's own writes mark their device dirty after commit
//     (markDirty); the next read reloads just those devices;
//   - other hubs' writes on the same database are found through cheap range
//     reads on indexed columns: reports received since the last pass (with an
//     overlap that covers transactions committing out of order), attestations
//     with a higher id, devices enrolled or revoked later than any seen;
//   - every verifyEvery, a narrow scan of devices (the columns every write
//     moves, verifySlice devices per read so no one read pays for all) is
//     compared with the index and the devices that differ are reloaded, which bounds how long a write the change reads missed (another
//     hub's clock far off, a commit later than the overlap) stays out. The
//     whole index is reloaded on the first read and when too many devices
//     changed at once.
//
// Reloading a device also re-derives its device_view row from its latest
// report when the stored one is behind. The row is written to device_view
// only when a SQL path (the page, one device, the rollout) next reads, so
// the live endpoint never writes: a write there can land on a SQLite WAL
// checkpoint and cost tens of milliseconds.

// verifyEvery bounds how long a write the change reads cannot see (another
// hub's clock far behind ours) stays out of the index.
const verifyEvery = 30 * time.Second

// reportOverlap is how far before the newest report received (or the
// previous pass) the next pass looks again, for reports whose transaction
// committed after a later one: commit latency plus clock differences
// between hubs must stay under it.
const reportOverlap = 5 * time.Second

// verifySlice is how many devices one read verifies (about 2 ms on SQLite
// at 10,000 devices). A variable so a test can sweep in several reads.
var verifySlice = 1000

// fullAbove is how many changed devices make a full reload cheaper than
// reloading them one chunk at a time.
const fullAbove = 2000

// fleetEntry is what the counts need about one device. Tri-state values
// hold -1 for SQL NULL so the filters keep SQL's meaning exactly.
type fleetEntry struct {
	id, lid     string // lid: the ID lower-cased as the backend's LOWER does
	groups      string // devices.groups, JSON as stored
	labels      string // device_view.labels, JSON as stored
	state       string
	updateState string
	clockState  string // "" with no view row or no clock in the report

	lastSeen, latestSeq, attestTime, enrolled, revoked, skewAbs int64

	attestOK, reportAttestOK         int8
	software, hasView, drifted, weak bool
}

type reportKey struct {
	id  string
	seq int64
}

// viewState is the fleet index of one store plus what its refresh needs.
// The zero value is an empty index that loads fully on the first read.
type viewState struct {
	mu      sync.Mutex // held by a refresh and by counting
	loaded  bool
	entries []fleetEntry
	pos     map[string]int // device ID → index in entries
	intern  map[string]string
	checkAt time.Time // last full reload or verify sweep started
	// A verify sweep in progress: the last device ID verified.
	sweeping  bool
	sweepFrom string
	// Change reads: the newest report received seen, the wall time of the
	// previous pass, reports already handled within the overlap, the
	// newest attestation id, enrolment and revocation times seen.
	recvMark  int64
	lastPass  int64
	recvSeen  map[reportKey]int64
	attestID  int64
	enrolMark int64
	revMark   int64

	// pending holds re-derived view rows not yet written to device_view.
	pending map[string]viewRow

	dirtyMu sync.Mutex // apart from mu: writers never wait for a refresh
	dirty   map[string]struct{}
}

// markDirty records that this process changed device id; the next read
// reloads it. The write paths call it after their commit.
func (s *sqlStore) markDirty(id string) {
	v := &s.view
	v.dirtyMu.Lock()
	if v.dirty == nil {
		v.dirty = map[string]struct{}{}
	}
	v.dirty[id] = struct{}{}
	v.dirtyMu.Unlock()
}

func (v *viewState) takeDirty() map[string]struct{} {
	v.dirtyMu.Lock()
	defer v.dirtyMu.Unlock()
	d := v.dirty
	v.dirty = nil
	return d
}

// restoreDirty puts back IDs a failed refresh took.
func (v *viewState) restoreDirty(ids map[string]struct{}) {
	if len(ids) == 0 {
		return
	}
	v.dirtyMu.Lock()
	defer v.dirtyMu.Unlock()
	if v.dirty == nil {
		v.dirty = map[string]struct{}{}
	}
	for id := range ids {
		v.dirty[id] = struct{}{}
	}
}

// refreshView brings the fleet index up to date: the devices this process
// wrote, those other hubs' writes touched, or everything on the first
// read, and those a verify scan finds different every verifyEvery. With
// write, it also writes the view rows it re-derived to device_view, for the
// SQL paths to read.
func (s *sqlStore) refreshView(ctx context.Context, write bool) error {
	v := &s.view
	v.mu.Lock()
	defer v.mu.Unlock()
	// changed starts as this process's writes and gathers what the change
	// reads and the verify sweep find; if the refresh fails, all of it is
	// kept for the next one, since the marks have moved past it.
	changed := v.takeDirty()
	if changed == nil {
		changed = map[string]struct{}{}
	}
	if err := s.refreshLocked(ctx, v, changed); err != nil {
		v.restoreDirty(changed)
		return fmt.Errorf("refresh fleet view: %w", err)
	}
	if write && len(v.pending) > 0 {
		rows := make([]viewRow, 0, len(v.pending))
		for _, r := range v.pending {
			rows = append(rows, r)
		}
		if err := s.putViewRows(ctx, rows); err != nil {
			return fmt.Errorf("refresh fleet view: %w", err)
		}
		v.pending = nil
	}
	return nil
}

func (s *sqlStore) refreshLocked(ctx context.Context, v *viewState, changed map[string]struct{}) error {
	now := time.Now()
	full := !v.loaded
	if err := s.readChanges(ctx, v, now, changed); err != nil {
		return err
	}
	if !full && !v.sweeping && now.Sub(v.checkAt) >= verifyEvery {
		v.sweeping, v.sweepFrom, v.checkAt = true, "", now
	}
	if !full && v.sweeping {
		last, err := s.verifyIndex(ctx, v, v.sweepFrom, changed)
		if err != nil {
			return err
		}
		v.sweeping, v.sweepFrom = last != "", last
	}
	if full || len(changed) > fullAbove {
		entries, err := s.loadEntries(ctx, v, nil)
		if err != nil {
			return err
		}
		v.entries, v.pos = entries, make(map[string]int, len(entries))
		for i, e := range entries {
			v.pos[e.id] = i
		}
		v.loaded, v.checkAt, v.sweeping = true, now, false
		return nil
	}
	if len(changed) == 0 {
		return nil
	}
	ids := make([]string, 0, len(changed))
	for id := range changed {
		ids = append(ids, id)
	}
	entries, err := s.loadEntries(ctx, v, ids)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if i, ok := v.pos[e.id]; ok {
			v.entries[i] = e
			continue
		}
		v.pos[e.id] = len(v.entries)
		v.entries = append(v.entries, e)
	}
	return nil
}

// readChanges adds to changed the devices that writes since the last pass
// touched, as far as the database shows them (other hubs' writes
// included). On the first pass it sets the marks (each MAX is one index
// lookup); the full load that follows reads everything.
func (s *sqlStore) readChanges(ctx context.Context, v *viewState, now time.Time, changed map[string]struct{}) error {
	if !v.loaded {
		for _, m := range []struct {
			query string
			dst   *int64
		}{
			{`SELECT COALESCE(MAX(received), 0) FROM reports`, &v.recvMark},
			{`SELECT COALESCE(MAX(id), 0) FROM attestations`, &v.attestID},
			{`SELECT COALESCE(MAX(enrolled), 0) FROM devices`, &v.enrolMark},
			{`SELECT COALESCE(MAX(revoked), 0) FROM devices`, &v.revMark},
		} {
			if err := s.r.QueryRowContext(ctx, m.query).Scan(m.dst); err != nil {
				return fmt.Errorf("read change marks: %w", err)
			}
		}
	}

	// Reports: everything received after the mark, less the overlap.
	from := max(v.recvMark, v.lastPass) - int64(reportOverlap)
	st, err := s.prep(ctx, s.r, `SELECT device_id, seq, received FROM reports WHERE received > ?`)
	if err != nil {
		return err
	}
	rows, err := st.QueryContext(ctx, from)
	if err != nil {
		return fmt.Errorf("read new reports: %w", err)
	}
	if v.recvSeen == nil {
		v.recvSeen = map[reportKey]int64{}
	}
	for rows.Next() {
		var k reportKey
		var received int64
		if err := rows.Scan(&k.id, &k.seq, &received); err != nil {
			rows.Close()
			return fmt.Errorf("read new reports: %w", err)
		}
		if _, ok := v.recvSeen[k]; !ok {
			v.recvSeen[k] = received
			changed[k.id] = struct{}{}
		}
		v.recvMark = max(v.recvMark, received)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read new reports: %w", err)
	}
	v.lastPass = now.UnixNano()
	next := max(v.recvMark, v.lastPass) - int64(reportOverlap)
	for k, r := range v.recvSeen {
		if r <= next {
			delete(v.recvSeen, k)
		}
	}

	// Attestations: ids after the newest seen.
	st, err = s.prep(ctx, s.r, `SELECT id, device_id FROM attestations WHERE id > ?`)
	if err != nil {
		return err
	}
	rows, err = st.QueryContext(ctx, v.attestID)
	if err != nil {
		return fmt.Errorf("read new attestations: %w", err)
	}
	for rows.Next() {
		var id int64
		var dev string
		if err := rows.Scan(&id, &dev); err != nil {
			rows.Close()
			return fmt.Errorf("read new attestations: %w", err)
		}
		changed[dev] = struct{}{}
		v.attestID = max(v.attestID, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read new attestations: %w", err)
	}

	// Enrolments and revocations after the newest seen (both indexed).
	st, err = s.prep(ctx, s.r, `SELECT id, enrolled, revoked FROM devices WHERE enrolled > ? OR revoked > ?`)
	if err != nil {
		return err
	}
	rows, err = st.QueryContext(ctx, v.enrolMark, v.revMark)
	if err != nil {
		return fmt.Errorf("read new enrolments: %w", err)
	}
	for rows.Next() {
		var id string
		var enrolled, revoked int64
		if err := rows.Scan(&id, &enrolled, &revoked); err != nil {
			rows.Close()
			return fmt.Errorf("read new enrolments: %w", err)
		}
		changed[id] = struct{}{}
		v.enrolMark, v.revMark = max(v.enrolMark, enrolled), max(v.revMark, revoked)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read new enrolments: %w", err)
	}
	return nil
}

// verifyIndex checks the next verifySlice devices by ID after from: it adds
// to changed every device whose row differs from its entry in the columns
// writes move (a report moves latest_seq or last_seen, an attestation
// attest_time and attest_ok, an enrolment enrolled, a revocation revoked),
// and every device the index lacks. Devices that differ only because they
// were written since the change reads are reloaded too, which is harmless.
// It returns the last ID checked, or "" when the sweep is done.
func (s *sqlStore) verifyIndex(ctx context.Context, v *viewState, from string, changed map[string]struct{}) (string, error) {
	st, err := s.prep(ctx, s.r, `SELECT id, latest_seq, last_seen, attest_time, COALESCE(attest_ok, -1), enrolled, revoked
		FROM devices WHERE id > ? ORDER BY id LIMIT `+strconv.Itoa(verifySlice))
	if err != nil {
		return "", fmt.Errorf("verify fleet index: %w", err)
	}
	rows, err := st.QueryContext(ctx, from)
	if err != nil {
		return "", fmt.Errorf("verify fleet index: %w", err)
	}
	defer rows.Close()
	n, last := 0, ""
	for rows.Next() {
		var id string
		var seq, seen, attestTime, attestOK, enrolled, revoked int64
		if err := rows.Scan(&id, &seq, &seen, &attestTime, &attestOK, &enrolled, &revoked); err != nil {
			return "", fmt.Errorf("verify fleet index: %w", err)
		}
		n, last = n+1, id
		i, ok := v.pos[id]
		if !ok {
			changed[id] = struct{}{}
			continue
		}
		e := &v.entries[i]
		if e.latestSeq != seq || e.lastSeen != seen || e.attestTime != attestTime || int64(e.attestOK) != attestOK || e.enrolled != enrolled || e.revoked != revoked {
			changed[id] = struct{}{}
		}
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("verify fleet index: %w", err)
	}
	if n < verifySlice {
		return "", nil
	}
	return last, nil
}

const entryCols = `SELECT d.id, d.key_kind, d.enrolled, d.revoked, d.latest_seq, d.state, d.groups, d.last_seen, d.attest_ok, d.attest_time,
	v.seq, v.commit_attempted, v.commit_seen, v.update_state, v.drifted, v.clock_state, v.skew_abs, v.attest_ok, v.weak, v.labels
	FROM devices d LEFT JOIN device_view v ON v.id = d.id`

// loadChunk bounds the IDs in one IN list (SQLite allows 32766 parameters).
const loadChunk = 500

// loadEntries reads the devices in ids (all when ids is nil) joined with
// their view rows, re-deriving the view rows that are behind their device's
// latest report (kept in v.pending until written).
func (s *sqlStore) loadEntries(ctx context.Context, v *viewState, ids []string) ([]fleetEntry, error) {
	var out []fleetEntry
	read := func(query string, args ...any) error {
		rows, err := s.r.QueryContext(ctx, s.q(query), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			e, err := s.scanEntry(ctx, v, rows)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return rows.Err()
	}
	if ids == nil {
		v.intern = nil // drop strings no device uses any more
		if err := read(entryCols); err != nil {
			return nil, fmt.Errorf("load fleet: %w", err)
		}
	}
	for len(ids) > 0 {
		n := min(len(ids), loadChunk)
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		if err := read(entryCols+` WHERE d.id IN (?`+strings.Repeat(", ?", n-1)+`)`, args...); err != nil {
			return nil, fmt.Errorf("load %d devices: %w", n, err)
		}
		ids = ids[n:]
	}
	return out, nil
}

// scanEntry reads one device joined with its view row. If the view row is
// behind the device's latest report, the entry is built from the row
// derived from that report, which waits in v.pending to be written.
func (s *sqlStore) scanEntry(ctx context.Context, v *viewState, r scanner) (fleetEntry, error) {
	var e fleetEntry
	var keyKind string
	var attestOK, vseq, commitSeen, drifted, skewAbs, reportAttest, weak sql.NullInt64
	var attempted, updateState, labels, clockState sql.NullString
	if err := r.Scan(&e.id, &keyKind, &e.enrolled, &e.revoked, &e.latestSeq, &e.state, &e.groups, &e.lastSeen, &attestOK, &e.attestTime,
		&vseq, &attempted, &commitSeen, &updateState, &drifted, &clockState, &skewAbs, &reportAttest, &weak, &labels); err != nil {
		return fleetEntry{}, err
	}
	e.software = keyKind == "software"
	e.attestOK = tri(attestOK)
	if e.latestSeq > 0 && (!vseq.Valid || vseq.Int64 != e.latestSeq) {
		d, ok, err := s.deriveLatest(ctx, v, e.id, e.latestSeq, attempted, commitSeen)
		if err != nil {
			return fleetEntry{}, err
		}
		if ok {
			vseq = sql.NullInt64{Int64: d.seq, Valid: true}
			updateState = sql.NullString{String: d.ust, Valid: true}
			drifted = sql.NullInt64{Int64: int64(d.drifted), Valid: true}
			clockState, reportAttest = sql.NullString{String: d.clockState, Valid: true}, d.attestOK
			skewAbs = sql.NullInt64{Int64: d.skewAbs, Valid: true}
			weak = sql.NullInt64{Int64: int64(d.weak), Valid: true}
			labels = sql.NullString{String: d.labels, Valid: true}
		}
	}
	e.hasView = vseq.Valid
	e.updateState = updateState.String
	e.drifted = drifted.Int64 == 1
	e.clockState = clockState.String
	e.skewAbs = skewAbs.Int64
	e.reportAttestOK = tri(reportAttest)
	e.weak = weak.Int64 == 1
	e.labels = labels.String
	e.lid = s.lowerID(e.id)
	e.state, e.groups, e.labels, e.updateState = v.str(e.state), v.str(e.groups), v.str(e.labels), v.str(e.updateState)
	e.clockState = v.str(e.clockState)
	return e, nil
}

// deriveLatest returns device id's view row for report seq: the pending
// one if it is for seq, else derived from the stored report (and kept in
// v.pending). attempted and commitSeen are the stored view row's, so the
// commit keeps the time it was first seen. ok is false if the report is not
// visible yet (it commits with the device's latest_seq, so this should not
// happen); the device is then marked to be read again.
func (s *sqlStore) deriveLatest(ctx context.Context, v *viewState, id string, seq int64, attempted sql.NullString, commitSeen sql.NullInt64) (viewRow, bool, error) {
	prev, havePrev := v.pending[id]
	if havePrev && prev.seq == seq {
		return prev, true, nil
	}
	if havePrev {
		attempted, commitSeen = sql.NullString{String: prev.attempted, Valid: true}, sql.NullInt64{Int64: prev.commitSeen, Valid: true}
	}
	st, err := s.prep(ctx, s.r, `SELECT received, body FROM reports WHERE device_id = ? AND seq = ?`)
	if err != nil {
		return viewRow{}, false, err
	}
	var received int64
	var raw []byte
	err = st.QueryRowContext(ctx, id, seq).Scan(&received, &raw)
	if errors.Is(err, sql.ErrNoRows) {
		s.markDirty(id)
		return viewRow{}, false, nil
	}
	if err != nil {
		return viewRow{}, false, fmt.Errorf("latest report of device %q: %w", id, err)
	}
	d := deriveView(id, seq, received, raw)
	d.commitSeen = received
	if attempted.Valid && d.attempted == attempted.String && commitSeen.Int64 != 0 {
		d.commitSeen = commitSeen.Int64
	}
	if v.pending == nil {
		v.pending = map[string]viewRow{}
	}
	v.pending[id] = d
	return d, true, nil
}

func tri(n sql.NullInt64) int8 {
	if !n.Valid {
		return -1
	}
	if n.Int64 == 1 {
		return 1
	}
	return 0
}

// str interns the strings many devices share (states, group lists). The
// table starts over when it outgrows the fleet, so values no device holds
// any more do not pile up.
func (v *viewState) str(s string) string {
	if v.intern == nil || len(v.intern) > 4*len(v.entries)+1000 {
		v.intern = map[string]string{}
	}
	if i, ok := v.intern[s]; ok {
		return i
	}
	v.intern[s] = s
	return s
}

// lowerID is LOWER(id) as the backend computes it: SQLite folds ASCII only.
func (s *sqlStore) lowerID(id string) string {
	if s.d.name == "postgres" {
		return strings.ToLower(id)
	}
	b := []byte(nil)
	for i := 0; i < len(id); i++ {
		if c := id[i]; 'A' <= c && c <= 'Z' {
			if b == nil {
				b = []byte(id)
			}
			b[i] = c + 'a' - 'A'
		}
	}
	if b == nil {
		return id
	}
	return string(b)
}

// likeContains is `hay LIKE '%' || needle || '%'` with the needle's
// wildcards escaped: SQLite's LIKE ignores ASCII case (fold), PostgreSQL's
// does not. Bytewise matching is exact for UTF-8, where ASCII bytes never
// occur inside a multi-byte character.
func likeContains(hay, needle string, fold bool) bool {
	if !fold {
		return strings.Contains(hay, needle)
	}
	n := len(needle)
	for i := 0; i+n <= len(hay); i++ {
		if asciiEqualFold(hay[i:i+n], needle) {
			return true
		}
	}
	return false
}

func asciiEqualFold(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// filter bits, in the order of Filters.
var filterIndex = func() map[string]int {
	m := make(map[string]int, len(Filters))
	for i, f := range Filters {
		m[f] = i
	}
	return m
}()

// countIndex counts the index's devices per filter within q's group,
// label, search and revoked conditions, with the meaning filterSQL and
// baseWhere give them in SQL, NULLs included. q has its defaults.
func (v *viewState) countIndex(q FleetQuery, fold bool) FleetCounts {
	var group, label, search string
	if q.Group != "" {
		group = jsonString(q.Group)
	}
	if q.Label != "" {
		k, val, hasV := strings.Cut(q.Label, "=")
		label = jsonString(k) + ":"
		if hasV {
			label += jsonString(val)
		}
	}
	if q.Search != "" {
		search = strings.ToLower(q.Search)
	}
	offline := nanos(q.Now.Add(-q.OfflineAfter))
	maxSkew := int64(q.MaxSkew)
	n := make([]int, len(Filters))
	var sumSeq, maxSeen, maxAttest, maxEnrolled, nRevoked, maxRevoked int64
	iAll, iConv, iUpd, iDeg, iStall, iWait := filterIndex[FilterAll], filterIndex[FilterConverged], filterIndex[FilterUpdating],
		filterIndex[FilterDegraded], filterIndex[FilterStalled], filterIndex[FilterWaiting]
	iTrial, iRB, iDrift, iOff, iAtt := filterIndex[FilterTrial], filterIndex[FilterRolledBack], filterIndex[FilterDrifted], filterIndex[FilterOffline], filterIndex[FilterAttestFailed]
	iSkew, iUntrust, iWeak, iNever := filterIndex[FilterClockSkewed], filterIndex[FilterClockUntrust], filterIndex[FilterWeakIdentity], filterIndex[FilterNeverSeen]
	for i := range v.entries {
		e := &v.entries[i]
		if !q.Revoked && e.revoked != 0 {
			continue
		}
		if group != "" && !likeContains(e.groups, group, fold) {
			continue
		}
		if label != "" && (!e.hasView || !likeContains(e.labels, label, fold)) {
			continue
		}
		if search != "" && !likeContains(e.lid, search, fold) {
			continue
		}
		n[iAll]++
		switch e.state {
		case FilterConverged:
			n[iConv]++
		case FilterUpdating:
			n[iUpd]++
		case FilterDegraded:
			n[iDeg]++
		case FilterStalled:
			n[iStall]++
		case FilterWaiting:
			n[iWait]++
		}
		if e.hasView {
			switch e.updateState {
			case "trial":
				n[iTrial]++
			case "rolled-back":
				n[iRB]++
			}
			if e.drifted {
				n[iDrift]++
			}
			if isClockSkewed(e.clockState, e.skewAbs, maxSkew) {
				n[iSkew]++
			}
			if e.clockState == clockUntrusted {
				n[iUntrust]++
			}
		}
		if e.lastSeen < offline {
			n[iOff]++
		}
		if e.attestOK == 0 || e.attestOK == -1 && e.reportAttestOK == 0 {
			n[iAtt]++
		}
		if e.software || e.hasView && e.weak {
			n[iWeak]++
		}
		if e.latestSeq == 0 {
			n[iNever]++
		}
		sumSeq += e.latestSeq
		maxSeen, maxAttest, maxEnrolled = max(maxSeen, e.lastSeen), max(maxAttest, e.attestTime), max(maxEnrolled, e.enrolled)
		if e.revoked != 0 {
			nRevoked++
			maxRevoked = max(maxRevoked, e.revoked)
		}
	}
	out := FleetCounts{Counts: make(map[string]int, len(Filters))}
	for i, f := range Filters {
		out.Counts[f] = n[i]
	}
	out.Stamp = fleetStamp(out.Counts, sumSeq, maxSeen, maxAttest, maxEnrolled, nRevoked, maxRevoked)
	return out
}

// fleetStamp moves with anything a report, an attestation, an enrolment or
// a revocation changes, and with the clock as devices go offline.
func fleetStamp(counts map[string]int, sumSeq, maxSeen, maxAttest, maxEnrolled, nRevoked, maxRevoked int64) string {
	parts := []int64{sumSeq, maxSeen, maxAttest, maxEnrolled, nRevoked, maxRevoked, int64(counts[FilterAll]), int64(counts[FilterOffline])}
	b := make([]byte, 0, 8*20)
	for i, p := range parts {
		if i > 0 {
			b = append(b, '-')
		}
		b = strconv.AppendInt(b, p, 10)
	}
	return string(b)
}
