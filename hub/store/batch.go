package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reports arriving together are written together (group commit), each
// keeping its own result; a report refused for its device (unknown, revoked)
// writes nothing and does not affect the others.
//
// SQLite has one writer, so a batch is one transaction: the per-transaction
// cost (WAL frame writes, locking) is paid once per batch instead of once
// per report. On PostgreSQL a batch is one statement over arrays of reports
// (see qPutBatchPG): one round trip, one plan, one commit for the lot, where
// the database's own per-statement work was most of the cost of a report.

const maxBatch = 256

type putReq struct {
	ctx  context.Context
	r    Report
	done chan putResp
}

type putResp struct {
	res PutResult
	err error
}

// writeFunc stores batch and returns each report's result, in order. An
// error fails the whole batch.
type writeFunc func(ctx context.Context, batch []*putReq) ([]putResp, error)

type batcher struct {
	write writeFunc
	reqs  chan *putReq
	quit  chan struct{}
	wg    sync.WaitGroup
}

// newBatcher starts SQLite's group commit: one writer, as SQLite has.
func newBatcher(s *sqlStore) *batcher { return startBatcher(1, s.writeSQLite) }

// startBatcher starts writers goroutines, each taking what is queued when it
// is free: while one batch is being written the next one gathers.
func startBatcher(writers int, write writeFunc) *batcher {
	b := &batcher{write: write, reqs: make(chan *putReq, maxBatch), quit: make(chan struct{})}
	for range writers {
		b.wg.Add(1)
		go b.run()
	}
	return b
}

var errClosed = errors.New("store closed")

func (b *batcher) put(ctx context.Context, r Report) (PutResult, error) {
	req := &putReq{ctx: ctx, r: r, done: make(chan putResp, 1)}
	select {
	case b.reqs <- req:
	case <-ctx.Done():
		return PutResult{}, ctx.Err()
	case <-b.quit:
		return PutResult{}, errClosed
	}
	select {
	case resp := <-req.done:
		return resp.res, resp.err
	case <-ctx.Done():
		// The report may still be written; a resend is a harmless duplicate.
		return PutResult{}, ctx.Err()
	}
}

func (b *batcher) close() {
	close(b.quit)
	b.wg.Wait()
}

func (b *batcher) run() {
	defer b.wg.Done()
	batch := make([]*putReq, 0, maxBatch)
	for {
		select {
		case <-b.quit:
			return
		case req := <-b.reqs:
			batch = append(batch[:0], req)
		}
		b.fill(&batch)
		if len(batch) < maxBatch {
			// Let handlers that are running finish decoding their reports
			// and join this batch: one statement for more reports.
			runtime.Gosched()
			b.fill(&batch)
		}
		b.writeBatch(batch)
	}
}

// fill adds what is queued to batch, up to maxBatch.
func (b *batcher) fill(batch *[]*putReq) {
	for len(*batch) < maxBatch {
		select {
		case req := <-b.reqs:
			*batch = append(*batch, req)
		default:
			return
		}
	}
}

// writeBatch writes the batch's live requests and answers every request.
// A database error fails every report in the batch (nothing of it is
// committed); the callers retry.
func (b *batcher) writeBatch(batch []*putReq) {
	live := batch[:0:0]
	for _, req := range batch {
		if err := req.ctx.Err(); err != nil {
			req.done <- putResp{err: err}
			continue
		}
		live = append(live, req)
	}
	if len(live) == 0 {
		return
	}
	// The batch outlives any one caller's context; each caller still stops
	// waiting when its own context ends.
	resps, err := b.write(context.WithoutCancel(live[0].ctx), live)
	for i, req := range live {
		if err != nil {
			req.done <- putResp{err: fmt.Errorf("batch of %d: %w", len(live), err)}
			continue
		}
		req.done <- resps[i]
	}
}

// writeSQLite stores a batch in one transaction.
func (s *sqlStore) writeSQLite(ctx context.Context, batch []*putReq) ([]putResp, error) {
	resps := make([]putResp, len(batch))
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	for i, req := range batch {
		res, err := s.putInTx(ctx, tx, req.r)
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrRevoked) {
			return nil, err
		}
		resps[i] = putResp{res, err}
	}
	return resps, tx.Commit()
}

// qPutBatchPG is putInTx's work for many reports in one statement, so a
// batch costs one round trip to PostgreSQL: lock the devices' rows (in ID
// order, so concurrent batches cannot deadlock), insert each report unless
// its device is unknown or revoked or its (device, seq) exists, and move each
// device's current state forward only for a newer seq. A device appears at
// most once per statement (writePG splits the batch), so every join below
// matches one row per device. It answers one row per report: the device's
// revoked mark and latest seq before (NULL if unknown) and its latest seq
// after (NULL unless the report was inserted).
const qPutBatchPG = `WITH input AS (
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::bytea[], $7::text[])
		AS t(id, seq, time, received, state, body, groups)
), d AS (
	SELECT id, revoked, latest_seq FROM devices WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
), ins AS (
	INSERT INTO reports (device_id, seq, time, received, state, body)
	SELECT i.id, i.seq, i.time, i.received, i.state, i.body FROM input i JOIN d ON d.id = i.id WHERE d.revoked = 0
	ON CONFLICT (device_id, seq) DO NOTHING
	RETURNING device_id
), up AS (
	UPDATE devices SET
		latest_seq = GREATEST(devices.latest_seq, i.seq),
		state = CASE WHEN i.seq > devices.latest_seq THEN i.state ELSE devices.state END,
		groups = CASE WHEN i.seq > devices.latest_seq THEN i.groups ELSE devices.groups END,
		last_seen = i.received
	FROM input i JOIN ins ON ins.device_id = i.id
	WHERE devices.id = i.id
	RETURNING devices.id, devices.latest_seq
)
SELECT i.id, d.revoked, d.latest_seq, up.latest_seq FROM input i LEFT JOIN d ON d.id = i.id LEFT JOIN up ON up.id = i.id`

