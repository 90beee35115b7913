// Package sample holds the status report the hub benchmarks send: a
// realistic one, about 700 bytes of JSON (two apps, update and clock
// status), the same in every benchmark so their figures compare.
package sample

import (
	"time"

	"github.com/shoalfleet/shoal/api"
)

// Status returns the report a simulated device running agent sends as its
// seq-th report, made now.
func Status(agent string, seq uint64) api.Status {
	const commit = "3f2a9c1e0b7d4a6f8e5c2b1a0d9e8f7a6b5c4d3e"
	return api.Status{APIVersion: api.Version, Seq: seq, Time: time.Now().UTC(), State: api.StateConverged, Agent: agent,
		Groups: []string{"edge", "berlin"},
		Commit: api.CommitStatus{Attempted: commit, Applied: commit, SpecHash: "sha256:9b1d"},
		Apps: []api.AppStatus{{Name: "web", Image: "registry.example/web:1.4.2", State: "running", Health: "healthy"},
			{Name: "metrics", Image: "registry.example/metrics:0.9", State: "running", Health: "healthy"}},
		Update: &api.UpdateStatus{State: "idle", Slot: "a", Version: "2026.11.0"},
		Clock:  &api.ClockStatus{Trusted: true, Skew: 3 * time.Millisecond},
	}
}
