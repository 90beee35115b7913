package hub

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

// Handler returns the hub's HTTP handler. Device routes need the request to
// have come over TLS with a client certificate (Server and Run arrange it).
func (h *Hub) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, methods map[string]http.HandlerFunc) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			f, ok := methods[r.Method]
			if !ok {
				allow := make([]string, 0, len(methods))
				for m := range methods {
					allow = append(allow, m)
				}
				w.Header().Set("Allow", strings.Join(allow, ", "))
				writeError(w, http.StatusMethodNotAllowed, api.ReasonMethod, "method "+r.Method+" not allowed")
				return
			}
			f(w, r)
		})
	}
	// Enrolment: token-authenticated, no client certificate yet.
	route("/v1/enrol", map[string]http.HandlerFunc{"POST": h.handleEnrol})
	route("/v1/enrol/challenge", map[string]http.HandlerFunc{"POST": h.handleEnrolChallenge})
	// Device API: mutual TLS.
	route("/v1/renew", map[string]http.HandlerFunc{"POST": h.device(h.handleRenew)})
	route("/v1/status", map[string]http.HandlerFunc{"POST": h.device(h.handleStatus)})
	route("/v1/attest/nonce", map[string]http.HandlerFunc{"POST": h.handleNonce})
	route("/v1/attest", map[string]http.HandlerFunc{"POST": h.device(h.handleAttest)})
	route("/v1/poke", map[string]http.HandlerFunc{"GET": h.device(h.handlePoll)})
	route("/v1/rollout/grant", map[string]http.HandlerFunc{"POST": h.device(h.handleGrant)})
	route("/v1/devices/{id}", map[string]http.HandlerFunc{"GET": h.device(h.handleOwnDevice)})
	route("/v1/devices/{id}/reports", map[string]http.HandlerFunc{"GET": h.device(h.handleOwnReports)})
	// Relay API: a relay's own certificate, nothing forwarded.
	route("/v1/relay/renew", map[string]http.HandlerFunc{"POST": h.relay(h.handleRelayRenew)})
	route("/v1/relay/status", map[string]http.HandlerFunc{"POST": h.relay(h.handleRelayStatus)})
	route("/v1/relay/poke", map[string]http.HandlerFunc{"GET": h.relay(h.handleRelayPoll)})
	// Operator API: bearer operator token.
	route("/v1/admin/tokens", map[string]http.HandlerFunc{"POST": h.operator(h.handleTokenCreate)})
	route("/v1/admin/tokens/revoke", map[string]http.HandlerFunc{"POST": h.operator(h.handleTokenRevoke)})
	route("/v1/admin/pokes", map[string]http.HandlerFunc{"POST": h.operator(h.handlePoke)})
	route("/v1/admin/devices", map[string]http.HandlerFunc{"GET": h.operator(h.handleDevices)})
	route("/v1/admin/devices/{id}", map[string]http.HandlerFunc{"GET": h.operator(h.handleDevice)})
	route("/v1/admin/devices/{id}/reports", map[string]http.HandlerFunc{"GET": h.operator(h.handleReports)})
	route("/v1/admin/devices/{id}/revoke", map[string]http.HandlerFunc{"POST": h.operator(h.handleRevoke)})
	route("/v1/admin/devices/{id}/receipts", map[string]http.HandlerFunc{"GET": h.operator(h.handleDeviceReceipts)})
	route("/v1/admin/receipts", map[string]http.HandlerFunc{"POST": h.operator(h.handleReceipts)})
	route("/v1/admin/relays", map[string]http.HandlerFunc{"GET": h.operator(h.handleRelays)})
	route("/v1/admin/relays/{id}/revoke", map[string]http.HandlerFunc{"POST": h.operator(h.handleRelayRevoke)})
	route("/v1/admin/rollouts/current", map[string]http.HandlerFunc{"GET": h.operator(h.handleRolloutStatus)})
	route("/v1/admin/rollouts/action", map[string]http.HandlerFunc{"POST": h.operator(h.handleRolloutAction)})
	route("/v1/hooks/git", map[string]http.HandlerFunc{"POST": h.operator(h.handleWebhook)})
	// Plumbing.
	route("/healthz", map[string]http.HandlerFunc{"GET": h.handleHealth})
	mux.Handle("/metrics", promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{}))
	if h.o.Web != nil {
		mux.Handle("/", h.o.Web)
	} else {
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusNotFound, api.ReasonNotFound, "no such endpoint: "+r.URL.Path)
		})
	}
	return h.recover(mux)
}

// recover turns a handler panic into a JSON 500 and a log line with the stack.
func (h *Hub) recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				h.log.Error("handler panic", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				writeError(w, http.StatusInternalServerError, api.ReasonInternal, "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, reason, msg string) {
	writeJSON(w, status, &api.Error{APIVersion: api.Version, Status: status, Reason: reason, Message: msg})
}

// internal logs err and answers 500 (or 503 when the database is unreachable)
// without leaking details.
func (h *Hub) internal(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client went away
	}
	h.log.Error("request failed", "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, api.ReasonInternal, "internal error")
}

// validator is every api type.
type validator interface{ Validate() error }

// decode reads a size-limited JSON body into v and validates it. On failure
// it has already written the 4xx.
func decode(w http.ResponseWriter, r *http.Request, limit int64, v validator) bool {
	if err := decodeBody(http.MaxBytesReader(w, r.Body, limit), v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("body larger than %d bytes", limit))
			return false
		}
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return false
	}
	return true
}

