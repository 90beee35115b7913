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
