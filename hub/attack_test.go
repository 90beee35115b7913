package hub

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub/store"
)

// dbState is what the attack tests check did not change.
type dbState struct {
	devices, reportsA, reportsB, attestA int
	seqA, seqB                           uint64
}

func snapshot(t *testing.T, st store.Store) dbState {
	t.Helper()
	ctx := t.Context()
	var s dbState
	ds, err := st.ListDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.devices = len(ds)
	ra, _ := st.Reports(ctx, "dev-a", 1000)
	rb, _ := st.Reports(ctx, "dev-b", 1000)
	aa, _ := st.Attestations(ctx, "dev-a", 1000)
	s.reportsA, s.reportsB, s.attestA = len(ra), len(rb), len(aa)
	if d, err := st.Device(ctx, "dev-a"); err == nil {
		s.seqA = d.LatestSeq
	}
	if d, err := st.Device(ctx, "dev-b"); err == nil {
		s.seqB = d.LatestSeq
	}
	return s
}

// TestAttacks sends each kind of bad request to a real hub over TLS and
// checks the status, the JSON error reason, and that nothing was written.
func TestAttacks(t *testing.T) {
	backends(t, func(t *testing.T, open func(t *testing.T) store.Store) {
		th := startHub(t, open(t))
		ctx := t.Context()
		clA, keyA := th.enrol(t, "dev-a")
		clB, _ := th.enrol(t, "dev-b")
		if _, err := clA.Send(ctx, status("dev-a", 1, api.StateConverged)); err != nil {
			t.Fatal(err)
		}
		if _, err := clB.Send(ctx, status("dev-b", 1, api.StateConverged)); err != nil {
			t.Fatal(err)
		}
		certA := deviceCert(t, clA, keyA)
		asA := th.raw(t, certA)
		anon := th.raw(t, nil)

		// A certificate for dev-a's name from another CA.
		otherCert, otherKey, err := NewCA("impostor", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		other, err := parseAuthority(otherCert, otherKey)
		if err != nil {
			t.Fatal(err)
		}
		csrPEM, _ := client.CSR(keyA)
		csr, _ := api.ParseCSR(csrPEM)
		dA, _ := th.Store.Device(ctx, "dev-a")
		_, forgedPEM, err := other.issueClient("dev-a", dA.Enrolled, csr, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		forged, err := tls.X509KeyPair(forgedPEM, mustPKCS8(t, keyA))
		if err != nil {
			t.Fatal(err)
		}
		asForged := th.raw(t, &forged)

		// Tokens in each bad state.
		used := th.token(t, "dev-c", time.Hour)
		if _, err := client.Enrol(ctx, th.URL, used, newKey(t), api.KeySoftware, client.EnrolOptions{CAFingerprint: th.CAFingerprint()}); err != nil {
			t.Fatal(err)
		}
		expired := th.token(t, "dev-d", time.Nanosecond)
		revoked := th.token(t, "dev-e", time.Hour)
		if _, err := RevokeToken(ctx, th.Store, revoked); err != nil {
			t.Fatal(err)
		}
		enrolBody := func(tok string) []byte {
			csr, _ := client.CSR(newKey(t))
			return mustJSON(t, &api.EnrolRequest{APIVersion: api.Version, Token: tok, CSR: csr, KeyKind: api.KeySoftware})
		}
		// A nonce, used once, then replayed.
		n, err := clA.Nonce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ak := newKey(t)
		if res, err := clA.Attest(ctx, softQuote(t, ak, n.Nonce)); err != nil || !res.OK {
			t.Fatalf("first attestation: %+v, %v", res, err)
		}
		nB, err := clB.Nonce(ctx)
		if err != nil {
			t.Fatal(err)
		}

		statusA2 := mustJSON(t, status("dev-a", 2, api.StateConverged))
		cases := []struct {
			name   string
			hc     *http.Client
			method string
			path   string
			bearer string
			body   []byte
			code   int
			reason string
		}{
			{"reused token", anon, "POST", "/v1/enrol", "", enrolBody(used), 401, api.ReasonTokenInvalid},
			{"expired token", anon, "POST", "/v1/enrol", "", enrolBody(expired), 401, api.ReasonTokenInvalid},
			{"revoked token", anon, "POST", "/v1/enrol", "", enrolBody(revoked), 401, api.ReasonTokenInvalid},
			{"unknown token", anon, "POST", "/v1/enrol", "", enrolBody("shoal_enrol_nope"), 401, api.ReasonTokenInvalid},
			{"CSR with a broken signature", anon, "POST", "/v1/enrol", "", mustJSON(t, &api.EnrolRequest{APIVersion: api.Version, Token: th.token(t, "dev-f", time.Hour), CSR: badCSR(t), KeyKind: api.KeySoftware}), 400, api.ReasonBadRequest},
			{"A posts as B", asA, "POST", "/v1/status", "", mustJSON(t, status("dev-b", 2, api.StateStalled)), 403, api.ReasonForbidden},
			{"A reads B", asA, "GET", "/v1/devices/dev-b/reports", "", nil, 403, api.ReasonForbidden},
			{"A reads B's device", asA, "GET", "/v1/devices/dev-b", "", nil, 403, api.ReasonForbidden},
			{"certificate from another CA", asForged, "POST", "/v1/status", "", statusA2, 401, api.ReasonUnauthorized},
			{"no client certificate", anon, "POST", "/v1/status", "", statusA2, 401, api.ReasonUnauthorized},
			{"malformed body", asA, "POST", "/v1/status", "", []byte(`{"apiVersion":`), 400, api.ReasonBadRequest},
			{"trailing data", asA, "POST", "/v1/status", "", append(append([]byte{}, statusA2...), '{'), 400, api.ReasonBadRequest},
			{"wrong version", asA, "POST", "/v1/status", "", bytes.Replace(statusA2, []byte(api.Version), []byte("shoal.api/v0"), 1), 400, api.ReasonBadRequest},
			{"seq zero", asA, "POST", "/v1/status", "", mustJSON(t, status("dev-a", 0, api.StateConverged)), 400, api.ReasonBadRequest},
			{"oversized body", asA, "POST", "/v1/status", "", []byte(`{"apiVersion":"` + strings.Repeat("x", api.MaxStatusBytes) + `"}`), 413, api.ReasonTooLarge},
			{"replayed nonce", asA, "POST", "/v1/attest", "", mustJSON(t, softQuote(t, ak, n.Nonce)), 403, api.ReasonNonceInvalid},
			{"another device's nonce", asA, "POST", "/v1/attest", "", mustJSON(t, softQuote(t, ak, nB.Nonce)), 403, api.ReasonNonceInvalid},
			{"quote with another AK", asA, "POST", "/v1/attest", "", mustJSON(t, softQuote(t, newKey(t), n.Nonce)), 403, api.ReasonQuoteInvalid},
			{"operator API without token", anon, "POST", "/v1/admin/tokens", "", mustJSON(t, &api.TokenRequest{APIVersion: api.Version, DeviceID: "dev-x"}), 401, api.ReasonUnauthorized},
			{"operator API with an enrol token", anon, "POST", "/v1/admin/tokens", th.token(t, "dev-y", time.Hour), mustJSON(t, &api.TokenRequest{APIVersion: api.Version, DeviceID: "dev-x"}), 401, api.ReasonUnauthorized},
			{"operator API with a device certificate", asA, "POST", "/v1/admin/devices/dev-b/revoke", "", nil, 401, api.ReasonUnauthorized},
			{"wrong method", asA, "GET", "/v1/status", "", nil, 405, api.ReasonMethod},
			{"no such endpoint", asA, "GET", "/v1/nope", "", nil, 404, api.ReasonNotFound},
			{"bad poll wait", asA, "GET", "/v1/poke?wait=forever", "", nil, 400, api.ReasonBadRequest},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				before := snapshot(t, th.Store)
				code, ae, _ := call(t, c.hc, c.method, th.URL+c.path, c.bearer, c.body)
				if code != c.code || ae == nil || ae.Reason != c.reason {
					t.Fatalf("got %d %+v, want %d %s", code, ae, c.code, c.reason)
				}
				if after := snapshot(t, th.Store); after != before {
					t.Errorf("database changed: %+v -> %+v", before, after)
				}
			})
		}
		for _, id := range []string{"dev-d", "dev-e", "dev-f", "dev-x"} {
			if _, err := th.Store.Device(ctx, id); err == nil {
				t.Errorf("device %s enrolled by a refused request", id)
			}
		}

		// Revoking a device refuses its certificate at once, even on a kept-alive connection.
		code, _, _ := call(t, th.raw(t, nil), "POST", th.URL+"/v1/admin/devices/dev-a/revoke", th.Operator, nil)
		if code != http.StatusNoContent {
			t.Fatalf("revoke: %d", code)
		}
		before := snapshot(t, th.Store)
		code, ae, _ := call(t, asA, "POST", th.URL+"/v1/status", "", statusA2)
		if code != 403 || ae.Reason != api.ReasonDeviceRevoked {
			t.Fatalf("revoked device posting: %d %+v", code, ae)
		}
		if _, err := clA.Renew(ctx); !isAPI(err, 403, api.ReasonDeviceRevoked) {
			t.Fatalf("revoked device renewing: %v", err)
		}
		if after := snapshot(t, th.Store); after != before {
			t.Errorf("database changed: %+v -> %+v", before, after)
		}
		if client.Retryable(err) {
			t.Error("a revocation is not retryable")
		}

		// Re-enrolling with a fresh token lifts the revocation for the new
		// key only: the old certificate stays refused.
		clA2, _ := th.enrol(t, "dev-a")
		if _, err := clA2.Send(ctx, status("dev-a", 2, api.StateConverged)); err != nil {
			t.Fatalf("re-enrolled device: %v", err)
		}
		code, ae, _ = call(t, th.raw(t, certA), "POST", th.URL+"/v1/status", "", mustJSON(t, status("dev-a", 3, api.StateConverged)))
		if code != 403 || ae.Reason != api.ReasonDeviceRevoked {
			t.Fatalf("old certificate after re-enrolment: %d %+v", code, ae)
		}
	})
}

func isAPI(err error, code int, reason string) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status == code && ae.Reason == reason
}

// badCSR returns a CSR whose signature does not verify.
func badCSR(t *testing.T) string {
	t.Helper()
	p, err := client.CSR(newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(p))
	b.Bytes[len(b.Bytes)-3] ^= 0xff // inside the signature
	return string(pem.EncodeToMemory(b))
}
