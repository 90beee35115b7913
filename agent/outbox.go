package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// Reporter delivers one status report to the hub. The hub client implements it.
type Reporter interface {
	Report(ctx context.Context, s api.Status) error
}

// outboxVersion is the version of the files under outbox/.
const outboxVersion = 1

type outboxEntry struct {
	Version int  `json:"version"`
	Keep    bool `json:"keep"` // a transition: never dropped while a routine report can be
	Status  api.Status
}

type outboxMeta struct {
	Version int    `json:"version"`
	Seq     uint64 `json:"seq"`     // the last sequence number assigned
	Dropped uint64 `json:"dropped"` // reports dropped over the agent's life
}

// Outbox queues status reports on disk and delivers them in order. Each gets
// the next per-device sequence number, so the hub can drop a report it has
// already stored: a report is delivered at least once, and stored once.
// When more than max are queued, routine reports superseded by a newer one
// go first. Safe for concurrent use.
type Outbox struct {
	dir string
	max int
	log *slog.Logger

	mu      sync.Mutex
	meta    outboxMeta
	queued  []uint64 // sequence numbers on disk, ascending
	keep    map[uint64]bool
	wake    chan struct{}
	onDepth func(depth int, dropped uint64)
}

// OpenOutbox opens (creating) the outbox in dir, holding at most max reports.
func OpenOutbox(dir string, limit int, log *slog.Logger) (*Outbox, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if limit < 1 {
		limit = 1
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	if err := atomicfile.CleanTemp(dir); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	o := &Outbox{dir: dir, max: limit, log: log, keep: map[uint64]bool{}, wake: make(chan struct{}, 1)}
	if b, err := os.ReadFile(filepath.Join(dir, "meta.json")); err == nil {
		if err := json.Unmarshal(b, &o.meta); err != nil {
			return nil, fmt.Errorf("outbox meta: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("outbox meta: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	for _, e := range ents {
		seq, ok := parseEntryName(e.Name())
		if !ok {
			continue
		}
		ent, err := o.read(seq)
		if err != nil {
			// Written atomically, so this is damage from outside: set it aside.
			log.Warn("outbox: unreadable report set aside", "seq", seq, "err", err)
			_ = os.Rename(o.path(seq), o.path(seq)+".bad")
			continue
		}
		o.queued = append(o.queued, seq)
		o.keep[seq] = ent.Keep
		// A crash between writing a report and the meta leaves the report newest.
		o.meta.Seq = max(o.meta.Seq, seq)
	}
	sort.Slice(o.queued, func(i, j int) bool { return o.queued[i] < o.queued[j] })
	if err := o.writeMeta(); err != nil {
		return nil, err
	}
	return o, nil
}

func parseEntryName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, ".json")
	if !ok || len(s) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil && n > 0
}

func (o *Outbox) path(seq uint64) string {
	return filepath.Join(o.dir, fmt.Sprintf("%020d.json", seq))
}

func (o *Outbox) read(seq uint64) (*outboxEntry, error) {
	b, err := os.ReadFile(o.path(seq))
	if err != nil {
		return nil, err
	}
	var e outboxEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	if e.Version != outboxVersion || e.Status.Seq != seq {
		return nil, fmt.Errorf("version %d seq %d in file %d", e.Version, e.Status.Seq, seq)
	}
	return &e, nil
}

func (o *Outbox) writeMeta() error {
	o.meta.Version = outboxVersion
	b, _ := json.Marshal(o.meta)
	return atomicfile.WriteFile(filepath.Join(o.dir, "meta.json"), b, 0o600)
}

// Enqueue numbers s with the next sequence number, stores it durably and
// returns the number. keep marks a transition (new commit, new problem) that
// a routine report must not push out.
func (o *Outbox) Enqueue(s api.Status, keep bool) (uint64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	seq := o.meta.Seq + 1
	s.Seq = seq
	b, err := json.Marshal(outboxEntry{Version: outboxVersion, Keep: keep, Status: s})
	if err != nil {
		return 0, fmt.Errorf("outbox: encode: %w", err)
	}
	// The report first, then the counter: a crash in between is recovered by
	// OpenOutbox from the file names, so a number is never given twice.
	if err := atomicfile.WriteFile(o.path(seq), b, 0o600); err != nil {
		return 0, fmt.Errorf("outbox: %w", err)
	}
	o.meta.Seq = seq
	o.queued = append(o.queued, seq)
	o.keep[seq] = keep
	for len(o.queued) > o.max {
		o.dropOne()
	}
	if err := o.writeMeta(); err != nil {
		return 0, err
	}
	o.changed()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return seq, nil
}

// dropOne removes the oldest routine report that a newer one supersedes, or
// else the oldest report. Called with mu held and more than max queued.
func (o *Outbox) dropOne() {
	victim := 0
	for i, seq := range o.queued[:len(o.queued)-1] {
		if !o.keep[seq] {
			victim = i
			break
		}
	}
	seq := o.queued[victim]
	if err := atomicfile.Remove(o.path(seq)); err != nil {
		o.log.Warn("outbox: drop", "seq", seq, "err", err)
	}
	o.meta.Dropped++
	o.log.Info("outbox full: dropped a report", "seq", seq, "transition", o.keep[seq], "dropped_total", o.meta.Dropped)
	o.queued = append(o.queued[:victim], o.queued[victim+1:]...)
	delete(o.keep, seq)
}

// Depth returns how many reports wait for delivery.
func (o *Outbox) Depth() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.queued)
}

