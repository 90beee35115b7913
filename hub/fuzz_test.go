package hub

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

// FuzzDecode feeds arbitrary bodies to the decoder of every type a device or
// operator sends: it must return an error or a value that validated, never panic.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"apiVersion":"shoal.api/v1","seq":1,"time":"2026-11-01T00:00:00Z","state":"converged"}`,
		`{"apiVersion":"shoal.api/v1","token":"t","csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n","keyKind":"tpm"}`,
		`{"apiVersion":"shoal.api/v1","nonce":"AAAAAAAAAAAAAAAAAAAAAA==","akPublic":"AA==","quote":"AA==","signature":"AA==","pcrs":{"7":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}`,
		`{"apiVersion":"shoal.api/v1","group":"edge","devices":["a","b"]}`,
		`{"apiVersion":"shoal.api/v1","deviceID":"dev-1","ttl":3600000000000}`,
		`{"apiVersion":"shoal.api/v1","pcrs":{"-1":""}}`,
		`{"apiVersion":"shoal.receipt/v1","receipts":[{"deviceID":"d"}]}`,
		`{"apiVersion":"shoal.api/v1","token":"t","csr":"x","keyKind":"tpm","ek":{"area":"AA=="},"activation":{"secret":"AA=="}}`,
		`{"apiVersion":"shoal.api/v1","commit":"abc","specHash":"def","nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}`,
		`{"apiVersion":"shoal.api/v1","action":"approve","commit":"abc","wave":"2"}`,
		`[]`, `null`, `{} {}`, `{"seq":-1}`, "\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, v := range []validator{new(api.Status), new(api.EnrolRequest), new(api.RenewRequest), new(api.AttestRequest), new(api.PokeRequest), new(api.TokenRequest), new(api.TokenRevokeRequest), new(api.ReceiptBatch), new(api.RelayStatus), new(api.RelayPokes), new(api.GrantRequest), new(api.RolloutAction)} {
			if err := decodeBody(bytes.NewReader(b), v); err == nil {
				if err := v.Validate(); err != nil {
					t.Fatalf("%T decoded but does not validate: %v", v, err)
				}
			}
		}
	})
}

// FuzzHandler sends arbitrary requests (without a client certificate)
// through the whole handler on a real SQLite store: every answer is a
// status with a JSON error body for 4xx and 5xx, and nothing panics.
func FuzzHandler(f *testing.F) {
	st, err := store.Open(f.Context(), "sqlite://"+filepath.Join(f.TempDir(), "hub.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	h, err := New(f.Context(), Options{Store: st, Verifier: softVerifier{}})
	if err != nil {
		f.Fatal(err)
	}
	handler := h.Handler()
	// A real operator token, so the admin handlers' bodies are reached.
	op, err := CreateOperatorToken(f.Context(), st, time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []struct{ method, path, auth, body string }{
		{"POST", "/v1/enrol/challenge", "", `{"apiVersion":"shoal.api/v1","token":"x","csr":"","keyKind":"tpm","ek":{}}`},
		{"POST", "/v1/admin/receipts", "Bearer " + op, `{"apiVersion":"shoal.receipt/v1","receipts":[{"apiVersion":"shoal.receipt/v1","deviceID":"d"}]}`},
		{"GET", "/v1/admin/devices/d/receipts", "Bearer " + op, ``},
		{"POST", "/v1/admin/tokens", "Bearer " + op, `{"apiVersion":"shoal.api/v1","deviceID":"d"}`},
		{"POST", "/v1/enrol", "", `{"apiVersion":"shoal.api/v1","token":"x","csr":"","keyKind":"tpm"}`},
		{"POST", "/v1/attest/nonce", "Bearer shoal_enrol_x", ``},
		{"POST", "/v1/admin/tokens", "Bearer x", `{"apiVersion":"shoal.api/v1","deviceID":"d"}`},
		{"POST", "/v1/hooks/git", "", `{"after":"abc"}`},
		{"GET", "/v1/poke?after=-1", "", ``},
		{"GET", "/healthz", "", ``},
		{"POST", "/v1/admin/rollouts/action", "Bearer " + op, `{"apiVersion":"shoal.api/v1","action":"pause"}`},
		{"GET", "/v1/admin/rollouts/current?commit=abc", "Bearer " + op, ``},
		{"POST", "/v1/rollout/grant", "", `{"apiVersion":"shoal.api/v1"}`},
		{"DELETE", "/v1/status", "", ``},
	} {
		f.Add(s.method, s.path, s.auth, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, method, path, auth string, body []byte) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") || strings.ContainsAny(method, " \r\n\t") || method == "" || path == "/metrics" {
			return
		}
		req, err := http.NewRequest(method, "http://hub"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code >= 400 && !strings.Contains(rec.Body.String(), `"reason"`) {
			t.Fatalf("%s %s: %d without a JSON error: %q", method, path, rec.Code, rec.Body.String())
		}
		if rec.Code >= 500 && rec.Code != http.StatusNotImplemented {
			t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body.String())
		}
	})
}
