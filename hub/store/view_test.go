package store_test

import (
	"path/filepath"
	"testing"

	"github.com/shoalfleet/shoal/hub/store/storetest"
	"github.com/shoalfleet/shoal/internal/pgtest"
)

func TestViewSQLite(t *testing.T) {
	storetest.RunView(t, func(t *testing.T) string {
		return "sqlite://" + filepath.Join(t.TempDir(), "hub.db")
	})
}

func TestViewPostgres(t *testing.T) {
	pg := pgtest.New(t)
	storetest.RunView(t, func(t *testing.T) string { return pg.NewDB(t) })
}
