package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/shoalfleet/shoal/api"
)

// Relay is one site relay on the relays page: its health (from the status
// it reports every interval), its devices, backlog, cache and mirror.
type Relay struct {
	ID           string           `json:"id"`
	Hosts        []string         `json:"hosts"`
	Revoked      bool             `json:"revoked,omitempty"`
	CertNotAfter time.Time        `json:"certNotAfter"`
	LastSeen     time.Time        `json:"lastSeen,omitzero"`
	Health       string           `json:"health"` // ok | stale | never | revoked
	DeviceCount  int              `json:"deviceCount"`
	Devices      []string         `json:"devices,omitempty"` // the first maxListed of them
	More         int              `json:"more,omitempty"`    // how many more
	BacklogBad   bool             `json:"backlogBad,omitempty"`
	Status       *api.RelayStatus `json:"status,omitempty"`
}

// maxListed bounds the device IDs listed per relay on the page.
const maxListed = 30

// relayStale is how long without a status before a relay shows as stale:
// relays report every 30s by default.
const relayStale = 3 * time.Minute

func (s *server) relays(r *http.Request) ([]Relay, error) {
	rs, err := s.st.ListRelays(r.Context())
	if err != nil {
		return nil, err
	}
	now := s.o.Now()
	out := make([]Relay, 0, len(rs))
	for _, rl := range rs {
		v := Relay{ID: rl.ID, Hosts: rl.Hosts, Revoked: !rl.Revoked.IsZero(), CertNotAfter: rl.CertNotAfter, LastSeen: rl.LastSeen, DeviceCount: rl.DeviceCount}
		if rl.DeviceCount > 0 {
			ids, err := s.st.RelayDevices(r.Context(), rl.ID)
			if err != nil {
				return nil, err
			}
			if len(ids) > maxListed {
				v.More, ids = len(ids)-maxListed, ids[:maxListed]
			}
			v.Devices = ids
		}
		if len(rl.Status) > 0 {
			var st api.RelayStatus
			if json.Unmarshal(rl.Status, &st) == nil {
				v.Status = &st
				v.BacklogBad = st.Backlog.Reports > 0 && now.Sub(st.Backlog.Oldest) > relayStale
			}
		}
		switch {
		case v.Revoked:
			v.Health = "revoked"
		case rl.LastSeen.IsZero():
			v.Health = "never"
		case now.Sub(rl.LastSeen) > relayStale:
			v.Health = "stale"
		default:
			v.Health = "ok"
		}
		out = append(out, v)
	}
	return out, nil
}

type relaysPage struct{ Relays []Relay }

func (s *server) handleRelays(w http.ResponseWriter, r *http.Request) {
	rs, err := s.relays(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, "relays", http.StatusOK, &layout{Title: "Relays", Nav: "relays", Body: relaysPage{rs}})
}

func (s *server) apiRelays(w http.ResponseWriter, r *http.Request) {
	rs, err := s.relays(r)
	if err != nil {
		s.failJSON(w, r, err)
		return
	}
	writeJSON(w, rs)
}

// humanBytes writes a byte count in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
