package store

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/shoalfleet/shoal/internal/pgtest"
)

// TestReportWriterSession: the report writer's connections plan the batch
// statement once (generic plans) and commit asynchronously; the store's
// other connections keep the server's settings.
func TestReportWriterSession(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	p := newPGConns(cfg, 1)
	defer p.close()
	c, err := p.get(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.put(c, nil)
	other, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(t.Context())
	for _, tc := range []struct {
		conn       *pgx.Conn
		name, want string
	}{
		{c, "plan_cache_mode", "force_generic_plan"},
		{c, "synchronous_commit", "off"},
		{c, "application_name", "shoal-hub report writer"},
		{other, "plan_cache_mode", "auto"},
	} {
		var got string
		if err := tc.conn.QueryRow(t.Context(), "SELECT current_setting($1)", tc.name).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s = %q, want %q", tc.name, got, tc.want)
		}
	}
	if _, ok := cfg.RuntimeParams["plan_cache_mode"]; ok {
		t.Error("newPGConns changed the caller's config")
	}
}
