// Package pgtest starts a throwaway PostgreSQL server from Debian's
// binaries (/usr/lib/postgresql/*/bin): initdb into a temporary directory,
// pg_ctl start on a loopback high port, and stop and remove everything when
// done. When running as root the server runs as the 'postgres' user through
// runuser, because PostgreSQL refuses to run as root.
//
// Tests use New; programs such as benchmarks use Start and Stop.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// ErrMissing is returned by Start when no PostgreSQL binaries are installed.
var ErrMissing = errors.New("postgresql server binaries not found under /usr/lib/postgresql/*/bin")

// Options tune the server. The zero value suits tests.
type Options struct {
	// Durable keeps fsync on; tests turn it off for speed.
	Durable bool
	// Settings are extra "name=value" server settings passed with -c.
	Settings []string
}

// Server is a running PostgreSQL instance.
type Server struct {
	Dir  string // the temp directory holding data and socket
	Port int
	bin  string
	as   string // user to run as ("" = current)
	n    atomic.Int64
}

// BinDir returns the newest /usr/lib/postgresql/*/bin that has initdb.
func BinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrMissing
}

// New starts a server for t, stopped and removed in t.Cleanup. A missing
// PostgreSQL skips t (or fails it under SHOAL_REQUIRE_REAL=1).
func New(t testing.TB) *Server {
	t.Helper()
	if _, err := BinDir(); err != nil {
		testenv.Missing(t, "PostgreSQL server", "apt-get install postgresql")
	}
	s, err := Start(t.Context(), Options{})
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return s
}

// Start runs initdb and pg_ctl start. Call Stop when done.
func Start(ctx context.Context, o Options) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "shoal-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{Dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		s.as = "postgres"
		u, err := user.Lookup(s.as)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: running as root needs a %q user: %w", s.as, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.Port = port
	data := filepath.Join(dir, "data")
	if out, err := s.run(ctx, "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %w: %s", err, out)
	}
	opts := []string{
		"-p " + strconv.Itoa(port),
		"-k " + dir,
		"-c listen_addresses=127.0.0.1",
		"-c max_connections=200",
	}
	if !o.Durable {
		opts = append(opts, "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")
	}
	for _, kv := range o.Settings {
		opts = append(opts, "-c "+kv)
	}
	if out, err := s.run(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", filepath.Join(dir, "log"), "-o", strings.Join(opts, " ")); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: pg_ctl start: %w: %s\n%s", err, out, log)
	}
	return s, nil
}

func (s *Server) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, tool)
	var cmd *exec.Cmd
	if s.as != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", s.as, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = s.Dir
	return cmd.CombinedOutput()
}

// Stop shuts the server down and removes its directory.
func (s *Server) Stop() error {
	// A fresh context: cleanup runs after the test's context is cancelled.
	out, err := s.run(context.Background(), "pg_ctl", "stop", "-w", "-m", "immediate", "-D", filepath.Join(s.Dir, "data"))
	rmErr := os.RemoveAll(s.Dir)
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, out)
	}
	return rmErr
}

// DSN returns a connection string for database db ("" = postgres).
func (s *Server) DSN(db string) string {
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// OverSocket returns dsn, one of this server's connection strings, to
// connect over the server's Unix socket instead of TCP loopback, as a hub on
// the database's own host would.
func (s *Server) OverSocket(dsn string) string {
	return strings.Replace(dsn, fmt.Sprintf("@127.0.0.1:%d/", s.Port), "@/", 1) + fmt.Sprintf("&host=%s&port=%d", s.Dir, s.Port)
}

// CreateDB creates a fresh, uniquely named database and returns its DSN.
func (s *Server) CreateDB(ctx context.Context) (string, error) {
	name := fmt.Sprintf("shoal_%d", s.n.Add(1))
	conn, err := pgx.Connect(ctx, s.DSN(""))
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return s.DSN(name), nil
}

// NewDB is CreateDB for tests.
func (s *Server) NewDB(t testing.TB) string {
	t.Helper()
	dsn, err := s.CreateDB(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// PIDs returns the server's processes: the postmaster and its children
// (backends, WAL writer, checkpointer...), so a benchmark can account for the
// CPU time the database used.
func (s *Server) PIDs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, "data", "postmaster.pid"))
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return nil, fmt.Errorf("pgtest: postmaster.pid: %w", err)
	}
	pids := []int{pm}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name may hold spaces; the fields after ") " are fixed.
		_, rest, ok := strings.Cut(string(stat), ") ")
		f := strings.Fields(rest)
		if !ok || len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == pm {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
