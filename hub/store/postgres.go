package store

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

var postgresSchema = []string{
	// 1: initial schema. Times are Unix nanoseconds; 0 means unset.
	`CREATE TABLE tokens (
		hash BYTEA PRIMARY KEY,
		kind TEXT NOT NULL,
		device_id TEXT NOT NULL,
		created BIGINT NOT NULL,
		expires BIGINT NOT NULL,
		used BIGINT NOT NULL,
		revoked INTEGER NOT NULL
	);
	CREATE TABLE devices (
		id TEXT PRIMARY KEY,
		key_kind TEXT NOT NULL,
		cert_serial TEXT NOT NULL,
		cert_not_after BIGINT NOT NULL,
		enrolled BIGINT NOT NULL,
		revoked BIGINT NOT NULL,
		latest_seq BIGINT NOT NULL,
		state TEXT NOT NULL,
		groups TEXT NOT NULL,
		last_seen BIGINT NOT NULL,
		attest_ok INTEGER,
		attest_time BIGINT NOT NULL DEFAULT 0,
		ak BYTEA
	);
	CREATE TABLE reports (
		device_id TEXT NOT NULL,
		seq BIGINT NOT NULL,
		time BIGINT NOT NULL,
		received BIGINT NOT NULL,
		state TEXT NOT NULL,
		body BYTEA NOT NULL,
		PRIMARY KEY (device_id, seq)
	);
	CREATE INDEX reports_received ON reports (received);
	CREATE TABLE nonces (
		nonce BYTEA PRIMARY KEY,
		device_id TEXT NOT NULL,
		expires BIGINT NOT NULL,
		used INTEGER NOT NULL
	);
	CREATE TABLE attestations (
		id BIGSERIAL PRIMARY KEY,
		device_id TEXT NOT NULL,
		time BIGINT NOT NULL,
		ok INTEGER NOT NULL,
		result BYTEA NOT NULL
	);
	CREATE INDEX attestations_device ON attestations (device_id, id);
	CREATE TABLE pokes (
		id BIGSERIAL PRIMARY KEY,
		grp TEXT NOT NULL,
		devices TEXT NOT NULL,
		commit_id TEXT NOT NULL,
		reason TEXT NOT NULL,
		time BIGINT NOT NULL
	);
	CREATE TABLE ca (
		id INTEGER PRIMARY KEY,
		cert BYTEA NOT NULL,
		key BYTEA NOT NULL
	)`,
}

type pgStore struct {
	*sqlStore
	dsn string
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
		dsn: dsn,
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := s.prepareHot(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	return s, nil
}

// Listen calls fn with the ID of every poke added by any hub on this
// database, until ctx ends. It holds one dedicated connection.
func (s *pgStore) Listen(ctx context.Context, fn func(id int64)) error {
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return fmt.Errorf("listen for pokes: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN shoal_poke"); err != nil {
		return fmt.Errorf("listen for pokes: %w", err)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("listen for pokes: %w", err)
		}
		id, err := strconv.ParseInt(n.Payload, 10, 64)
		if err != nil {
			continue
		}
		fn(id)
	}
}
