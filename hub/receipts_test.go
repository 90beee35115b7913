package hub

import (
	"crypto"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

func signedReceipt(t *testing.T, id, bundle, commit string, key crypto.Signer) json.RawMessage {
	t.Helper()
	r := &api.Receipt{APIVersion: api.ReceiptVersion, DeviceID: id, BundleHash: bundle, Commit: commit, Release: "2.1.0",
		Result: api.ReceiptApplied, Time: time.Now().UTC().Truncate(time.Second), KeyKind: api.KeySoftware, Errors: []string{"tpm quote: no TPM"}}
	if err := api.SignReceipt(r, key); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReceipts imports a batch of receipts into a real hub over TLS: each
// gets its outcome and reason, only accepted ones reach the database, a
// receipt imported twice is accepted once, and a malformed batch is a 4xx.
func TestReceipts(t *testing.T) {
	backends(t, func(t *testing.T, open func(t *testing.T) store.Store) {
		th := startHub(t, open(t))
		ctx := t.Context()
		_, ka := th.enrol(t, "dev-a")
		clb, kb := th.enrol(t, "dev-b")
		_, kc := th.enrol(t, "dev-c")
		if err := th.Store.RevokeDevice(ctx, "dev-c", time.Now()); err != nil {
			t.Fatal(err)
		}
		// dev-b enrolled before the hub recorded keys: its key is learnt at renewal.
		if err := th.Store.SetDeviceKey(ctx, "dev-b", nil); err != nil {
			t.Fatal(err)
		}
		stranger := newKey(t)
		h1, h2, h3 := strings.Repeat("1", 64), strings.Repeat("2", 64), strings.Repeat("3", 64)
		commit := strings.Repeat("c", 40)
		tampered := signedReceipt(t, "dev-a", h3, commit, ka)
		tampered = json.RawMessage(strings.Replace(string(tampered), commit, strings.Repeat("d", 40), 1))

		hc := th.raw(t, nil)
		post := func(rs ...json.RawMessage) api.ReceiptBatchResult {
			t.Helper()
			code, ae, body := call(t, hc, "POST", th.URL+"/v1/admin/receipts", th.Operator, mustJSON(t, api.ReceiptBatch{APIVersion: api.ReceiptVersion, Receipts: rs}))
			if code != http.StatusOK {
				t.Fatalf("import: %d %+v", code, ae)
			}
			var res api.ReceiptBatchResult
			mustUnmarshal(t, body, &res)
			if len(res.Outcomes) != len(rs) {
				t.Fatalf("%d outcomes for %d receipts", len(res.Outcomes), len(rs))
			}
			return res
		}
		cases := []struct {
			name      string
			raw       json.RawMessage
			accepted  bool
			duplicate bool
			reason    string
		}{
			{"good", signedReceipt(t, "dev-a", h1, commit, ka), true, false, ""},
			{"same device and bundle again", signedReceipt(t, "dev-a", h1, commit, ka), true, true, ""},
			{"signed by another key", signedReceipt(t, "dev-a", h2, commit, stranger), false, false, api.ReasonReceiptKeyMismatch},
			{"forged: changed after signing", tampered, false, false, api.ReasonReceiptInvalid},
			{"unsigned", json.RawMessage(`{"apiVersion":"shoal.receipt/v1","deviceID":"dev-a","result":"applied","time":"2026-01-01T00:00:00Z"}`), false, false, api.ReasonReceiptInvalid},
			{"not a receipt", json.RawMessage(`[1,2]`), false, false, api.ReasonReceiptInvalid},
			{"unknown device", signedReceipt(t, "dev-x", h1, commit, stranger), false, false, api.ReasonDeviceUnknown},
			{"revoked device", signedReceipt(t, "dev-c", h1, commit, kc), false, false, api.ReasonDeviceRevoked},
			{"device key not recorded", signedReceipt(t, "dev-b", h1, commit, kb), false, false, api.ReasonReceiptKeyUnknown},
		}
		raws := make([]json.RawMessage, len(cases))
		for i, c := range cases {
			raws[i] = c.raw
		}
		res := post(raws...)
		for i, c := range cases {
			o := res.Outcomes[i]
			if o.Accepted != c.accepted || o.Duplicate != c.duplicate || o.Reason != c.reason {
				t.Errorf("%s: outcome %+v, want accepted %t duplicate %t reason %q", c.name, o, c.accepted, c.duplicate, c.reason)
			}
			if !c.accepted && o.Message == "" {
				t.Errorf("%s: refused without a message", c.name)
			}
		}
		// Only the one good receipt is in the database.
		for id, want := range map[string]int{"dev-a": 1, "dev-b": 0, "dev-c": 0, "dev-x": 0} {
			if rs, err := th.Store.Receipts(ctx, id, 10); err != nil || len(rs) != want {
				t.Errorf("%s: %d receipts stored (%v), want %d", id, len(rs), err, want)
			}
		}
		rs, _ := th.Store.Receipts(ctx, "dev-a", 10)
		if r := rs[0]; r.BundleHash != h1 || r.Commit != commit || r.Release != "2.1.0" || r.Result != api.ReceiptApplied || len(r.Errors) != 1 || r.Received.IsZero() {
			t.Errorf("stored %+v", r)
		}

		// Renewal records dev-b's key; its receipt is then accepted.
		if _, err := clb.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		if o := post(signedReceipt(t, "dev-b", h1, commit, kb)).Outcomes[0]; !o.Accepted {
			t.Errorf("dev-b after renewal: %+v", o)
		}

		// The operator API lists them.
		code, _, body := call(t, hc, "GET", th.URL+"/v1/admin/devices/dev-a/receipts", th.Operator, nil)
		var recs []api.ReceiptRecord
		mustUnmarshal(t, body, &recs)
		if code != http.StatusOK || len(recs) != 1 || recs[0].Commit != commit {
			t.Errorf("GET receipts: %d %s", code, body)
		}
		if code, ae, _ := call(t, hc, "GET", th.URL+"/v1/admin/devices/dev-x/receipts", th.Operator, nil); code != http.StatusNotFound || ae.Reason != api.ReasonNotFound {
			t.Errorf("receipts of unknown device: %d", code)
		}

		before := map[string]int{}
		for _, id := range []string{"dev-a", "dev-b"} {
			rs, _ := th.Store.Receipts(ctx, id, 100)
			before[id] = len(rs)
		}
		good := signedReceipt(t, "dev-a", h2, commit, ka)
		bad := []struct {
			name   string
			bearer string
			method string
			body   []byte
			code   int
			reason string
		}{
			{"no operator token", "", "POST", mustJSON(t, api.ReceiptBatch{APIVersion: api.ReceiptVersion, Receipts: []json.RawMessage{good}}), 401, api.ReasonUnauthorized},
			{"device token is not an operator token", th.token(t, "dev-z", time.Hour), "POST", mustJSON(t, api.ReceiptBatch{APIVersion: api.ReceiptVersion, Receipts: []json.RawMessage{good}}), 401, api.ReasonUnauthorized},
			{"not JSON", th.Operator, "POST", []byte("receipts!"), 400, api.ReasonBadRequest},
			{"wrong version", th.Operator, "POST", mustJSON(t, api.ReceiptBatch{APIVersion: api.Version, Receipts: []json.RawMessage{good}}), 400, api.ReasonBadRequest},
			{"no receipts", th.Operator, "POST", mustJSON(t, api.ReceiptBatch{APIVersion: api.ReceiptVersion}), 400, api.ReasonBadRequest},
			{"trailing data", th.Operator, "POST", append(mustJSON(t, api.ReceiptBatch{APIVersion: api.ReceiptVersion, Receipts: []json.RawMessage{good}}), []byte("{}")...), 400, api.ReasonBadRequest},
			{"too large", th.Operator, "POST", []byte(`{"apiVersion":"shoal.receipt/v1","receipts":["` + strings.Repeat("x", api.MaxReceiptBatchBytes) + `"]}`), 413, api.ReasonTooLarge},
			{"wrong method", th.Operator, "GET", nil, 405, api.ReasonMethod},
		}
		for _, c := range bad {
			code, ae, _ := call(t, hc, c.method, th.URL+"/v1/admin/receipts", c.bearer, c.body)
			if code != c.code || ae == nil || ae.Reason != c.reason {
				t.Errorf("%s: %d %+v, want %d %s", c.name, code, ae, c.code, c.reason)
			}
		}
		for id, n := range before {
			if rs, _ := th.Store.Receipts(ctx, id, 100); len(rs) != n {
				t.Errorf("%s: a refused batch wrote receipts: %d, was %d", id, len(rs), n)
			}
		}
	})
}
