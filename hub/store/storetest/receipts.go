package storetest

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/hub/store"
)

func receipt(id, bundle string, applied time.Duration, commit string) store.Receipt {
	return store.Receipt{DeviceID: id, BundleHash: bundle, Digest: strings.Repeat("d", 63) + bundle[:min(1, len(bundle))],
		Applied: t0.Add(applied), Commit: commit, Release: "1.2.0", Result: "applied",
		Received: t0.Add(time.Hour), Body: []byte(`{"deviceID":"` + id + `"}`)}
}

func testReceipts(t *testing.T, s store.Store) {
	ctx := t.Context()
	enrolled(t, s, "dev-1")
	enrolled(t, s, "dev-2")
	enrolled(t, s, "gone")
	if err := s.RevokeDevice(ctx, "gone", t0); err != nil {
		t.Fatal(err)
	}
	ha, hb, hc := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	ca, cb := strings.Repeat("1", 40), strings.Repeat("2", 40)

	t.Run("DeviceKey", func(t *testing.T) {
		if k, err := s.DeviceKey(ctx, "dev-1"); err != nil || k != nil {
			t.Fatalf("key before any is set: %x, %v", k, err)
		}
		if _, err := s.DeviceKey(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("key of unknown device: %v", err)
		}
		if err := s.SetDeviceKey(ctx, "nobody", []byte("k")); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("set key of unknown device: %v", err)
		}
		for _, k := range [][]byte{[]byte("key-1"), []byte("key-2")} {
			if err := s.SetDeviceKey(ctx, "dev-1", k); err != nil {
				t.Fatal(err)
			}
			if got, err := s.DeviceKey(ctx, "dev-1"); err != nil || !bytes.Equal(got, k) {
				t.Fatalf("key %q after setting %q: %v", got, k, err)
			}
		}
		// A re-enrolment keeps the device row; the key is the hub's to replace.
		enrolled(t, s, "dev-1")
		if _, err := s.DeviceKey(ctx, "dev-1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Put", func(t *testing.T) {
		first := receipt("dev-1", ha, time.Minute, ca)
		first.Errors = []string{"tpm quote: no TPM"}
		cases := []struct {
			name    string
			r       store.Receipt
			dup     bool
			wantErr error
		}{
			{"first", first, false, nil},
			{"same device and bundle", receipt("dev-1", ha, 2*time.Minute, cb), true, nil},
			{"next bundle", receipt("dev-1", hb, 3*time.Minute, cb), false, nil},
			{"same bundle, other device", receipt("dev-2", ha, time.Minute, ca), false, nil},
			{"unknown device", receipt("nobody", hc, time.Minute, ca), false, store.ErrNotFound},
			{"revoked device", receipt("gone", hc, time.Minute, ca), false, store.ErrRevoked},
		}
		for _, c := range cases {
			dup, err := s.PutReceipt(ctx, c.r)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Errorf("%s: err %v, want %v", c.name, err, c.wantErr)
				}
				continue
			}
			if err != nil || dup != c.dup {
				t.Errorf("%s: duplicate %t, %v; want %t", c.name, dup, err, c.dup)
			}
		}
		for _, id := range []string{"nobody", "gone"} {
			if rs, err := s.Receipts(ctx, id, 10); err != nil || len(rs) != 0 {
				t.Errorf("refused receipts of %s stored: %v, %v", id, rs, err)
			}
		}
		rs, err := s.Receipts(ctx, "dev-1", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 2 || rs[0].BundleHash != hb || rs[1].BundleHash != ha {
			t.Fatalf("dev-1 receipts, latest first: %+v", rs)
		}
		// The duplicate changed nothing: the first receipt's fields stand.
		if got := rs[1]; got.Commit != ca || !got.Applied.Equal(first.Applied) || !reflect.DeepEqual(got.Errors, first.Errors) ||
			!got.Received.Equal(first.Received) || got.Result != "applied" || got.Release != "1.2.0" || !bytes.Equal(got.Body, first.Body) || got.Digest != first.Digest {
			t.Errorf("stored %+v, want %+v", got, first)
		}
		if rs, _ := s.Receipts(ctx, "dev-1", 1); len(rs) != 1 || rs[0].BundleHash != hb {
			t.Errorf("limit 1: %+v", rs)
		}
	})

	t.Run("NoBundleHash", func(t *testing.T) {
		// A bundle that did not verify has no hash: its receipts are told
		// apart by their own digest.
		r1 := store.Receipt{DeviceID: "dev-2", Digest: strings.Repeat("e", 64), Applied: t0, Result: "refused", Reason: "bundle-signature-untrusted", Body: []byte("{}")}
		r2 := r1
		r2.Digest = strings.Repeat("f", 64)
		for i, c := range []struct {
			r   store.Receipt
			dup bool
		}{{r1, false}, {r2, false}, {r1, true}} {
			if dup, err := s.PutReceipt(ctx, c.r); err != nil || dup != c.dup {
				t.Errorf("put %d: duplicate %t, %v; want %t", i, dup, err, c.dup)
			}
		}
		if _, err := s.PutReceipt(ctx, store.Receipt{DeviceID: "dev-2", Result: "refused"}); err == nil {
			t.Error("a receipt with neither bundle hash nor digest was stored")
		}
		if rs, _ := s.Receipts(ctx, "dev-2", 10); len(rs) != 3 {
			t.Errorf("dev-2 has %d receipts, want 3", len(rs))
		}
	})

	t.Run("Latest", func(t *testing.T) {
		got, err := s.LatestReceipts(ctx, []string{"dev-1", "dev-2", "gone", "nobody"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got["dev-1"].BundleHash != hb || got["dev-2"].BundleHash != ha {
			t.Errorf("latest: %+v", got)
		}
		if got, err := s.LatestReceipts(ctx, nil); err != nil || len(got) != 0 {
			t.Errorf("latest of none: %v, %v", got, err)
		}
	})
}
