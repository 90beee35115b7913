package storetest

import (
	"crypto/sha256"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/shoalfleet/shoal/hub/store"
)

func testCounters(t *testing.T, s store.Store) {
	ctx := t.Context()
	ak1, ak2 := sha256.Sum256([]byte("ak-1")), sha256.Sum256([]byte("ak-2"))
	c := func(ak [32]byte, reset, restart uint32, clock uint64) store.TPMCounters {
		return store.TPMCounters{DeviceID: "dev-c", AKHash: ak[:], ResetCount: reset, RestartCount: restart, Clock: clock, Updated: t0}
	}
	if _, err := s.TPMCounters(ctx, "dev-c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("counters of a device with none: %v, want ErrNotFound", err)
	}
	// Each step advances from the state the previous steps left.
	steps := []struct {
		name  string
		c     store.TPMCounters
		stale bool
		want  store.TPMCounters
	}{
		{"first", c(ak1, 5, 2, 1000), false, c(ak1, 5, 2, 1000)},
		{"same again", c(ak1, 5, 2, 1000), false, c(ak1, 5, 2, 1000)},
		{"clock later", c(ak1, 5, 2, 2000), false, c(ak1, 5, 2, 2000)},
		{"clock earlier", c(ak1, 5, 2, 1999), true, c(ak1, 5, 2, 2000)},
		{"restart earlier", c(ak1, 5, 1, 9000), true, c(ak1, 5, 2, 2000)},
		{"restart later, clock lower", c(ak1, 5, 3, 10), false, c(ak1, 5, 3, 10)},
		{"reset earlier", c(ak1, 4, 9, 9000), true, c(ak1, 5, 3, 10)},
		{"reset later, restart lower", c(ak1, 6, 0, 5), false, c(ak1, 6, 0, 5)},
		{"another AK starts afresh", c(ak2, 1, 0, 1), false, c(ak2, 1, 0, 1)},
		// Obfuscated counters wrap: max then 0 is forward as a serial number.
		{"half the range ahead", c(ak2, 1<<31, 0, 1), false, c(ak2, 1<<31, 0, 1)},
		{"near wrap", c(ak2, math.MaxUint32, 0, 1), false, c(ak2, math.MaxUint32, 0, 1)},
		{"wrapped", c(ak2, 0, 0, 1), false, c(ak2, 0, 0, 1)},
		{"before the wrap", c(ak2, math.MaxUint32, 7, 7), true, c(ak2, 0, 0, 1)},
		// The clock uses all 64 bits.
		{"huge clock", c(ak2, 0, 0, math.MaxUint64-1), false, c(ak2, 0, 0, math.MaxUint64-1)},
		{"below huge clock", c(ak2, 0, 0, math.MaxInt64), true, c(ak2, 0, 0, math.MaxUint64-1)},
	}
	for _, st := range steps {
		err := s.AdvanceTPMCounters(ctx, st.c)
		if st.stale != errors.Is(err, store.ErrStale) || (!st.stale && err != nil) {
			t.Fatalf("%s: advance: %v, want stale=%v", st.name, err, st.stale)
		}
		got, err := s.TPMCounters(ctx, "dev-c")
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if string(got.AKHash) != string(st.want.AKHash) || got.ResetCount != st.want.ResetCount ||
			got.RestartCount != st.want.RestartCount || got.Clock != st.want.Clock || !got.Updated.Equal(t0) {
			t.Fatalf("%s: stored %+v, want %+v", st.name, got, st.want)
		}
	}
	if err := s.AdvanceTPMCounters(ctx, store.TPMCounters{DeviceID: "dev-c"}); err == nil || errors.Is(err, store.ErrStale) {
		t.Errorf("counters without an AK hash: %v, want a validation error", err)
	}

	// Many writers for one device in random order: every advance that
	// succeeds is later than or equal to all before it, so the latest wins.
	const n = 40
	clocks := rand.Perm(n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var stale int
	for _, k := range clocks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.AdvanceTPMCounters(ctx, store.TPMCounters{DeviceID: "dev-race", AKHash: ak1[:], ResetCount: 3, Clock: uint64(k) + 1, Updated: t0})
			switch {
			case errors.Is(err, store.ErrStale):
				mu.Lock()
				stale++
				mu.Unlock()
			case err != nil:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got, err := s.TPMCounters(ctx, "dev-race")
	if err != nil {
		t.Fatal(err)
	}
	if got.Clock != n || got.ResetCount != 3 {
		t.Fatalf("after %d concurrent advances (%d stale): stored %+v, want clock %d", n, stale, got, n)
	}
	t.Logf("%d concurrent advances, %d refused as stale", n, stale)
}