// Dropped returns how many reports were dropped over the agent's life.
func (o *Outbox) Dropped() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.meta.Dropped
}

// Seq returns the last sequence number assigned.
func (o *Outbox) Seq() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.meta.Seq
}

func (o *Outbox) changed() {
	if o.onDepth != nil {
		o.onDepth(len(o.queued), o.meta.Dropped)
	}
}

// Wake returns a channel that receives after each Enqueue.
func (o *Outbox) Wake() <-chan struct{} { return o.wake }

// Flush delivers queued reports oldest first until the queue is empty or a
// delivery fails, and returns how many it delivered. A report the hub
// rejects as malformed is dropped (counted), not retried forever.
func (o *Outbox) Flush(ctx context.Context, r Reporter) (int, error) {
	n := 0
	for {
		o.mu.Lock()
		if len(o.queued) == 0 {
			o.mu.Unlock()
			return n, nil
		}
		seq := o.queued[0]
		ent, err := o.read(seq)
		o.mu.Unlock()
		if err != nil {
			return n, fmt.Errorf("outbox: read %d: %w", seq, err)
		}
		err = r.Report(ctx, ent.Status)
		permanent := false
		var he *api.Error
		if errors.As(err, &he) && (he.Status == http.StatusBadRequest || he.Status == http.StatusRequestEntityTooLarge) {
			o.log.Warn("outbox: hub rejected a report; dropping it", "seq", seq, "err", err)
			permanent = true
		} else if err != nil {
			return n, fmt.Errorf("deliver status %d: %w", seq, err)
		}
		o.mu.Lock()
		if len(o.queued) > 0 && o.queued[0] == seq {
			if err := atomicfile.Remove(o.path(seq)); err != nil {
				o.mu.Unlock()
				return n, fmt.Errorf("outbox: %w", err)
			}
			o.queued = o.queued[1:]
			delete(o.keep, seq)
			if permanent {
				o.meta.Dropped++
				_ = o.writeMeta()
			}
			o.changed()
		}
		o.mu.Unlock()
		if !permanent {
			n++
		}
	}
}

// OutboxStats is what an outbox holds, read without opening it for writing.
type OutboxStats struct {
	Queued  int    `json:"queued"`
	Seq     uint64 `json:"seq"`
	Dropped uint64 `json:"dropped"`
}

// ReadOutboxStats counts the reports queued in dir; it changes nothing, so
// `shoal-agent status` may call it while the agent runs.
func ReadOutboxStats(dir string) (OutboxStats, error) {
	var s OutboxStats
	if b, err := os.ReadFile(filepath.Join(dir, "meta.json")); err == nil {
		var m outboxMeta
		if err := json.Unmarshal(b, &m); err != nil {
			return s, fmt.Errorf("outbox meta: %w", err)
		}
		s.Seq, s.Dropped = m.Seq, m.Dropped
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("outbox meta: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("outbox: %w", err)
	}
	for _, e := range ents {
		if seq, ok := parseEntryName(e.Name()); ok {
			s.Queued++
			s.Seq = max(s.Seq, seq)
		}
	}
	return s, nil
}
