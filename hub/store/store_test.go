package store_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/store/storetest"
	"github.com/shoalfleet/shoal/internal/pgtest"
)

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return storetest.OpenURL(t, "sqlite://"+filepath.Join(t.TempDir(), "hub.db"))
	})
}

func TestPostgres(t *testing.T) {
	pg := pgtest.New(t)
	storetest.Run(t, func(t *testing.T) store.Store { return storetest.OpenURL(t, pg.NewDB(t)) })
}

// TestMigrationsOnce opens the same database again, and from several
// processes' worth of connections at once: migrations apply once.
func TestMigrationsOnce(t *testing.T) {
	pg := pgtest.New(t)
	cases := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"sqlite", func(t *testing.T) string { return "sqlite://" + filepath.Join(t.TempDir(), "hub.db") }},
		{"postgres", func(t *testing.T) string { return pg.NewDB(t) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url := c.url(t)
			var wg sync.WaitGroup
			for range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s, err := store.Open(t.Context(), url)
					if err != nil {
						t.Error(err)
						return
					}
					s.Close()
				}()
			}
			wg.Wait()
			s, err := store.Open(t.Context(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := s.Ping(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestListen: a poke added through one store reaches a listener on another
// connection (another hub) through LISTEN/NOTIFY.
func TestListen(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	a, b := storetest.OpenURL(t, dsn), storetest.OpenURL(t, dsn)
	l, ok := b.(store.Listener)
	if !ok {
		t.Fatal("postgres store is not a Listener")
	}
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan int64, 100)
	done := make(chan error, 1)
	go func() { done <- l.Listen(ctx, func(id int64) { got <- id }) }()
	// Once LISTEN is in place the listener says so with ID 0 (pollers re-read
	// the store then); a poke made after that is announced with its ID.
	select {
	case id := <-got:
		if id != 0 {
			t.Fatalf("first call %d, want 0 once listening", id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("not listening within 20s")
	}
	p, err := a.AddPoke(t.Context(), store.Poke{Reason: "operator", Time: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != p {
			t.Fatalf("notified poke ID %d, want %d", id, p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no notification within 20s")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("listen: %v", err)
	}
}
