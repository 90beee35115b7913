package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// pgWriters is how many report batches a hub writes at once. One: while a
// batch is on its way the next gathers, and larger batches cost the
// database less per report (measured with bench/hubload: 181 µs of
// PostgreSQL CPU per report with one writer per hub, 400 with two, 470 with
// four).
const pgWriters = 1

type pgStore struct {
	*sqlStore
	dsn     string
	writers *pgConns // report batches (batch.go)
}

// OpenPostgres connects to PostgreSQL through pgx and applies migrations.
// Several hubs may share the database; migrations take an advisory lock.
func OpenPostgres(ctx context.Context, dsn string) (Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	s := &pgStore{
		sqlStore: &sqlStore{
			d:     dialect{name: "postgres", migrations: postgresSchema, lock: `SELECT pg_advisory_xact_lock(7305143)`},
			w:     db,
			r:     db,
			close: db.Close,
		},
		dsn:     dsn,
		writers: newPGConns(cfg, pgWriters),
	}
	// Close stops the batcher first, so no writer holds a connection then.
	s.close = func() error { s.writers.close(); return db.Close() }
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := s.prepareHot(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	s.batch = startBatcher(pgWriters, s.writePG)
	return s, nil
}

// Listen calls fn with the ID of every poke added by any hub on this
// database, until ctx ends. It holds one dedicated connection. Once the
// LISTEN is in place (at the start and after every reconnect) it calls
// fn(0): a poke made before then sent a notification nobody heard, so
// waiting pollers must read the store again.
func (s *pgStore) Listen(ctx context.Context, fn func(id int64)) error {
	err := s.listen(ctx, chanPoke, func() { fn(0) }, func(payload string) {
		if id, err := strconv.ParseInt(payload, 10, 64); err == nil {
			fn(id)
		}
	})
	if err != nil {
		return fmt.Errorf("listen for pokes: %w", err)
	}
	return nil
}

// WatchDevices calls ready once it is listening, then changed with the ID of
// every device whose enrolment, revocation, certificate or attestation key
// any hub on this database changes (notifyDevice), until ctx ends or the
// connection fails. It holds one dedicated connection.
func (s *pgStore) WatchDevices(ctx context.Context, ready func(), changed func(id string)) error {
	if err := s.listen(ctx, chanDevice, ready, changed); err != nil {
		return fmt.Errorf("watch device changes: %w", err)
	}
	return nil
}

// Notification channels.
const (
	chanPoke   = "shoal_poke"
	chanDevice = "shoal_device"
)

// listenCheck is how long a listening connection may stay silent before it
// is checked: a connection lost without a word (a network cut) is noticed
// within about this time, not only when TCP gives up.
const listenCheck = 5 * time.Second

func (s *pgStore) listen(ctx context.Context, channel string, ready func(), fn func(payload string)) error {
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, listenCheck)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			if n != nil {
				fn(n.Payload)
			}
			continue
		case !errors.Is(err, context.DeadlineExceeded):
			return err
		}
		// Silent for a while: make sure the connection still works. pgx
		// keeps the connection usable after a wait times out.
		pctx, cancel := context.WithTimeout(ctx, listenCheck)
		err = conn.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
