package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// devices is what the relay knows of the devices that talk to it: the
// certificate each presented last (reports held for the hub are forwarded
// with it), its groups (to match pokes), when it was last seen, and its
// latest report (republished to MQTT). devices/<id>.cert is written before
// a report that needs it is stored; devices/<id>.json is kept every
// flush and at close, so a crash loses at most the last few "last seen".
type devices struct {
	dir string

	mu    sync.Mutex
	m     map[string]*deviceRec
	dirty map[string]bool
}

type deviceRec struct {
	Groups   []string        `json:"groups,omitempty"`
	LastSeen time.Time       `json:"lastSeen"`
	Seq      uint64          `json:"seq,omitempty"`
	Status   json.RawMessage `json:"status,omitempty"`
	// Refused is the hub's refusal of the device (revoked, superseded),
	// for the certificate it holds; a new certificate clears it.
	Refused *api.Error `json:"refused,omitempty"`
	cert    []byte
}

func openDevices(dir string) (*devices, error) {
	d := &devices{dir: dir, m: map[string]*deviceRec{}, dirty: map[string]bool{}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devices: %w", err)
	}
	if err := atomicfile.CleanTemp(dir); err != nil {
		return nil, fmt.Errorf("devices: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("devices: %w", err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".cert")
		if !ok || !api.ValidDeviceID(id) {
			continue
		}
		rec := &deviceRec{}
		if rec.cert, err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
			return nil, fmt.Errorf("devices: %w", err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, id+".json")); err == nil {
			_ = json.Unmarshal(b, rec) // a damaged record only loses its details
		}
		d.m[id] = rec
	}
	return d, nil
}

// seen records a device's certificate (durably, when it changed) and returns
// its hub refusal, if the hub refused that certificate.
func (d *devices) seen(id string, cert []byte, now time.Time) (*api.Error, error) {
	d.mu.Lock()
	rec := d.m[id]
	if rec == nil {
		rec = &deviceRec{}
		d.m[id] = rec
	}
	changed := !bytes.Equal(rec.cert, cert)
	rec.LastSeen = now
	d.dirty[id] = true
	refused := rec.Refused
	d.mu.Unlock()
	if !changed {
		return refused, nil
	}
	if err := atomicfile.WriteFile(filepath.Join(d.dir, id+".cert"), cert, 0o600); err != nil {
		return nil, fmt.Errorf("devices: %w", err)
	}
	d.mu.Lock()
	rec.cert, rec.Refused = cert, nil
	d.mu.Unlock()
	return nil, nil
}

// report keeps a device's latest report and groups.
func (d *devices) report(id string, s *api.Status, body []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rec := d.m[id]
	if rec == nil || s.Seq < rec.Seq {
		return
	}
	rec.Seq, rec.Groups, rec.Status = s.Seq, s.Groups, body
	d.dirty[id] = true
}

// refuse remembers the hub's refusal of the device's current certificate.
func (d *devices) refuse(id string, e *api.Error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rec := d.m[id]; rec != nil {
		rec.Refused = e
		d.dirty[id] = true
	}
}

func (d *devices) cert(id string) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rec := d.m[id]; rec != nil {
		return rec.cert
	}
	return nil
}

func (d *devices) groups(id string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rec := d.m[id]; rec != nil {
		return rec.Groups
	}
	return nil
}

// statuses returns every device's latest report, by device.
func (d *devices) statuses() map[string]json.RawMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]json.RawMessage{}
	for id, rec := range d.m {
		if len(rec.Status) > 0 {
			out[id] = rec.Status
		}
	}
	return out
}

// active counts devices seen since t.
func (d *devices) active(since time.Time) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, rec := range d.m {
		if !rec.LastSeen.Before(since) {
			n++
		}
	}
	return n
}

// ids lists the devices the relay knows, sorted.
func (d *devices) ids() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.m))
	for id := range d.m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// flush writes the records changed since the last flush.
func (d *devices) flush() error {
	d.mu.Lock()
	todo := map[string][]byte{}
	for id := range d.dirty {
		if rec := d.m[id]; rec != nil {
			b, err := json.Marshal(rec)
			if err == nil {
				todo[id] = b
			}
		}
	}
	clear(d.dirty)
	d.mu.Unlock()
	var first error
	for id, b := range todo {
		if err := atomicfile.WriteFile(filepath.Join(d.dir, id+".json"), b, 0o600); err != nil && first == nil {
			first = fmt.Errorf("devices: %w", err)
		}
	}
	return first
}