// writePG stores a batch on PostgreSQL: one statement per round of reports
// with distinct devices (usually one round). Each statement commits on its
// own; a failed one fails the batch, and the callers' resends of reports an
// earlier round stored are acknowledged as duplicates.
func (s *pgStore) writePG(ctx context.Context, batch []*putReq) ([]putResp, error) {
	ctx, cancel := context.WithTimeout(ctx, batchTimeout)
	defer cancel()
	conn, err := s.writers.get(ctx)
	if err != nil {
		return nil, err
	}
	resps := make([]putResp, len(batch))
	rest := make([]int, len(batch))
	for i := range rest {
		rest[i] = i
	}
	for len(rest) > 0 {
		round := make(map[string]int, len(rest)) // device -> index in batch
		var later []int
		n := len(rest)
		ids, bodies := make([]string, 0, n), make([][]byte, 0, n)
		seqs, times, recv := make([]int64, 0, n), make([]int64, 0, n), make([]int64, 0, n)
		states, groups := make([]string, 0, n), make([]string, 0, n)
		for _, i := range rest {
			r := batch[i].r
			if _, dup := round[r.DeviceID]; dup {
				later = append(later, i)
				continue
			}
			round[r.DeviceID] = i
			ids, seqs, times, recv = append(ids, r.DeviceID), append(seqs, int64(r.Seq)), append(times, nanos(r.Time)), append(recv, nanos(r.Received))
			states, bodies, groups = append(states, r.State), append(bodies, r.Body), append(groups, jsonList(r.Groups))
		}
		if err := putRoundPG(ctx, conn, round, resps, ids, seqs, times, recv, states, bodies, groups); err != nil {
			s.writers.put(conn, err)
			return nil, err
		}
		rest = later
	}
	s.writers.put(conn, nil)
	return resps, nil
}

// batchTimeout bounds one batch's write, connecting included: a database
// that stops answering fails the batch (the callers retry) rather than
// holding the writer for ever.
const batchTimeout = 30 * time.Second

func putRoundPG(ctx context.Context, conn *pgx.Conn, round map[string]int, resps []putResp, args ...any) error {
	rows, err := conn.Query(ctx, qPutBatchPG, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var id string
		var revoked, before, after *int64
		if err := rows.Scan(&id, &revoked, &before, &after); err != nil {
			return err
		}
		i, ok := round[id]
		if !ok {
			return fmt.Errorf("batch answered for device %q it did not hold", id)
		}
		seen++
		switch {
		case revoked == nil:
			resps[i] = putResp{err: fmt.Errorf("device: %w", ErrNotFound)}
		case *revoked != 0:
			resps[i] = putResp{err: fmt.Errorf("device: %w", ErrRevoked)}
		case after == nil:
			resps[i] = putResp{res: PutResult{Duplicate: true, Latest: uint64(*before)}}
		default:
			resps[i] = putResp{res: PutResult{Latest: uint64(*after)}}
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if seen != len(round) {
		return fmt.Errorf("batch of %d reports answered %d", len(round), seen)
	}
	return nil
}

// pgConns keeps the connections report batches are written on, one per
// writer, outside database/sql. Each runs with plan_cache_mode
// force_generic_plan: PostgreSQL otherwise keeps planning the batch
// statement afresh for its array arguments, which was half the database's
// CPU per batch of a few reports (bench/storeload). And with
// synchronous_commit off: a status report acknowledged just before the
// database server crashes may be lost (the device's next report replaces
// it), never half-written, which is the promise SQLite's WAL with
// synchronous=NORMAL makes; enrolments, revocations and everything else keep
// the server's setting. A connection that failed is closed; the next batch
// dials a new one.
type pgConns struct {
	cfg  *pgx.ConnConfig
	idle chan *pgx.Conn
}

func newPGConns(cfg *pgx.ConnConfig, n int) *pgConns {
	cfg = cfg.Copy()
	cfg.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	cfg.RuntimeParams["synchronous_commit"] = "off"
	cfg.RuntimeParams["application_name"] = "shoal-hub report writer"
	return &pgConns{cfg: cfg, idle: make(chan *pgx.Conn, n)}
}

func (p *pgConns) get(ctx context.Context) (*pgx.Conn, error) {
	select {
	case c := <-p.idle:
		return c, nil
	default:
	}
	c, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		return nil, fmt.Errorf("connect report writer: %w", err)
	}
	return c, nil
}

func (p *pgConns) put(c *pgx.Conn, err error) {
	if err == nil && !c.IsClosed() {
		select {
		case p.idle <- c:
			return
		default:
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c.Close(ctx)
}

// close closes the idle connections; call it once no writer runs.
func (p *pgConns) close() {
	for {
		select {
		case c := <-p.idle:
			p.put(c, errClosed)
		default:
			return
		}
	}
}
