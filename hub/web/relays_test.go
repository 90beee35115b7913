package web_test

import (
	"crypto/sha256"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/web"
)

// TestRelaysPage: each relay's health, devices, backlog and cache use, and
// on a device's page the relay it reports through.
func TestRelaysPage(t *testing.T) {
	st := openSQLite(t)
	ctx := t.Context()
	now := time.Now()
	for _, id := range []string{"site-a", "site-b"} {
		h := sha256.Sum256([]byte("relay-" + id))
		if err := st.CreateToken(ctx, store.Token{Hash: h[:], Kind: store.TokenRelay, DeviceID: id, Hosts: []string{id + ".example"}, Created: now, Expires: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.EnrolRelay(ctx, h[:], now, store.Relay{CertSerial: "01", CertNotAfter: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	rs := api.RelayStatus{APIVersion: api.Version, RelayID: "site-a", Time: now, Devices: 1,
		Backlog: api.RelayBacklog{Reports: 7, Devices: 1, Oldest: now.Add(-10 * time.Minute)},
		Cache:   api.RelayCache{Bytes: 3 << 30, Limit: 20 << 30, Items: 2},
		Mirror:  api.RelayMirror{Commit: "0123456789abcdef0123456789abcdef01234567", Fetched: now}}
	b, _ := json.Marshal(rs)
	if err := st.PutRelayStatus(ctx, "site-a", now, b); err != nil {
		t.Fatal(err)
	}
	seed(t, st, "dev-1", 1, api.Status{State: api.StateConverged})
	seed(t, st, "dev-2", 1, api.Status{State: api.StateConverged})
	if err := st.SetDeviceRelay(ctx, "dev-1", "site-a"); err != nil {
		t.Fatal(err)
	}
	h, err := web.New(web.Options{Store: st, OpenAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) string {
		r := httptest.NewRequest("GET", path, nil)
		r.RemoteAddr = "127.0.0.1:1"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("%s: %d", path, w.Code)
		}
		return w.Body.String()
	}
	page := get("/relays")
	for _, want := range []string{`data-relay="site-a"`, `<a href="/devices/dev-1">dev-1</a>`, "3.0 GiB of 20.0 GiB", "7 report(s)", "01234567", `data-relay="site-b"`, "never"} {
		if !strings.Contains(page, want) {
			t.Errorf("relays page lacks %q", want)
		}
	}
	var list []web.Relay
	if err := json.Unmarshal([]byte(get("/api/v1/relays")), &list); err != nil || len(list) != 2 {
		t.Fatalf("relays JSON: %v %v", list, err)
	}
	if a := list[0]; a.Health != "ok" || a.DeviceCount != 1 || len(a.Devices) != 1 || a.Devices[0] != "dev-1" || !a.BacklogBad || a.Status.Cache.Items != 2 {
		t.Errorf("site-a: %+v", a)
	}
	if b := list[1]; b.Health != "never" || b.DeviceCount != 0 {
		t.Errorf("site-b: %+v", b)
	}
	if d := get("/devices/dev-1"); !strings.Contains(d, `site relay <a href="/relays#relay-site-a">site-a</a>`) {
		t.Error("dev-1's page does not name its relay")
	}
	if d := get("/devices/dev-2"); !strings.Contains(d, "the hub directly") {
		t.Error("dev-2's page does not say it reports to the hub directly")
	}
}
