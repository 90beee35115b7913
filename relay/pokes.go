package relay

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// pokeBoard holds the pokes the relay passes on to its devices, numbered
// by the relay itself (a device's cursor is the relay's, not the hub's),
// and wakes the devices' long polls. The hub's cursor and the relay's next
// number are kept in pokes.json so a restart neither repeats nor reuses one.
type pokeBoard struct {
	path string

	mu     sync.Mutex
	state  pokeState
	recent []localPoke // newest last, at most maxRecent
	ch     chan struct{}
}

type pokeState struct {
	Version int   `json:"version"`
	Hub     int64 `json:"hub"`  // the hub's cursor; -1 before the first poll
	Next    int64 `json:"next"` // the next local poke ID
}

type localPoke struct {
	api.RelayPoke
	local int64
}

const maxRecent = 1000

func openPokeBoard(path string) (*pokeBoard, error) {
	b := &pokeBoard{path: path, state: pokeState{Version: 1, Hub: -1, Next: 1}, ch: make(chan struct{})}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &b.state); err != nil || b.state.Next < 1 {
			return nil, fmt.Errorf("%s: damaged poke state", path)
		}
	case !os.IsNotExist(err):
		return nil, err
	}
	return b, nil
}

func (b *pokeBoard) hubCursor() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state.Hub
}

// add numbers pokes for the devices, moves the hub cursor to hub (when >= 0),
// persists both, and wakes every long poll.
func (b *pokeBoard) add(hub int64, ps []api.RelayPoke) error {
	b.mu.Lock()
	for _, p := range ps {
		b.recent = append(b.recent, localPoke{p, b.state.Next})
		b.state.Next++
	}
	if len(b.recent) > maxRecent {
		b.recent = append([]localPoke(nil), b.recent[len(b.recent)-maxRecent:]...)
	}
	if hub >= 0 {
		b.state.Hub = hub
	}
	data, _ := json.Marshal(&b.state)
	if len(ps) > 0 {
		close(b.ch)
		b.ch = make(chan struct{})
	}
	b.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(b.path, data, 0o600)
}

// latest is the last local ID handed out (0 when none).
func (b *pokeBoard) latest() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state.Next - 1
}

// find returns the newest poke after `after` that matches the device, the
// cursor to pass next time, and a channel closed at the next add. A cursor
// beyond the relay's last poke (one the device got elsewhere) counts as now.
func (b *pokeBoard) find(after int64, id string, groups []string) (*api.Poke, int64, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	after = min(after, b.state.Next-1)
	var hit *localPoke
	cur := after
	for i := range b.recent {
		p := &b.recent[i]
		if p.local <= after {
			continue
		}
		cur = p.local
		if p.Matches(id, groups) {
			hit = p
		}
	}
	if hit == nil {
		return nil, cur, b.ch
	}
	return &api.Poke{APIVersion: api.Version, ID: cur, Commit: hit.Commit, Reason: hit.Reason, Time: hit.Time}, cur, b.ch
}

// localPokeAll adds a poke for every device, made by the relay itself
// (a bundle import, a mirror update it found on its own).
func (b *pokeBoard) localPokeAll(commit, reason string, now time.Time) error {
	return b.add(-1, []api.RelayPoke{{Commit: commit, Reason: reason, Time: now}})
}
