package store_test

import (
	"path/filepath"
	"testing"

	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/store/storetest"
	"github.com/shoalfleet/shoal/internal/pgtest"
)

func TestViewSQLite(t *testing.T) {
	storetest.RunView(t, func(t *testing.T) store.Store {
		s, err := store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "hub.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestViewPostgres(t *testing.T) {
	pg := pgtest.New(t)
	storetest.RunView(t, func(t *testing.T) store.Store {
		s, err := store.Open(t.Context(), pg.NewDB(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
