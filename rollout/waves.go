// Package rollout is staged rollouts from Git: which wave each device of a
// commit falls in, what its reports say about the commit (health gates),
// the budgets, and the controller's decisions (open a wave, start and end
// its bake, admit devices, halt), all as pure functions over reported
// status and the time; and the hub's signing of grants. The hub runs the
// controller and keeps its state in its store; the agent links only
// rollout/grant, which checks grants.
//
// It imports spec and api only.
package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"sort"
	"strings"

	"github.com/shoalfleet/shoal/spec"
)

// Candidate is a device a commit changes, as wave placement sees it.
type Candidate struct {
	ID     string
	Labels map[string]string
}

// Hash is the stable hash of a device and a commit that orders a rollout:
// the same devices go first for one commit on every hub, and a different
// first wave for the next commit.
func Hash(id, commit string) uint64 {
	s := sha256.Sum256([]byte(commit + "\x00" + id))
	return binary.BigEndian.Uint64(s[:8])
}

// spreadKey is a device's value of the policy's spread_by keys.
func spreadKey(p *spec.Rollout, labels map[string]string) string {
	if len(p.SpreadBy) == 0 {
		return ""
	}
	parts := make([]string, len(p.SpreadBy))
	for i, k := range p.SpreadBy {
		parts[i] = labels[k]
	}
	return strings.Join(parts, "\x00")
}

// Order sorts the devices of one track in the order waves take them: by
// hash, or with spread_by, round-robin over the spread values (each
// value's first device by hash, then each one's second...), so an early,
// small wave takes one device from as many sites as it can.
func Order(p *spec.Rollout, commit string, devs []Candidate) []Candidate {
	type ranked struct {
		c    Candidate
		h    uint64
		rank int
	}
	rs := make([]ranked, len(devs))
	for i, d := range devs {
		rs[i] = ranked{c: d, h: Hash(d.ID, commit)}
	}
	byHash := func(a, b ranked) bool {
		if a.h != b.h {
			return a.h < b.h
		}
		return a.c.ID < b.c.ID
	}
	sort.Slice(rs, func(i, j int) bool { return byHash(rs[i], rs[j]) })
	if len(p.SpreadBy) > 0 {
		seen := map[string]int{}
		for i := range rs {
			k := spreadKey(p, rs[i].c.Labels)
			rs[i].rank = seen[k]
			seen[k]++
		}
		sort.SliceStable(rs, func(i, j int) bool { return rs[i].rank < rs[j].rank })
	}
	out := make([]Candidate, len(rs))
	for i, r := range rs {
		out[i] = r.c
	}
	return out
}

// Assign places the devices of one track (all under policy p) in p's waves
// for commit and returns each device's wave index. A wave takes, in Order,
// the devices left that its selector matches, at most its limit (a share
// is of all the track's devices); the last wave takes every device left.
// With spread_by, a wave other than the last never holds every device of a
// spread value that has more than one: the last of them goes on.
func Assign(p *spec.Rollout, commit string, devs []Candidate) map[string]int {
	order := Order(p, commit, devs)
	out := make(map[string]int, len(devs))
	total := len(devs)
	size := map[string]int{}
	if len(p.SpreadBy) > 0 {
		for _, d := range devs {
			size[spreadKey(p, d.Labels)]++
		}
	}
	for wi := range p.Waves {
		w := &p.Waves[wi]
		last := wi == len(p.Waves)-1
		var take []Candidate
		for _, d := range order {
			if _, done := out[d.ID]; done {
				continue
			}
			if last || w.Selects(d.ID, d.Labels) {
				take = append(take, d)
			}
		}
		if !last && w.Limit != nil {
			if n := w.Limit.Of(total); len(take) > n {
				take = take[:n]
			}
		}
		if !last && len(p.SpreadBy) > 0 {
			in := map[string]int{}
			for _, d := range take {
				in[spreadKey(p, d.Labels)]++
			}
			for i := len(take) - 1; i >= 0; i-- {
				k := spreadKey(p, take[i].Labels)
				if size[k] > 1 && in[k] == size[k] {
					in[k]--
					take = append(take[:i], take[i+1:]...)
				}
			}
		}
		for _, d := range take {
			out[d.ID] = wi
		}
	}
	return out
}
