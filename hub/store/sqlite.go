package store

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // pure Go: the hub cross-compiles without cgo
)

var sqliteSchema = []string{
	// 1: initial schema. Times are Unix nanoseconds; 0 means unset.
	`CREATE TABLE tokens (
		hash BLOB PRIMARY KEY,
		kind TEXT NOT NULL,
		device_id TEXT NOT NULL,
		created INTEGER NOT NULL,
		expires INTEGER NOT NULL,
		used INTEGER NOT NULL,
		revoked INTEGER NOT NULL
	);
	CREATE TABLE devices (
		id TEXT PRIMARY KEY,
		key_kind TEXT NOT NULL,
		cert_serial TEXT NOT NULL,
		cert_not_after INTEGER NOT NULL,
		enrolled INTEGER NOT NULL,
		revoked INTEGER NOT NULL,
		latest_seq INTEGER NOT NULL,
		state TEXT NOT NULL,
		groups TEXT NOT NULL,
		last_seen INTEGER NOT NULL,
		attest_ok INTEGER,
		attest_time INTEGER NOT NULL DEFAULT 0,
		ak BLOB
	);
	CREATE TABLE reports (
		device_id TEXT NOT NULL,
		seq INTEGER NOT NULL,
		time INTEGER NOT NULL,
		received INTEGER NOT NULL,
		state TEXT NOT NULL,
		body BLOB NOT NULL,
		PRIMARY KEY (device_id, seq)
	) WITHOUT ROWID;
	CREATE INDEX reports_received ON reports (received);
	CREATE TABLE nonces (
		nonce BLOB PRIMARY KEY,
		device_id TEXT NOT NULL,
		expires INTEGER NOT NULL,
		used INTEGER NOT NULL
	);
	CREATE TABLE attestations (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		device_id TEXT NOT NULL,
		time INTEGER NOT NULL,
		ok INTEGER NOT NULL,
		result BLOB NOT NULL
	);
	CREATE INDEX attestations_device ON attestations (device_id, id);
	CREATE TABLE pokes (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		grp TEXT NOT NULL,
		devices TEXT NOT NULL,
		commit_id TEXT NOT NULL,
		reason TEXT NOT NULL,
		time INTEGER NOT NULL
	);
	CREATE TABLE ca (
		id INTEGER PRIMARY KEY,
		cert BLOB NOT NULL,
		key BLOB NOT NULL
	)`,
}

// OpenSQLite opens (creating if needed) the SQLite database at path in WAL
// mode and applies migrations.
func OpenSQLite(ctx context.Context, path string) (Store, error) {
	if path == "" {
		return nil, fmt.Errorf("open sqlite: empty path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	q := url.Values{}
	// busy_timeout first: the pragmas after it (switching a new database to
	// WAL above all) then wait for another connection instead of failing
	// at once with SQLITE_BUSY, as hubs opening one file together do.
	for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(NORMAL)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()
	w, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	w.SetMaxOpenConns(1) // one writer; SQLite serialises writes anyway
	r, err := sql.Open("sqlite", dsn)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	s := &sqlStore{d: dialect{name: "sqlite", migrations: sqliteSchema}, w: w, r: r}
	s.close = func() error {
		err1 := r.Close()
		err2 := w.Close()
		if err1 != nil {
			return err1
		}
		return err2
	}
	if err := migrateSQLite(ctx, s); err != nil {
		s.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	if err := s.prepareHot(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	s.batch = newBatcher(s)
	return s, nil
}

// migrateSQLite migrates, waiting out SQLITE_BUSY: while another process turns
// a new database to WAL, SQLite can refuse a transaction without calling the
// busy handler, so busy_timeout alone does not cover hubs starting together.
func migrateSQLite(ctx context.Context, s *sqlStore) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for attempt := 1; ; attempt++ {
		err := s.migrate(ctx)
		if err == nil || attempt == 100 || !strings.Contains(err.Error(), "SQLITE_BUSY") {
			return err
		}
		t.Reset(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}
