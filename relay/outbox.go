package relay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// outbox holds device reports on the relay's disk until the hub has them:
// outbox/<device>/<seq, 20 digits>.json, each written atomically (temp,
// fsync, rename, fsync the directory) before the device is answered. A
// report is removed only once the hub acknowledged it (stored or
// duplicate) or refused it for good, so a crash or power cut at any moment
// loses none; one sent again after a crash is a duplicate the hub
// recognises by (device, seq). Reports go to the hub per device in seq
// order, the device's own sequence numbers unchanged.
type outbox struct {
	dir string

	mu      sync.Mutex
	pending map[string][]pendingReport // by device, ascending seq
	wake    chan struct{}
}

type pendingReport struct {
	seq      uint64
	received time.Time
}

func reportName(seq uint64) string { return fmt.Sprintf("%020d.json", seq) }

// openOutbox loads what an earlier run left.
func openOutbox(dir string) (*outbox, error) {
	o := &outbox{dir: dir, pending: map[string][]pendingReport{}, wake: make(chan struct{}, 1)}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	devs, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	for _, d := range devs {
		if !d.IsDir() || !api.ValidDeviceID(d.Name()) {
			continue
		}
		sub := filepath.Join(dir, d.Name())
		if err := atomicfile.CleanTemp(sub); err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
		files, err := os.ReadDir(sub)
		if err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
		for _, f := range files {
			name, ok := strings.CutSuffix(f.Name(), ".json")
			if !ok {
				continue
			}
			seq, err := strconv.ParseUint(name, 10, 64)
			if err != nil || seq == 0 {
				continue
			}
			var at time.Time
			if fi, err := f.Info(); err == nil {
				at = fi.ModTime()
			}
			o.pending[d.Name()] = append(o.pending[d.Name()], pendingReport{seq, at})
		}
		slices.SortFunc(o.pending[d.Name()], func(a, b pendingReport) int { return cmpU(a.seq, b.seq) })
	}
	return o, nil
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// put stores one validated, normalised report durably.
func (o *outbox) put(device string, seq uint64, body []byte, now time.Time) error {
	sub := filepath.Join(o.dir, device)
	if err := os.MkdirAll(sub, 0o700); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(sub, reportName(seq)), body, 0o600); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	o.mu.Lock()
	l := o.pending[device]
	i, found := slices.BinarySearchFunc(l, seq, func(p pendingReport, s uint64) int { return cmpU(p.seq, s) })
	if !found {
		o.pending[device] = slices.Insert(l, i, pendingReport{seq, now})
	}
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return nil
}

// head returns a device's oldest pending report.
func (o *outbox) head(device string) (uint64, []byte, bool, error) {
	o.mu.Lock()
	l := o.pending[device]
	o.mu.Unlock()
	if len(l) == 0 {
		return 0, nil, false, nil
	}
	b, err := os.ReadFile(filepath.Join(o.dir, device, reportName(l[0].seq)))
	if errors.Is(err, os.ErrNotExist) {
		// Gone from under us (removed by hand): forget it.
		o.done(device, l[0].seq)
		return o.head(device)
	}
	if err != nil {
		return 0, nil, false, fmt.Errorf("outbox: %w", err)
	}
	return l[0].seq, b, true, nil
}

// done removes a report the hub has.
func (o *outbox) done(device string, seq uint64) error {
	err := os.Remove(filepath.Join(o.dir, device, reportName(seq)))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("outbox: %w", err)
	}
	o.mu.Lock()
	l := o.pending[device]
	if i, found := slices.BinarySearchFunc(l, seq, func(p pendingReport, s uint64) int { return cmpU(p.seq, s) }); found {
		l = slices.Delete(l, i, i+1)
	}
	if len(l) == 0 {
		delete(o.pending, device)
	} else {
		o.pending[device] = l
	}
	o.mu.Unlock()
	return nil
}

// devices lists the devices with pending reports.
func (o *outbox) devices() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]string, 0, len(o.pending))
	for d := range o.pending {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// backlog counts what is held: reports, devices, and the oldest arrival.
func (o *outbox) backlog() api.RelayBacklog {
	o.mu.Lock()
	defer o.mu.Unlock()
	var b api.RelayBacklog
	for _, l := range o.pending {
		b.Reports += len(l)
		b.Devices++
		for _, p := range l {
			if b.Oldest.IsZero() || p.received.Before(b.Oldest) {
				b.Oldest = p.received
			}
		}
	}
	return b
}

// latest is the highest seq held for a device (0 when none).
func (o *outbox) latest(device string) uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	l := o.pending[device]
	if len(l) == 0 {
		return 0
	}
	return l[len(l)-1].seq
}
