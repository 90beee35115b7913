package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/api"
)

// This file is the read side the fleet status page needs: a page of devices
// joined with what each one's latest report says, filtered, sorted and
// counted in SQL, the same on both backends.
//
// What the page filters and sorts on (commit, release, apps, drift, clock)
// lives inside the JSON body of each device's latest report. Parsing 10,000
// bodies per request is far too slow, so the view keeps a derived table,
// device_view (a numbered migration), with one row per device taken from its
// latest report. It is a cache: every read first brings the rows of changed
// devices up to date (only their bodies are parsed; see fleetindex.go for
// how changes are found), and its rows can be deleted at any time and are
// rebuilt on the next full load. The counts per filter come from an
// in-memory index kept alongside (fleetindex.go), not from SQL.

// Fleet filters: each names a predicate over a device; counts are per filter
// and a device may match several. The first ones after "all" are the device
// states of api.States, under the same names: one vocabulary for the agent,
// the API, the CLI and the page.
const (
	FilterAll          = "all"
	FilterConverged    = string(api.StateConverged)
	FilterUpdating     = string(api.StateUpdating)
	FilterDegraded     = string(api.StateDegraded)
	FilterStalled      = string(api.StateStalled)
	FilterWaiting      = string(api.StateWaiting)
	FilterTrial        = "trial"
	FilterRolledBack   = "rolled-back"
	FilterDrifted      = "drifted"
	FilterOffline      = "offline"
	FilterAttestFailed = "attest-failed"
	FilterClockSkewed  = "clock-skewed"
	FilterClockUntrust = "clock-untrusted"
	FilterWeakIdentity = "weak-identity"
	FilterNeverSeen    = "never-reported"
)

// Conditions are the filters that are not device states.
var Conditions = []string{FilterTrial, FilterRolledBack, FilterDrifted, FilterOffline, FilterAttestFailed, FilterClockSkewed,
	FilterClockUntrust, FilterWeakIdentity, FilterNeverSeen}

// Filters lists every filter, in the order the page shows them: all, each
// api.State, then the Conditions.
var Filters = func() []string {
	out := []string{FilterAll}
	for _, st := range api.States {
		out = append(out, string(st))
	}
	return append(out, Conditions...)
}()

// Sort keys.
var sortExprs = map[string]string{
	"id":       "d.id",
	"state":    "d.state",
	"seen":     "d.last_seen",
	"commit":   "COALESCE(v.commit_applied, '')",
	"release":  "COALESCE(v.release, '')",
	"apps":     "COALESCE(v.apps_total - v.apps_healthy, 0)",
	"skew":     "COALESCE(v.skew_abs, 0)",
	"attest":   "COALESCE(d.attest_ok, -1)",
	"enrolled": "d.enrolled",
}