// decodeBody decodes exactly one JSON value and validates it. Unknown fields
// are allowed so newer agents can talk to older hubs; the version is checked.
func decodeBody(rd io.Reader, v validator) error {
	dec := json.NewDecoder(rd)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode body: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return errors.New("decode body: trailing data after the JSON value")
	}
	return v.Validate()
}

// --- connection-level client certificate check, cached per connection

type connAuthKey struct{}

type connAuth struct {
	once sync.Once
	leaf *x509.Certificate
	err  error
}

func withConnAuth(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connAuthKey{}, &connAuth{})
}

// clientCert verifies the request's client certificate against the CA, once per connection.
func (h *Hub) clientCert(r *http.Request) (*x509.Certificate, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, errors.New("a client certificate is required (mutual TLS)")
	}
	verify := func() (*x509.Certificate, error) { return h.ca.verifyClient(r.TLS.PeerCertificates, h.o.Now()) }
	ca, _ := r.Context().Value(connAuthKey{}).(*connAuth)
	if ca == nil {
		return verify()
	}
	ca.once.Do(func() { ca.leaf, ca.err = verify() })
	if ca.err == nil && h.o.Now().After(ca.leaf.NotAfter) {
		return nil, errors.New("client certificate expired")
	}
	return ca.leaf, ca.err
}

type deviceHandler func(w http.ResponseWriter, r *http.Request, d store.Device)

// device authenticates a device by its client certificate and refuses
// revoked devices and certificates issued before the device's latest
// enrolment. The certificate's identity is the only identity.
//
// A relay's certificate is accepted only forwarding a device's certificate
// (api.HeaderDeviceCert), which is then checked exactly as if the device had
// connected itself; the relay's ID rides in the request's context (viaRelay).
func (h *Hub) device(next deviceHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		leaf, err := h.clientCert(r)
		if err != nil {
			h.m.authFailures.WithLabelValues("certificate").Inc()
			writeError(w, http.StatusUnauthorized, api.ReasonUnauthorized, err.Error())
			return
		}
		fwd := r.Header.Get(api.HeaderDeviceCert)
		switch {
		case certRole(leaf) == api.OrgRelay:
			rl, ok := h.relayAuth(w, r, leaf)
			if !ok {
				return
			}
			if fwd == "" {
				h.m.authFailures.WithLabelValues("relay-not-device").Inc()
				writeError(w, http.StatusForbidden, api.ReasonRelayNotDevice, fmt.Sprintf("relay %q cannot act as a device: forward a device's certificate", rl.ID))
				return
			}
			if leaf, err = h.forwardedCert(fwd); err != nil {
				h.m.authFailures.WithLabelValues("certificate").Inc()
				writeError(w, http.StatusUnauthorized, api.ReasonUnauthorized, "forwarded "+err.Error())
				return
			}
			if certRole(leaf) != api.OrgDevice {
				h.m.authFailures.WithLabelValues("device-not-relay").Inc()
				writeError(w, http.StatusForbidden, api.ReasonDeviceNotRelay, "only a device's certificate may be forwarded")
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), viaRelayKey{}, rl.ID))
		case fwd != "":
			h.m.authFailures.WithLabelValues("device-not-relay").Inc()
			writeError(w, http.StatusForbidden, api.ReasonDeviceNotRelay, fmt.Sprintf("device %q cannot forward for another device", leaf.Subject.CommonName))
			return
		}
		id := leaf.Subject.CommonName
		d, err := h.devs.get(r.Context(), h.st, id)
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("device %q is not enrolled", id))
			return
		}
		if err != nil {
			h.internal(w, r, err)
			return
		}
		if !d.Revoked.IsZero() {
			h.m.authFailures.WithLabelValues("revoked").Inc()
			writeError(w, http.StatusForbidden, api.ReasonDeviceRevoked, fmt.Sprintf("device %q is revoked", id))
			return
		}
		// A certificate from before a re-enrolment belongs to the old key.
		if leaf.Subject.SerialNumber != enrolStamp(d.Enrolled) {
			h.m.authFailures.WithLabelValues("superseded").Inc()
			writeError(w, http.StatusForbidden, api.ReasonDeviceRevoked, fmt.Sprintf("certificate for device %q predates its latest enrolment", id))
			return
		}
		next(w, r, d)
	}
}

// operator checks the bearer operator token.
func (h *Hub) operator(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" || len(tok) > 256 {
			h.m.authFailures.WithLabelValues("operator").Inc()
			writeError(w, http.StatusUnauthorized, api.ReasonUnauthorized, "an operator token is required (Authorization: Bearer …)")
			return
		}
		err := h.st.CheckOperatorToken(r.Context(), hashToken(tok), h.o.Now())
		if errors.Is(err, store.ErrNotFound) {
			h.m.authFailures.WithLabelValues("operator").Inc()
			writeError(w, http.StatusUnauthorized, api.ReasonUnauthorized, "operator token not valid")
			return
		}
		if err != nil {
			h.internal(w, r, err)
			return
		}
		next(w, r)
	}
}

func hashToken(tok string) []byte {
	s := sha256.Sum256([]byte(tok))
	return s[:]
}

func (h *Hub) handleHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := h.st.Ping(ctx); err != nil {
		h.log.Warn("health check", "err", err)
		writeError(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "database unreachable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "db": h.st.Backend()})
}
