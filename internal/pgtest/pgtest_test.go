package pgtest

import (
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestServer(t *testing.T) {
	s := New(t)
	dsn := s.NewDB(t)
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT 40 + 2").Scan(&n); err != nil || n != 42 {
		t.Fatalf("query: %d, %v", n, err)
	}
	pids, err := s.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	// The postmaster, the backend serving conn, and the background workers.
	if len(pids) < 3 {
		t.Fatalf("PIDs: %v, want the postmaster and its children", pids)
	}
	var backend int
	if err := conn.QueryRow(t.Context(), "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pids, backend) {
		t.Fatalf("PIDs %v lack this connection's backend %d", pids, backend)
	}
}

// TestOverSocket: the Unix-socket form of a DSN reaches the same database,
// and not over TCP (the server reports no client address).
func TestOverSocket(t *testing.T) {
	s := New(t)
	dsn := s.NewDB(t)
	conn, err := pgx.Connect(t.Context(), s.OverSocket(dsn))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var db, want string
	var addr *string
	if err := conn.QueryRow(t.Context(), "SELECT current_database(), inet_client_addr()::text").Scan(&db, &addr); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	want = cfg.Database
	if db != want || addr != nil {
		t.Fatalf("over the socket: database %q, client address %v; want %q and none", db, addr, want)
	}
}
