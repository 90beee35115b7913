// Command storeload measures the hub store's status ingest alone, without
// TLS, HTTP or JSON: concurrent PutStatus calls from one process, as one
// hub's handlers make them, against SQLite or a PostgreSQL server it starts
// (durable, asynchronous commit, as bench/hubload runs it), and prints
// reports per second and the CPU time per report of this process and of
// the database server. Run two builds alternately to compare a change.
//
//	go run ./bench/storeload -db postgres -workers 4 -duration 10s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/bench/internal/sample"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/pgtest"
	"github.com/shoalfleet/shoal/internal/proccpu"
)

func main() {
	devices := flag.Int("devices", 3000, "enrolled devices")
	workers := flag.Int("workers", 16, "concurrent writers")
	dur := flag.Duration("duration", 10*time.Second, "measured phase")
	db := flag.String("db", "postgres", "sqlite | postgres")
	unix := flag.Bool("unix", false, "connect to PostgreSQL over its Unix socket")
	decode := flag.Bool("decode", true, "decode, validate and re-encode each report as the hub does before storing it")
	pgset := flag.String("pgset", "", "extra PostgreSQL server settings, comma-separated name=value")
	flag.Parse()
	if err := run(*db, *devices, *workers, *dur, *pgset, *unix, *decode); err != nil {
		fmt.Fprintln(os.Stderr, "storeload:", err)
		os.Exit(1)
	}
}

func run(db string, devices, workers int, dur time.Duration, pgset string, unix, decode bool) error {
	ctx := context.Background()
	var dsn string
	var pg *pgtest.Server
	if db == "postgres" {
		var err error
		pg, err = pgtest.Start(ctx, pgtest.Options{Durable: true, Settings: append([]string{"synchronous_commit=off", "shared_buffers=256MB"}, strings.FieldsFunc(pgset, func(r rune) bool { return r == ',' })...)})
		if err != nil {
			return err
		}
		defer pg.Stop()
		dsn, err = pg.CreateDB(ctx)
		if err != nil {
			return err
		}
		if unix {
			dsn = pg.OverSocket(dsn)
		}
	} else {
		dir, err := os.MkdirTemp("", "storeload-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		dsn = "sqlite://" + filepath.Join(dir, "hub.db")
	}
	st, err := store.Open(ctx, dsn)
	if err != nil {
		return err
	}
	defer st.Close()
	now := time.Now()
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
		h := []byte("t-" + ids[i])
		if err := st.CreateToken(ctx, store.Token{Hash: h, Kind: store.TokenEnrol, DeviceID: ids[i], Created: now, Expires: now.Add(time.Hour)}); err != nil {
			return err
		}
		if _, err := st.Enrol(ctx, h, now, store.Device{ID: ids[i], KeyKind: "software", CertSerial: "01", CertNotAfter: now.Add(time.Hour)}); err != nil {
			return err
		}
	}
	// The body bench/hubload's devices send.
	st0 := sample.Status("storeload", 1)
	body, err := json.Marshal(&st0)
	if err != nil {
		return err
	}
	pgPids := func() []int {
		if pg == nil {
			return nil
		}
		p, _ := pg.PIDs()
		return p
	}
	var n atomic.Int64
	var seqs = make([]atomic.Uint64, devices)
	var next atomic.Int64
	stop := time.Now().Add(dur)
	t0, c0, p0 := time.Now(), proccpu.Time(os.Getpid()), proccpu.Time(pgPids()...)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				i := int(next.Add(1)) % devices
				seq := seqs[i].Add(1)
				if decode {
					var s api.Status
					if err := json.Unmarshal(body, &s); err != nil {
						fmt.Fprintln(os.Stderr, err)
						return
					}
					s.Seq, s.Time = seq, time.Now()
					if err := s.Validate(); err != nil {
						fmt.Fprintln(os.Stderr, err)
						return
					}
					if _, err := json.Marshal(&s); err != nil {
						fmt.Fprintln(os.Stderr, err)
						return
					}
				}
				_, err := st.PutStatus(ctx, store.Report{DeviceID: ids[i], Seq: seq, Time: time.Now(), Received: time.Now(), State: "converged", Groups: []string{"canary"}, Body: body})
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	c1, p1 := proccpu.Time(os.Getpid()), proccpu.Time(pgPids()...)
	k := n.Load()
	fmt.Printf("%s %d devices %d workers: %.0f reports/s, CPU µs/report client %.0f db %.0f\n", db, devices, workers, float64(k)/el.Seconds(),
		float64((c1-c0).Microseconds())/float64(k), float64((p1-p0).Microseconds())/float64(k))
	return nil
}
