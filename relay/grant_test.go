package relay_test

import (
	"crypto/rand"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/rollout/grant"
)

// TestRelayForwardsGrants: a device behind a relay asks for a rollout grant
// as it would ask the hub; the relay forwards it like any device call, and
// the grant that comes back is the hub's, for this device and request.
func TestRelayForwardsGrants(t *testing.T) {
	s := newSite(t)
	d, err := s.enrol("d1")
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	commit, spec := strings.Repeat("1", 40), strings.Repeat("2", 64)
	res, err := d.cl.Grant(t.Context(), &api.GrantRequest{APIVersion: api.Version, Commit: commit, SpecHash: spec, Nonce: nonce})
	if err != nil {
		t.Fatalf("grant through the relay: %v", err)
	}
	if res.Grant == nil {
		t.Fatalf("no grant: %+v", res.Wait)
	}
	ck, err := grant.NewChecker(s.hubCA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ck.Check(res.Grant, grant.Expect{Device: "d1", Commit: commit, SpecHash: spec, Nonce: nonce})
	if err != nil || b.Why != "no-rollout" {
		t.Fatalf("grant through the relay: %+v, %v", b, err)
	}
}