// SortKeys lists the accepted FleetQuery.Sort values.
func SortKeys() []string {
	out := make([]string, 0, len(sortExprs))
	for k := range sortExprs {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ErrBadQuery is returned for an unknown filter or sort key.
var ErrBadQuery = errors.New("bad fleet query")

// FleetQuery selects, orders and pages the fleet. The zero value lists the
// first 50 unrevoked devices by ID.
type FleetQuery struct {
	Group  string // devices whose latest report lists this group
	Label  string // "key=value" or "key": devices whose latest report carries this label
	Search string // substring of the device ID
	Filter string // one of Filters; "" = all
	Sort   string // one of SortKeys; "" = id
	Desc   bool
	Offset int
	Limit  int // default 50, at most 1000
	// Now, OfflineAfter and MaxSkew decide the offline and clock-skewed
	// filters (defaults: time.Now, 1h, 2s, the fleet default max_skew).
	Now          time.Time
	OfflineAfter time.Duration
	MaxSkew      time.Duration
	// Revoked includes revoked devices.
	Revoked bool
}

// FleetRow is one device with what its latest report says.
type FleetRow struct {
	Device
	Reported    bool   // has a report in the view
	Attempted   string // last attempted commit
	Commit      string // last applied commit
	SpecHash    string
	Release     string // running OS release
	Target      string // release being installed
	Slot        string
	UpdateState string
	UpdateSince time.Time
	AppsTotal   int
	AppsHealthy int
	Drifted     bool
	// ClockTrusted is nil when the report said nothing about the clock.
	ClockTrusted *bool
	// ClockState is the reported clock state (ok, skewed, unknown,
	// untrusted); "" when the report said nothing about the clock.
	ClockState string
	Skew       time.Duration
	// ReportAttestOK is the device's own view of its last attestation; nil if none.
	ReportAttestOK *bool
	Weak           bool // software key (enrolment or report)
	ProblemReason  string
	ProblemMessage string
	Labels         map[string]string
	Offline        bool // last seen before Now-OfflineAfter
}

// FleetPage is one page of the fleet and the number of devices matching.
type FleetPage struct {
	Rows  []FleetRow
	Total int
}

// FleetCounts counts devices per filter within a query's group, label and
// search (its Filter, Sort and paging are ignored). Stamp changes whenever
// anything the page shows may have changed, so a poller refetches only then.
type FleetCounts struct {
	Counts map[string]int
	Stamp  string
}

// RolloutCount is how many devices of a group are converged on, in progress
// towards, or failed on one commit or release.
type RolloutCount struct {
	Group                         string
	Converged, InProgress, Failed int
}

// RolloutItem is one commit or release and its counts per group ("" = no
// group). A device in several groups counts in each of them, and once in
// Total.
type RolloutItem struct {
	Kind   string // commit | release
	Name   string
	Groups []RolloutCount
	Total  RolloutCount // every device once; Group is ""
}

// Rollout is the fleet's progress on the newest commit and each OS release.
type Rollout struct {
	NewestCommit *RolloutItem
	Releases     []RolloutItem
}

// Viewer is the status page's read side, implemented by both backends.
type Viewer interface {
	FleetPage(ctx context.Context, q FleetQuery) (FleetPage, error)
	FleetCounts(ctx context.Context, q FleetQuery) (FleetCounts, error)
	FleetDevice(ctx context.Context, id string, q FleetQuery) (FleetRow, error)
	Rollout(ctx context.Context) (Rollout, error)
}

// AsViewer returns the read side of a store opened by Open.
func AsViewer(s Store) (Viewer, error) {
	if v, ok := s.(Viewer); ok {
		return v, nil
	}
	return nil, fmt.Errorf("store %T has no fleet view", s)
}

// viewBody is what the view reads from a report. Labels are read if the
// agent sends them, ahead of the wire type carrying them.
type viewBody struct {
	api.Status
	Labels map[string]string `json:"labels,omitempty"`
}

type viewRow struct {
	id                                   string
	seq, received                        int64
	attempted, applied                   string
	commitSeen                           int64
	specHash, release, target, slot, ust string
	since                                int64
	appsTotal, appsHealthy, drifted      int
	clockTrusted                         sql.NullInt64
	clockState                           string
	skew, skewAbs                        int64
	attestOK                             sql.NullInt64
	weak                                 int
	problemReason, problemMessage        string
	labels                               string
}

// Clock states as the agent reports them (api.ClockStatus.State).
const (
	clockOK        = "ok"
	clockSkewed    = "skewed"
	clockUnknown   = "unknown"
	clockUntrusted = "untrusted"
)

// reportedClockState is the report's clock state; an agent that sent only
// Trusted said untrusted when it was anything but ok.
func reportedClockState(c *api.ClockStatus) string {
	switch c.State {
	case clockOK, clockSkewed, clockUnknown, clockUntrusted:
		return c.State
	}
	if c.Trusted {
		return clockOK
	}
	return clockUntrusted
}

// isClockSkewed is the clock-skewed filter: the device says skewed, or its
// measured offset is beyond the page's bound. An unknown clock (no time
// server answered) or an untrusted one is not a skewed one.
func isClockSkewed(state string, skewAbs, maxSkew int64) bool {
	return state == clockSkewed || state == clockOK && skewAbs > maxSkew
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func deriveView(id string, seq, received int64, body []byte) viewRow {
	r := viewRow{id: id, seq: seq, received: received, labels: "{}"}
	var b viewBody
	if err := json.Unmarshal(body, &b); err != nil {
		// A stored report was validated on ingest; a body that does not
		// parse now is shown as a device with nothing known.
		return r
	}
	r.attempted, r.applied, r.specHash = b.Commit.Attempted, b.Commit.Applied, b.Commit.SpecHash
	if u := b.Update; u != nil {
		r.release, r.target, r.slot, r.ust, r.since = u.Version, u.Target, u.Slot, u.State, nanos(u.Since)
	}
	r.appsTotal = len(b.Apps)
	for _, a := range b.Apps {
		if a.Health == "healthy" || (a.Health == "" || a.Health == "none") && a.State == "running" {
			r.appsHealthy++
		}
		if a.Drift != "" {
			r.drifted = 1
		}
	}
	if c := b.Clock; c != nil {
		r.clockTrusted = sql.NullInt64{Int64: int64(b2i(c.Trusted)), Valid: true}
		r.clockState = reportedClockState(c)
		r.skew = int64(c.Skew)
		r.skewAbs = r.skew
		if r.skewAbs < 0 {
			r.skewAbs = -r.skewAbs
		}
	}
	if a := b.Attest; a != nil {
		r.attestOK = sql.NullInt64{Int64: int64(b2i(a.OK)), Valid: true}
		r.weak = b2i(a.Weak)
	}
	if p := b.Problem; p != nil {
		r.problemReason, r.problemMessage = p.Reason, p.Message
	}
	if len(b.Labels) > 0 {
		lb, _ := json.Marshal(b.Labels)
		r.labels = string(lb)
	}
	return r
}

// putViewRows writes re-derived view rows. A row never moves back to an
// older report (another hub may have written a newer one meanwhile).
func (s *sqlStore) putViewRows(ctx context.Context, changed []viewRow) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write fleet view: %w", err)
	}
	defer tx.Rollback()
	up, err := s.txStmt(ctx, tx, `INSERT INTO device_view (id, seq, received, commit_attempted, commit_applied, commit_seen, spec_hash, release, target, slot,
		update_state, update_since, apps_total, apps_healthy, drifted, clock_trusted, skew, skew_abs, attest_ok, weak, problem_reason, problem_message, labels, clock_state)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, received = excluded.received, commit_attempted = excluded.commit_attempted,
			commit_applied = excluded.commit_applied, commit_seen = excluded.commit_seen, spec_hash = excluded.spec_hash,
			release = excluded.release, target = excluded.target, slot = excluded.slot, update_state = excluded.update_state,
			update_since = excluded.update_since, apps_total = excluded.apps_total, apps_healthy = excluded.apps_healthy,
			drifted = excluded.drifted, clock_trusted = excluded.clock_trusted, skew = excluded.skew, skew_abs = excluded.skew_abs,
			attest_ok = excluded.attest_ok, weak = excluded.weak, problem_reason = excluded.problem_reason,
			problem_message = excluded.problem_message, labels = excluded.labels, clock_state = excluded.clock_state
		WHERE device_view.seq < excluded.seq`)
	if err != nil {
		return fmt.Errorf("write fleet view: %w", err)
	}
	for _, v := range changed {
		if _, err := up.ExecContext(ctx, v.id, v.seq, v.received, v.attempted, v.applied, v.commitSeen, v.specHash, v.release, v.target, v.slot,
			v.ust, v.since, v.appsTotal, v.appsHealthy, v.drifted, v.clockTrusted, v.skew, v.skewAbs, v.attestOK, v.weak,
			v.problemReason, v.problemMessage, v.labels, v.clockState); err != nil {
			return fmt.Errorf("write fleet view of device %q: %w", v.id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write fleet view: commit: %w", err)
	}
	return nil
}

func (q *FleetQuery) defaults() error {
	if q.Now.IsZero() {
		q.Now = time.Now()
	}
	if q.OfflineAfter <= 0 {
		q.OfflineAfter = time.Hour
	}
	if q.MaxSkew <= 0 {
		q.MaxSkew = 2 * time.Second
	}
	if q.Limit <= 0 {
		q.Limit = 50
	}
	if q.Limit > 1000 {
		q.Limit = 1000
	}
	if q.Offset < 0 {
		q.Offset = 0
	}
	if q.Filter == "" {
		q.Filter = FilterAll
	}
	if q.Sort == "" {
		q.Sort = "id"
	}
	if _, ok := sortExprs[q.Sort]; !ok {
		return fmt.Errorf("sort %q (want one of %s): %w", q.Sort, strings.Join(SortKeys(), ", "), ErrBadQuery)
	}
	for _, f := range Filters {
		if f == q.Filter {
			return nil
		}
	}
	return fmt.Errorf("filter %q (want one of %s): %w", q.Filter, strings.Join(Filters, ", "), ErrBadQuery)
}

// filterSQL returns the predicate for a filter and its arguments.
func filterSQL(f string, q FleetQuery) (string, []any) {
	if api.State(f).Valid() {
		return "d.state = ?", []any{f}
	}
	switch f {
	case FilterTrial:
		return "v.update_state = 'trial'", nil
	case FilterRolledBack:
		return "v.update_state = 'rolled-back'", nil
	case FilterDrifted:
		return "v.drifted = 1", nil
	case FilterOffline:
		return "d.last_seen < ?", []any{nanos(q.Now.Add(-q.OfflineAfter))}
	case FilterAttestFailed:
		return "(d.attest_ok = 0 OR (d.attest_ok IS NULL AND v.attest_ok = 0))", nil
	case FilterClockSkewed:
		return "(v.clock_state = 'skewed' OR (v.clock_state = 'ok' AND v.skew_abs > ?))", []any{int64(q.MaxSkew)}
	case FilterClockUntrust:
		return "v.clock_state = 'untrusted'", nil
	case FilterWeakIdentity:
		return "(d.key_kind = 'software' OR v.weak = 1)", nil
	case FilterNeverSeen:
		return "d.latest_seq = 0", nil
	}
	return "1 = 1", nil
}

// likeEscape escapes LIKE wildcards; queries use ESCAPE '!'.
func likeEscape(s string) string {
	r := strings.NewReplacer("!", "!!", "%", "!%", "_", "!_")
	return r.Replace(s)
}

// jsonString is s as it appears inside a JSON document.
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// baseWhere is the query's group, label, search and revoked conditions.
func baseWhere(q FleetQuery) (string, []any) {
	var conds []string
	var args []any
	if !q.Revoked {
		conds = append(conds, "d.revoked = 0")
	}
	if q.Group != "" {
		conds = append(conds, "d.groups LIKE ? ESCAPE '!'")
		args = append(args, "%"+likeEscape(jsonString(q.Group))+"%")
	}
	if q.Label != "" {
		k, v, hasV := strings.Cut(q.Label, "=")
		pat := jsonString(k) + ":"
		if hasV {
			pat += jsonString(v)
		}
		conds = append(conds, "v.labels LIKE ? ESCAPE '!'")
		args = append(args, "%"+likeEscape(pat)+"%")
	}
	if q.Search != "" {
		conds = append(conds, "LOWER(d.id) LIKE ? ESCAPE '!'")
		args = append(args, "%"+likeEscape(strings.ToLower(q.Search))+"%")
	}
	if len(conds) == 0 {
		return "1 = 1", nil
	}
	return strings.Join(conds, " AND "), args
}

const viewCols = `, v.id IS NOT NULL, COALESCE(v.commit_attempted, ''), COALESCE(v.commit_applied, ''), COALESCE(v.spec_hash, ''),
	COALESCE(v.release, ''), COALESCE(v.target, ''), COALESCE(v.slot, ''), COALESCE(v.update_state, ''), COALESCE(v.update_since, 0),
	COALESCE(v.apps_total, 0), COALESCE(v.apps_healthy, 0), COALESCE(v.drifted, 0), v.clock_trusted, COALESCE(v.skew, 0), v.attest_ok,
	COALESCE(v.weak, 0), COALESCE(v.problem_reason, ''), COALESCE(v.problem_message, ''), COALESCE(v.labels, '{}'), COALESCE(v.clock_state, '')`

func scanFleetRow(r scanner, q FleetQuery) (FleetRow, error) {
	var fr FleetRow
	var d Device
	var notAfter, enrolled, revoked, lastSeen, attestTime, latest, since, skew int64
	var groups, labels string
	var attestOK, attestPCRs, clockTrusted, reportAttest sql.NullInt64
	var reported bool
	var drifted, weak int
	err := r.Scan(&d.ID, &d.KeyKind, &d.CertSerial, &notAfter, &enrolled, &revoked, &latest, &d.State, &groups, &lastSeen, &attestOK, &attestTime, &d.AK, &d.Relay, &attestPCRs,
		&reported, &fr.Attempted, &fr.Commit, &fr.SpecHash, &fr.Release, &fr.Target, &fr.Slot, &fr.UpdateState, &since,
		&fr.AppsTotal, &fr.AppsHealthy, &drifted, &clockTrusted, &skew, &reportAttest, &weak, &fr.ProblemReason, &fr.ProblemMessage, &labels, &fr.ClockState)
	if err != nil {
		return FleetRow{}, err
	}
	d.AttestPCRs = attestPCRs.Valid && attestPCRs.Int64 == 1
	d.CertNotAfter, d.Enrolled, d.Revoked, d.LastSeen, d.AttestTime = fromNanos(notAfter), fromNanos(enrolled), fromNanos(revoked), fromNanos(lastSeen), fromNanos(attestTime)
	d.LatestSeq = uint64(latest)
	d.Groups = parseList(groups)
	if attestOK.Valid {
		ok := attestOK.Int64 == 1
		d.AttestOK = &ok
	}
	fr.Device = d
	fr.Reported = reported
	fr.UpdateSince = fromNanos(since)
	fr.Drifted = drifted == 1
	if clockTrusted.Valid {
		ok := clockTrusted.Int64 == 1
		fr.ClockTrusted = &ok
	}
	fr.Skew = time.Duration(skew)
	if reportAttest.Valid {
		ok := reportAttest.Int64 == 1
		fr.ReportAttestOK = &ok
	}
	fr.Weak = weak == 1 || d.KeyKind == "software"
	if labels != "{}" && labels != "" {
		_ = json.Unmarshal([]byte(labels), &fr.Labels)
	}
	fr.Offline = d.LastSeen.Before(q.Now.Add(-q.OfflineAfter))
	return fr, nil
}

// FleetPage returns one page of devices matching q.
func (s *sqlStore) FleetPage(ctx context.Context, q FleetQuery) (FleetPage, error) {
	if err := q.defaults(); err != nil {
		return FleetPage{}, err
	}
	if err := s.refreshView(ctx, true); err != nil {
		return FleetPage{}, err
	}
	where, args := baseWhere(q)
	fw, fargs := filterSQL(q.Filter, q)
	where += " AND " + fw
	args = append(args, fargs...)
	from := ` FROM devices d LEFT JOIN device_view v ON v.id = d.id WHERE ` + where
	var page FleetPage
	if err := s.r.QueryRowContext(ctx, s.q(`SELECT COUNT(*)`+from), args...).Scan(&page.Total); err != nil {
		return FleetPage{}, fmt.Errorf("fleet page: count: %w", err)
	}
	dir := " ASC"
	if q.Desc {
		dir = " DESC"
	}
	order := sortExprs[q.Sort] + dir
	if q.Sort != "id" {
		order += ", d.id ASC"
	}
	cols := "d." + strings.ReplaceAll(deviceCols, ", ", ", d.")
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT `+cols+viewCols+from+` ORDER BY `+order+` LIMIT ? OFFSET ?`), append(args, q.Limit, q.Offset)...)
	if err != nil {
		return FleetPage{}, fmt.Errorf("fleet page: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		fr, err := scanFleetRow(rows, q)
		if err != nil {
			return FleetPage{}, fmt.Errorf("fleet page: %w", err)
		}
		page.Rows = append(page.Rows, fr)
	}
	if err := rows.Err(); err != nil {
		return FleetPage{}, fmt.Errorf("fleet page: %w", err)
	}
	return page, nil
}

// FleetDevice returns one device's row, or ErrNotFound. Revoked devices are included.
func (s *sqlStore) FleetDevice(ctx context.Context, id string, q FleetQuery) (FleetRow, error) {
	if err := q.defaults(); err != nil {
		return FleetRow{}, err
	}
	if err := s.refreshView(ctx, true); err != nil {
		return FleetRow{}, err
	}
	cols := "d." + strings.ReplaceAll(deviceCols, ", ", ", d.")
	fr, err := scanFleetRow(s.r.QueryRowContext(ctx, s.q(`SELECT `+cols+viewCols+` FROM devices d LEFT JOIN device_view v ON v.id = d.id WHERE d.id = ?`), id), q)
	if errors.Is(err, sql.ErrNoRows) {
		return FleetRow{}, fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return FleetRow{}, fmt.Errorf("device %q: %w", id, err)
	}
	return fr, nil
}

// FleetCounts counts devices per filter from the in-memory fleet index
// (see fleetindex.go), after bringing it up to date.
func (s *sqlStore) FleetCounts(ctx context.Context, q FleetQuery) (FleetCounts, error) {
	q.Filter, q.Sort = "", ""
	if err := q.defaults(); err != nil {
		return FleetCounts{}, err
	}
	if err := s.refreshView(ctx, false); err != nil {
		return FleetCounts{}, err
	}
	s.view.mu.Lock()
	defer s.view.mu.Unlock()
	return s.view.countIndex(q, s.d.name == "sqlite"), nil
}

// FleetCountsSQL counts like FleetCounts but with one SQL scan over
// devices joined with device_view instead of the in-memory index: it is
// the definition the index must agree with, and the conformance suite
// compares the two. It is not on Viewer; reach it by type assertion.
func (s *sqlStore) FleetCountsSQL(ctx context.Context, q FleetQuery) (FleetCounts, error) {
	q.Filter, q.Sort = "", ""
	if err := q.defaults(); err != nil {
		return FleetCounts{}, err
	}
	if err := s.refreshView(ctx, true); err != nil {
		return FleetCounts{}, err
	}
	where, wargs := baseWhere(q)
	var sel []string
	var args []any
	for _, f := range Filters {
		p, pargs := filterSQL(f, q)
		sel = append(sel, "COALESCE(SUM(CASE WHEN "+p+" THEN 1 ELSE 0 END), 0)")
		args = append(args, pargs...)
	}
	sel = append(sel, "COALESCE(SUM(d.latest_seq), 0)", "COALESCE(MAX(d.last_seen), 0)", "COALESCE(MAX(d.attest_time), 0)",
		"COALESCE(MAX(d.enrolled), 0)", "COALESCE(SUM(CASE WHEN d.revoked <> 0 THEN 1 ELSE 0 END), 0)", "COALESCE(MAX(d.revoked), 0)")
	args = append(args, wargs...)
	query := `SELECT ` + strings.Join(sel, ", ") + ` FROM devices d LEFT JOIN device_view v ON v.id = d.id WHERE ` + where
	n := make([]int64, len(Filters)+6)
	dst := make([]any, len(n))
	for i := range n {
		dst[i] = &n[i]
	}
	if err := s.r.QueryRowContext(ctx, s.q(query), args...).Scan(dst...); err != nil {
		return FleetCounts{}, fmt.Errorf("fleet counts: %w", err)
	}
	out := FleetCounts{Counts: make(map[string]int, len(Filters))}
	for i, f := range Filters {
		out.Counts[f] = int(n[i])
	}
	st := n[len(Filters):]
	out.Stamp = fleetStamp(out.Counts, st[0], st[1], st[2], st[3], st[4], st[5])
	return out, nil
}

// Rollout counts, per group, the devices converged on, in progress towards
// or failed on the newest commit (the attempted commit most recently first
// seen) and on each OS release any device runs or installs.
func (s *sqlStore) Rollout(ctx context.Context) (Rollout, error) {
	if err := s.refreshView(ctx, true); err != nil {
		return Rollout{}, err
	}
	var out Rollout
	var newest string
	err := s.r.QueryRowContext(ctx, `SELECT commit_attempted FROM device_view v JOIN devices d ON d.id = v.id
		WHERE d.revoked = 0 AND commit_attempted <> '' ORDER BY commit_seen DESC, commit_attempted LIMIT 1`).Scan(&newest)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return Rollout{}, fmt.Errorf("rollout: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT d.groups, d.state, v.commit_attempted, v.commit_applied, v.release, v.target, v.update_state
		FROM devices d JOIN device_view v ON v.id = d.id WHERE d.revoked = 0`)
	if err != nil {
		return Rollout{}, fmt.Errorf("rollout: %w", err)
	}
	defer rows.Close()
	type key struct{ kind, name, group string }
	counts := map[key]*RolloutCount{}
	totals := map[key]*RolloutCount{} // group ""
	add := func(kind, name string, groups []string, f func(c *RolloutCount)) {
		if len(groups) == 0 {
			groups = []string{""}
		}
		tk := key{kind, name, ""}
		if totals[tk] == nil {
			totals[tk] = &RolloutCount{}
		}
		f(totals[tk])
		for _, g := range groups {
			k := key{kind, name, g}
			c := counts[k]
			if c == nil {
				c = &RolloutCount{Group: g}
				counts[k] = c
			}
			f(c)
		}
	}
	for rows.Next() {
		var groupsJSON, state, attempted, applied, release, target, ust string
		if err := rows.Scan(&groupsJSON, &state, &attempted, &applied, &release, &target, &ust); err != nil {
			return Rollout{}, fmt.Errorf("rollout: %w", err)
		}
		groups := parseList(groupsJSON)
		failed := state == string(api.StateStalled) || state == string(api.StateDegraded)
		if newest != "" && (attempted == newest || applied == newest) {
			add("commit", newest, groups, func(c *RolloutCount) {
				switch {
				case applied == newest && state == string(api.StateConverged):
					c.Converged++
				case failed:
					c.Failed++
				default:
					c.InProgress++
				}
			})
		}
		switch {
		case target != "" && target != release:
			add("release", target, groups, func(c *RolloutCount) {
				if ust == "rolled-back" {
					c.Failed++
				} else {
					c.InProgress++
				}
			})
		case release != "":
			add("release", release, groups, func(c *RolloutCount) {
				if ust == "trial" || ust == "rebooting" || ust == "installed" || ust == "downloading" {
					c.InProgress++
				} else {
					c.Converged++
				}
			})
		}
	}
	if err := rows.Err(); err != nil {
		return Rollout{}, fmt.Errorf("rollout: %w", err)
	}
	items := map[key]*RolloutItem{}
	for k, c := range counts {
		ik := key{k.kind, k.name, ""}
		it := items[ik]
		if it == nil {
			it = &RolloutItem{Kind: k.kind, Name: k.name, Total: *totals[ik]}
			items[ik] = it
		}
		it.Groups = append(it.Groups, *c)
	}
	for _, it := range items {
		sort.Slice(it.Groups, func(i, j int) bool { return it.Groups[i].Group < it.Groups[j].Group })
		if it.Kind == "commit" {
			out.NewestCommit = it
		} else {
			out.Releases = append(out.Releases, *it)
		}
	}
	sort.Slice(out.Releases, func(i, j int) bool { return out.Releases[i].Name > out.Releases[j].Name })
	return out, nil
}
