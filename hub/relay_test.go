package hub

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub/store"
)

// enrolRelay enrols relay id through the real client and returns its
// certificate as a tls.Certificate.
func (th *testHub) enrolRelay(t *testing.T, id string) *tls.Certificate {
	t.Helper()
	tr, err := CreateRelayToken(t.Context(), th.Store, id, []string{"127.0.0.1", "relay." + id + ".example"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	c, err := client.Enrol(t.Context(), th.URL, tr.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: th.CAFingerprint()})
	if err != nil {
		t.Fatalf("enrol relay %s: %v", id, err)
	}
	tc, err := tls.X509KeyPair([]byte(c.Certificate), mustPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	return &tc
}

// fwd sends a request over hc, forwarding the device certificate dc when not nil.
func fwd(t *testing.T, hc *http.Client, method, url string, dc *tls.Certificate, body []byte) (int, *api.Error, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if dc != nil {
		req.Header.Set(api.HeaderDeviceCert, base64.StdEncoding.EncodeToString(dc.Certificate[0]))
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var ae api.Error
		if err := json.Unmarshal(b, &ae); err != nil || ae.Reason == "" {
			t.Fatalf("%s %s: %d without a JSON error: %q", method, url, resp.StatusCode, b)
		}
		return resp.StatusCode, &ae, b
	}
	return resp.StatusCode, nil, b
}

// TestRelayRole: a relay enrols with its own token and role; its certificate
// is a server certificate for the token's hosts; it acts only forwarding a
// device's certificate, which the hub checks like a direct connection's; a
// device's certificate cannot act as a relay; a relay reads only its own
// site's records and sees only its own devices in pokes; a device moves
// between relays and to the hub; a revoked relay is refused.
func TestRelayRole(t *testing.T) {
	backends(t, func(t *testing.T, open func(t *testing.T) store.Store) {
		th := startHub(t, open(t))
		ctx := t.Context()
		relayA, relayB := th.enrolRelay(t, "site-a"), th.enrolRelay(t, "site-b")
		leaf, _ := x509.ParseCertificate(relayA.Certificate[0])
		if leaf.Subject.Organization[0] != api.OrgRelay || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) ||
			!slices.Contains(leaf.DNSNames, "relay.site-a.example") || len(leaf.IPAddresses) != 1 {
			t.Fatalf("relay certificate: %v %v %v %v", leaf.Subject, leaf.ExtKeyUsage, leaf.DNSNames, leaf.IPAddresses)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(th.CAPEM())
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "relay.site-a.example"}); err != nil {
			t.Fatalf("devices cannot verify the relay's server certificate: %v", err)
		}
		cl1, k1 := th.enrol(t, "dev-1")
		cl2, k2 := th.enrol(t, "dev-2")
		dev1, dev2 := deviceCert(t, cl1, k1), deviceCert(t, cl2, k2)
		hcA, hcB, hc1 := th.raw(t, relayA), th.raw(t, relayB), th.raw(t, dev1)

		// A relay token never enrols a device, and the other way round.
		tr, err := CreateRelayToken(ctx, th.Store, "site-c", []string{"10.0.0.9"}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Enrol(ctx, th.URL, tr.Token, newKey(t), api.KeyTPM, client.EnrolOptions{CAFingerprint: th.CAFingerprint()}); !isAPI(err, 400, api.ReasonBadRequest) {
			t.Errorf("relay token with a TPM key kind: %v", err)
		}

		st1 := mustJSON(t, status("dev-1", 1, api.StateConverged))
		cases := []struct {
			name   string
			hc     *http.Client
			method string
			path   string
			dc     *tls.Certificate
			body   []byte
			code   int
			reason string
		}{
			{"relay alone is not a device", hcA, "POST", "/v1/status", nil, st1, 403, api.ReasonRelayNotDevice},
			{"relay reads nothing as itself", hcA, "GET", "/v1/devices/site-a", nil, nil, 403, api.ReasonRelayNotDevice},
			{"device forwarding another device", hc1, "POST", "/v1/status", dev2, st1, 403, api.ReasonDeviceNotRelay},
			{"device forwarding itself", hc1, "POST", "/v1/status", dev1, st1, 403, api.ReasonDeviceNotRelay},
			{"device on the relay status endpoint", hc1, "POST", "/v1/relay/status", nil, mustJSON(t, &api.RelayStatus{APIVersion: api.Version, Time: time.Now()}), 403, api.ReasonDeviceNotRelay},
			{"device on the relay poke endpoint", hc1, "GET", "/v1/relay/poke?wait=0s", nil, nil, 403, api.ReasonDeviceNotRelay},
			{"relay forwarding a relay", hcA, "POST", "/v1/status", relayB, st1, 403, api.ReasonDeviceNotRelay},
			{"relay status with a forwarded device", hcA, "POST", "/v1/relay/status", dev1, mustJSON(t, &api.RelayStatus{APIVersion: api.Version, Time: time.Now()}), 403, api.ReasonDeviceNotRelay},
			{"relay forwarding garbage", hcA, "POST", "/v1/status", &tls.Certificate{Certificate: [][]byte{[]byte("junk")}}, st1, 401, api.ReasonUnauthorized},
			{"relay forwarding a report as another device", hcA, "POST", "/v1/status", dev2, st1, 403, api.ReasonForbidden},
			{"relay status as another relay", hcA, "POST", "/v1/relay/status", nil, mustJSON(t, &api.RelayStatus{APIVersion: api.Version, RelayID: "site-b", Time: time.Now()}), 403, api.ReasonForbidden},
			{"relay status malformed", hcA, "POST", "/v1/relay/status", nil, []byte(`{"apiVersion":`), 400, api.ReasonBadRequest},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				code, ae, b := fwd(t, c.hc, c.method, th.URL+c.path, c.dc, c.body)
				if code != c.code || ae == nil || ae.Reason != c.reason {
					t.Fatalf("%d %s, want %d %s", code, b, c.code, c.reason)
				}
			})
		}

		// Forwarded for dev-1 through site-a: stored, and the hub knows the path.
		if code, ae, _ := fwd(t, hcA, "POST", th.URL+"/v1/status", dev1, st1); code != 200 {
			t.Fatalf("forwarded report: %d %v", code, ae)
		}
		if d, err := th.Store.Device(ctx, "dev-1"); err != nil || d.LatestSeq != 1 || d.Relay != "site-a" {
			t.Fatalf("dev-1 after a forwarded report: %+v, %v", d, err)
		}
		// A resend through the relay is a duplicate, as straight to the hub.
		_, _, b := fwd(t, hcA, "POST", th.URL+"/v1/status", dev1, st1)
		var ack api.StatusAck
		if err := json.Unmarshal(b, &ack); err != nil || !ack.Duplicate {
			t.Fatalf("resent report: %s", b)
		}
		// The nonce comes from the hub, for the forwarded device.
		if code, ae, b := fwd(t, hcA, "POST", th.URL+"/v1/attest/nonce", dev1, nil); code != 200 {
			t.Fatalf("forwarded nonce: %d %v", code, ae)
		} else {
			var n api.Nonce
			if err := json.Unmarshal(b, &n); err != nil || n.Validate() != nil {
				t.Fatalf("nonce: %s", b)
			}
		}
		// Site a reads its device's records; site b does not, nor anyone
		// through site a a device of the hub's own.
		if code, ae, _ := fwd(t, hcA, "GET", th.URL+"/v1/devices/dev-1/reports", dev1, nil); code != 200 {
			t.Fatalf("site a reads dev-1: %d %v", code, ae)
		}
		if code, ae, _ := fwd(t, hcB, "GET", th.URL+"/v1/devices/dev-1/reports", dev1, nil); code != 403 || ae.Reason != api.ReasonForbidden {
			t.Fatalf("site b reads dev-1: %d %v", code, ae)
		}
		if _, err := cl2.Send(ctx, status("dev-2", 1, api.StateConverged)); err != nil {
			t.Fatal(err)
		}
		if code, ae, _ := fwd(t, hcA, "GET", th.URL+"/v1/devices/dev-2", dev2, nil); code != 403 || ae.Reason != api.ReasonForbidden {
			t.Fatalf("site a reads dev-2 (straight to the hub): %d %v", code, ae)
		}

		// Pokes: site a sees fleet-wide and group pokes, and its own devices
		// only in device pokes; site b none of site a's devices.
		cursor := func(hc *http.Client) int64 {
			_, _, b := fwd(t, hc, "GET", th.URL+"/v1/relay/poke?wait=0s", nil, nil)
			var p api.RelayPokes
			if err := json.Unmarshal(b, &p); err != nil || p.Validate() != nil {
				t.Fatalf("relay poll: %s", b)
			}
			return p.Cursor
		}
		from := cursor(hcB)
		for _, p := range []api.PokeRequest{
			{APIVersion: api.Version, Devices: []string{"dev-1", "dev-2"}, Reason: "operator"},
			{APIVersion: api.Version, Devices: []string{"dev-2"}, Reason: "operator"},
			{APIVersion: api.Version, Group: "edge", Reason: "operator"},
			{APIVersion: api.Version, Commit: "abc", Reason: "webhook"},
		} {
			operatorPoke(t, th, p)
		}
		pollFrom := func(hc *http.Client) api.RelayPokes {
			_, _, b := fwd(t, hc, "GET", th.URL+"/v1/relay/poke?wait=5s&after="+itoa(from), nil, nil)
			var p api.RelayPokes
			if err := json.Unmarshal(b, &p); err != nil || p.Validate() != nil {
				t.Fatalf("relay poll: %s", b)
			}
			return p
		}
		pa, pb := pollFrom(hcA), pollFrom(hcB)
		if len(pa.Pokes) != 3 || !slices.Equal(pa.Pokes[0].Devices, []string{"dev-1"}) || pa.Pokes[1].Group != "edge" || pa.Pokes[2].Commit != "abc" {
			t.Errorf("site a's pokes: %+v", pa.Pokes)
		}
		if len(pb.Pokes) != 2 || pb.Pokes[0].Group != "edge" || pa.Cursor != pb.Cursor || pa.Cursor != from+4 {
			t.Errorf("site b's pokes: %+v (cursor %d, a's %d)", pb.Pokes, pb.Cursor, pa.Cursor)
		}

		// Relay status is kept and listed, with the device count.
		rs := api.RelayStatus{APIVersion: api.Version, Time: time.Now().UTC(), Devices: 1, Cache: api.RelayCache{Bytes: 10, Limit: 100}, Backlog: api.RelayBacklog{Reports: 3}}
		if code, ae, _ := fwd(t, hcA, "POST", th.URL+"/v1/relay/status", nil, mustJSON(t, &rs)); code != 204 {
			t.Fatalf("relay status: %d %v", code, ae)
		}
		_, _, b = call(t, th.raw(t, nil), "GET", th.URL+"/v1/admin/relays", th.Operator, nil)
		var list []api.Relay
		if err := json.Unmarshal(b, &list); err != nil || len(list) != 2 || list[0].ID != "site-a" || list[0].DeviceCount != 1 ||
			list[0].Status == nil || list[0].Status.Backlog.Reports != 3 || list[0].Status.RelayID != "site-a" {
			t.Fatalf("relays: %s", b)
		}

		// dev-1 moves to site b, then to the hub directly.
		st2 := mustJSON(t, status("dev-1", 2, api.StateConverged))
		if code, ae, _ := fwd(t, hcB, "POST", th.URL+"/v1/status", dev1, st2); code != 200 {
			t.Fatalf("report through site b: %d %v", code, ae)
		}
		if d, _ := th.Store.Device(ctx, "dev-1"); d.Relay != "site-b" {
			t.Fatalf("dev-1 after moving: relay %q", d.Relay)
		}
		if code, _, _ := fwd(t, hcA, "GET", th.URL+"/v1/devices/dev-1", dev1, nil); code != 403 {
			t.Fatalf("site a still reads dev-1 after it moved: %d", code)
		}
		if _, err := cl1.Send(ctx, status("dev-1", 3, api.StateConverged)); err != nil {
			t.Fatal(err)
		}
		if d, _ := th.Store.Device(ctx, "dev-1"); d.Relay != "" || d.LatestSeq != 3 {
			t.Fatalf("dev-1 straight to the hub: relay %q seq %d", d.Relay, d.LatestSeq)
		}

		// Revoked: refused within the relay cache's time.
		code, _, _ := call(t, th.raw(t, nil), "POST", th.URL+"/v1/admin/relays/site-a/revoke", th.Operator, nil)
		if code != 204 {
			t.Fatalf("revoke relay: %d", code)
		}
		code, ae, _ := fwd(t, th.raw(t, relayA), "POST", th.URL+"/v1/relay/status", nil, mustJSON(t, &rs))
		if code != 403 || ae.Reason != api.ReasonDeviceRevoked {
			t.Fatalf("revoked relay: %d %v", code, ae)
		}
	})
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }
