package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/hub/store"
)

// testRelays: a relay token enrols a relay only, once, with its hosts; a
// device token never enrols a relay nor a relay token a device; relays stay
// out of the device list; each device remembers the relay it reports through.
func testRelays(t *testing.T, s store.Store) {
	ctx := t.Context()
	hosts := []string{"relay-a.site.example", "10.1.2.3"}
	if err := s.CreateToken(ctx, store.Token{Hash: hash("relay-tok"), Kind: store.TokenRelay, DeviceID: "site-a", Hosts: hosts, Created: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateToken(ctx, store.Token{Hash: hash("dev-tok"), Kind: store.TokenEnrol, DeviceID: "dev-r", Created: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PeekEnrolToken(ctx, hash("relay-tok"), t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("relay token peeked as a device token: %v", err)
	}
	if _, err := s.Enrol(ctx, hash("relay-tok"), t0, store.Device{KeyKind: "software", CertSerial: "01"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("relay token enrolled a device: %v", err)
	}
	if _, err := s.PeekRelayToken(ctx, hash("dev-tok"), t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device token peeked as a relay token: %v", err)
	}
	if _, err := s.EnrolRelay(ctx, hash("dev-tok"), t0, store.Relay{CertSerial: "01"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("device token enrolled a relay: %v", err)
	}
	tk, err := s.PeekRelayToken(ctx, hash("relay-tok"), t0)
	if err != nil || tk.DeviceID != "site-a" || !slices.Equal(tk.Hosts, hosts) {
		t.Fatalf("peek relay token: %+v, %v", tk, err)
	}
	r, err := s.EnrolRelay(ctx, hash("relay-tok"), t0, store.Relay{CertSerial: "0a", CertNotAfter: t0.Add(time.Hour)})
	if err != nil || r.ID != "site-a" || !slices.Equal(r.Hosts, hosts) {
		t.Fatalf("enrol relay: %+v, %v", r, err)
	}
	if _, err := s.EnrolRelay(ctx, hash("relay-tok"), t0, store.Relay{CertSerial: "0b"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("relay token used twice: %v", err)
	}
	if err := s.SetRelayCert(ctx, "site-a", "0c", t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Relay(ctx, "site-a")
	if err != nil || got.CertSerial != "0c" || !got.CertNotAfter.Equal(t0.Add(2*time.Hour)) || !got.Enrolled.Equal(t0) {
		t.Fatalf("relay: %+v, %v", got, err)
	}
	if err := s.PutRelayStatus(ctx, "site-a", t0.Add(time.Minute), []byte(`{"devices":2}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRelayStatus(ctx, "nope", t0, []byte(`{}`)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("status of an unknown relay: %v", err)
	}
	d, err := s.Enrol(ctx, hash("dev-tok"), t0, store.Device{KeyKind: "software", CertSerial: "01"})
	if err != nil {
		t.Fatal(err)
	}
	enrolled(t, s, "dev-other")
	if err := s.SetDeviceRelay(ctx, d.ID, "site-a"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Device(ctx, d.ID); err != nil || got.Relay != "site-a" {
		t.Fatalf("device relay: %q, %v", got.Relay, err)
	}
	if ids, err := s.RelayDevices(ctx, "site-a"); err != nil || !slices.Equal(ids, []string{d.ID}) {
		t.Fatalf("relay devices: %v, %v", ids, err)
	}
	devs, err := s.ListDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, dv := range devs {
		if dv.ID == "site-a" {
			t.Error("a relay is listed as a device")
		}
	}
	rs, err := s.ListRelays(ctx)
	if err != nil || len(rs) != 1 || rs[0].DeviceCount != 1 || string(rs[0].Status) != `{"devices":2}` || !rs[0].LastSeen.Equal(t0.Add(time.Minute)) {
		t.Fatalf("list relays: %+v, %v", rs, err)
	}
	// The device moves to the hub directly.
	if err := s.SetDeviceRelay(ctx, d.ID, ""); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.RelayDevices(ctx, "site-a"); err != nil || len(ids) != 0 {
		t.Fatalf("relay devices after the move: %v, %v", ids, err)
	}
	if err := s.RevokeRelay(ctx, "site-a", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRelayCert(ctx, "site-a", "0d", t0.Add(3*time.Hour)); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("renew a revoked relay: %v", err)
	}
	if err := s.PutRelayStatus(ctx, "site-a", t0, []byte(`{}`)); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("status of a revoked relay: %v", err)
	}
	if err := s.RevokeRelay(ctx, "nope", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke unknown relay: %v", err)
	}
}
