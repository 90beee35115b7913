package agent

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
)

// hub is an in-memory hub: it stores each (device, seq) once, like the real one.
type hub struct {
	mu       sync.Mutex
	got      []uint64 // every delivery, in arrival order
	stored   map[uint64]api.Status
	fail     error
	rejectAt uint64
}

func newHub() *hub { return &hub{stored: map[uint64]api.Status{}} }

func (h *hub) Report(_ context.Context, s api.Status) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail != nil {
		return h.fail
	}
	if s.Seq == h.rejectAt {
		return &api.Error{Status: http.StatusBadRequest, Reason: api.ReasonBadRequest, Message: "bad"}
	}
	h.got = append(h.got, s.Seq)
	h.stored[s.Seq] = s
	return nil
}

func status(state api.State, applied string) api.Status {
	return api.Status{APIVersion: api.Version, Time: time.Unix(1, 0), State: state, Commit: api.CommitStatus{Applied: applied}}
}

func TestOutboxDeliversInOrderAcrossReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	o, err := OpenOutbox(dir, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if seq, err := o.Enqueue(status(api.StateConverged, "c"), false); err != nil || seq != uint64(i+1) {
			t.Fatalf("enqueue %d: seq %d %v", i, seq, err)
		}
	}
	h := newHub()
	h.fail = errors.New("hub down")
	if n, err := o.Flush(t.Context(), h); err == nil || n != 0 || o.Depth() != 3 {
		t.Fatalf("flush with the hub down: n=%d err=%v depth=%d", n, err, o.Depth())
	}
	// A restart: numbering goes on, nothing is lost.
	o, err = OpenOutbox(dir, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if seq, _ := o.Enqueue(status(api.StateConverged, "c"), false); seq != 4 {
		t.Fatalf("seq after reopen = %d, want 4", seq)
	}
	h.fail = nil
	if n, err := o.Flush(t.Context(), h); err != nil || n != 4 {
		t.Fatalf("flush: %d %v", n, err)
	}
	want := []uint64{1, 2, 3, 4}
	if len(h.got) != 4 || h.got[0] != 1 || h.got[3] != 4 {
		t.Fatalf("delivered %v, want %v", h.got, want)
	}
	// Emptied and reopened: numbering still goes on.
	o, _ = OpenOutbox(dir, 10, nil)
	if seq, _ := o.Enqueue(status(api.StateConverged, "c"), false); seq != 5 {
		t.Fatalf("seq after an emptied queue = %d, want 5", seq)
	}
}

func TestOutboxDropsSupersededFirst(t *testing.T) {
	o, err := OpenOutbox(filepath.Join(t.TempDir(), "outbox"), 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		keep bool
		st   api.State
	}{
		{true, api.StateUpdating},   // 1 transition
		{false, api.StateConverged}, // 2 routine
		{false, api.StateConverged}, // 3 routine
		{true, api.StateStalled},    // 4 transition: drops 2
		{false, api.StateStalled},   // 5 routine: drops 3
		{false, api.StateStalled},   // 6 routine: drops 5
		{true, api.StateConverged},  // 7 transition: drops 6
		{true, api.StateWaiting},    // 8 transition: all kept, drops the oldest (1)
	}
	for _, s := range steps {
		if _, err := o.Enqueue(status(s.st, "c"), s.keep); err != nil {
			t.Fatal(err)
		}
	}
	h := newHub()
	if _, err := o.Flush(t.Context(), h); err != nil {
		t.Fatal(err)
	}
	want := []uint64{4, 7, 8}
	if len(h.got) != len(want) {
		t.Fatalf("delivered %v, want %v", h.got, want)
	}
	for i := range want {
		if h.got[i] != want[i] {
			t.Fatalf("delivered %v, want %v", h.got, want)
		}
	}
	if o.Dropped() != 5 {
		t.Fatalf("dropped = %d, want 5", o.Dropped())
	}
}

func TestOutboxDropsRejectedReport(t *testing.T) {
	o, _ := OpenOutbox(filepath.Join(t.TempDir(), "outbox"), 10, nil)
	for range 3 {
		o.Enqueue(status(api.StateConverged, "c"), true)
	}
	h := newHub()
	h.rejectAt = 2
	n, err := o.Flush(t.Context(), h)
	if err != nil || n != 2 || o.Depth() != 0 || o.Dropped() != 1 {
		t.Fatalf("n=%d err=%v depth=%d dropped=%d", n, err, o.Depth(), o.Dropped())
	}
}
