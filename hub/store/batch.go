package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// SQLite has one writer, so reports arriving together are written in one
// transaction (group commit): the per-transaction cost (WAL frame writes,
// locking) is paid once per batch instead of once per report. Each report
// keeps its own result; a report refused for its device (unknown, revoked)
// writes nothing and does not affect the others.

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

type batcher struct {
	s    *sqlStore
	reqs chan *putReq
	quit chan struct{}
	wg   sync.WaitGroup
}

func newBatcher(s *sqlStore) *batcher {
	b := &batcher{s: s, reqs: make(chan *putReq, maxBatch), quit: make(chan struct{})}
	b.wg.Add(1)
	go b.run()
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
	fill:
		for len(batch) < maxBatch {
			select {
			case req := <-b.reqs:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		b.write(batch)
	}
}

// write stores a batch in one transaction. A database error fails every
// report in the batch (nothing of it is committed); the callers retry.
func (b *batcher) write(batch []*putReq) {
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
	ctx := context.WithoutCancel(live[0].ctx)
	resps := make([]putResp, len(live))
	err := func() error {
		tx, err := b.s.w.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for i, req := range live {
			res, err := b.s.putInTx(ctx, tx, req.r)
			if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrRevoked) {
				return err
			}
			resps[i] = putResp{res, err}
		}
		return tx.Commit()
	}()
	for i, req := range live {
		if err != nil {
			req.done <- putResp{err: fmt.Errorf("batch of %d: %w", len(live), err)}
			continue
		}
		req.done <- resps[i]
	}
}
