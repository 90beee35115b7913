package store

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

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
