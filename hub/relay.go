package hub

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

// Site relays (shoal relay) enrol with a relay token, get a certificate
// marked with the relay role that is both their client certificate toward
// the hub and the server certificate their devices dial, and then:
//   - forward their devices' requests with the device's certificate in
//     api.HeaderDeviceCert (see device), which the hub checks against its
//     CA like a direct connection's;
//   - renew their certificate at /v1/relay/renew;
//   - report their own health at /v1/relay/status;
//   - long-poll /v1/relay/poke for every poke, to pass on to their devices.
// A relay's certificate cannot act as a device, a device's cannot act as a
// relay, and a relay reads only the records of devices that report through it.

type viaRelayKey struct{}

// viaRelay returns the relay a request came through, "" for a device's own connection.
func viaRelay(r *http.Request) string {
	id, _ := r.Context().Value(viaRelayKey{}).(string)
	return id
}

// relayCacheTTL bounds how long a revoked relay's requests may still be
// accepted by this hub: a relay forwards every request of its site, too
// many to read its row for each.
const relayCacheTTL = 10 * time.Second

type relayCache struct {
	mu sync.Mutex
	m  map[string]cachedRelay
}

type cachedRelay struct {
	r  store.Relay
	at time.Time
}

func (c *relayCache) get(ctx context.Context, st store.Store, id string, now time.Time) (store.Relay, error) {
	c.mu.Lock()
	e, ok := c.m[id]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < relayCacheTTL {
		return e.r, nil
	}
	r, err := st.Relay(ctx, id)
	if err != nil {
		return r, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) > 10_000 {
		c.m = map[string]cachedRelay{}
	}
	c.m[id] = cachedRelay{r, now}
	c.mu.Unlock()
	return r, nil
}

func (c *relayCache) drop(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// relayAuth checks that the relay a verified relay certificate names is
// enrolled, not revoked, and that the certificate is from its latest
// enrolment. On a refusal it has answered the request.
func (h *Hub) relayAuth(w http.ResponseWriter, r *http.Request, leaf *x509.Certificate) (store.Relay, bool) {
	id := leaf.Subject.CommonName
	rl, err := h.relays.get(r.Context(), h.st, id, h.o.Now())
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("relay %q is not enrolled", id))
		return rl, false
	}
	if err != nil {
		h.internal(w, r, err)
		return rl, false
	}
	if !rl.Revoked.IsZero() {
		h.m.authFailures.WithLabelValues("revoked").Inc()
		writeError(w, http.StatusForbidden, api.ReasonDeviceRevoked, fmt.Sprintf("relay %q is revoked", id))
		return rl, false
	}
	if leaf.Subject.SerialNumber != enrolStamp(rl.Enrolled) {
		h.m.authFailures.WithLabelValues("superseded").Inc()
		writeError(w, http.StatusForbidden, api.ReasonDeviceRevoked, fmt.Sprintf("certificate for relay %q predates its latest enrolment", id))
		return rl, false
	}
	return rl, true
}

// relay authenticates a relay by its own certificate, with nothing forwarded.
func (h *Hub) relay(next func(w http.ResponseWriter, r *http.Request, rl store.Relay)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		leaf, err := h.clientCert(r)
		if err != nil {
			h.m.authFailures.WithLabelValues("certificate").Inc()
			writeError(w, http.StatusUnauthorized, api.ReasonUnauthorized, err.Error())
			return
		}
		if certRole(leaf) != api.OrgRelay || r.Header.Get(api.HeaderDeviceCert) != "" {
			h.m.authFailures.WithLabelValues("device-not-relay").Inc()
			writeError(w, http.StatusForbidden, api.ReasonDeviceNotRelay, fmt.Sprintf("%q is not a relay's certificate: this endpoint is for relays", leaf.Subject.CommonName))
			return
		}
		rl, ok := h.relayAuth(w, r, leaf)
		if !ok {
			return
		}
		next(w, r, rl)
	}
}

// fwdCache keeps forwarded device certificates already verified, by the
// sha256 of their DER: a relay forwards the same few certificates over and over.
type fwdCache struct {
	mu sync.Mutex
	m  map[[32]byte]*x509.Certificate
}

// forwardedCert decodes and verifies a device certificate a relay forwarded.
func (h *Hub) forwardedCert(v string) (*x509.Certificate, error) {
	der, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(der) > 16<<10 {
		return nil, errors.New("client certificate: not base64 DER")
	}
	key := sha256.Sum256(der)
	now := h.o.Now()
	h.fwd.mu.Lock()
	c, ok := h.fwd.m[key]
	h.fwd.mu.Unlock()
	if ok {
		if now.After(c.NotAfter) || now.Before(c.NotBefore) {
			return nil, errors.New("client certificate expired")
		}
		return c, nil
	}
	c, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	if _, err := h.ca.verifyClient([]*x509.Certificate{c}, now); err != nil {
		return nil, err
	}
	h.fwd.mu.Lock()
	if h.fwd.m == nil || len(h.fwd.m) > 100_000 {
		h.fwd.m = map[[32]byte]*x509.Certificate{}
	}
	h.fwd.m[key] = c
	h.fwd.mu.Unlock()
	return c, nil
}

// enrolRelay enrols a relay with a relay token (POST /v1/enrol, token of kind relay).
func (h *Hub) enrolRelay(w http.ResponseWriter, r *http.Request, req *api.EnrolRequest, tk store.Token) {
	if req.KeyKind != api.KeySoftware || req.Attestation != nil || req.Activation != nil || req.EK != nil {
		h.m.enrolments.WithLabelValues("bad-request").Inc()
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, `a relay enrols with keyKind "software" and no attestation`)
		return
	}
	now := h.o.Now()
	csr, _ := api.ParseCSR(req.CSR) // checked by Validate
	cert, certPEM, err := h.ca.issueRelay(tk.DeviceID, now, tk.Hosts, csr, now, h.o.CertTTL)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	rl, err := h.st.EnrolRelay(r.Context(), hashToken(req.Token), now, store.Relay{ID: tk.DeviceID, CertSerial: serialHex(cert), CertNotAfter: cert.NotAfter})
	if errors.Is(err, store.ErrNotFound) {
		h.m.enrolments.WithLabelValues("token-invalid").Inc()
		writeError(w, http.StatusUnauthorized, api.ReasonTokenInvalid, "enrolment token unknown, used, expired or revoked")
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	h.relays.drop(rl.ID)
	h.m.enrolments.WithLabelValues("relay").Inc()
	h.log.Info("relay enrolled", "relay", rl.ID, "hosts", rl.Hosts, "notAfter", cert.NotAfter)
	writeJSON(w, http.StatusOK, h.certResponse(rl.ID, certPEM, cert.NotBefore, cert.NotAfter))
}

func (h *Hub) handleRelayRenew(w http.ResponseWriter, r *http.Request, rl store.Relay) {
	var req api.RenewRequest
	if !decode(w, r, api.MaxEnrolBytes, &req) {
		return
	}
	csr, _ := api.ParseCSR(req.CSR)
	cert, certPEM, err := h.ca.issueRelay(rl.ID, rl.Enrolled, rl.Hosts, csr, h.o.Now(), h.o.CertTTL)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	if err := h.st.SetRelayCert(r.Context(), rl.ID, serialHex(cert), cert.NotAfter); err != nil {
		if errors.Is(err, store.ErrRevoked) {
			writeError(w, http.StatusForbidden, api.ReasonDeviceRevoked, fmt.Sprintf("relay %q is revoked", rl.ID))
			return
		}
		h.internal(w, r, err)
		return
	}
	h.relays.drop(rl.ID)
	h.m.renewals.Inc()
	h.log.Info("relay certificate renewed", "relay", rl.ID, "notAfter", cert.NotAfter)
	writeJSON(w, http.StatusOK, h.certResponse(rl.ID, certPEM, cert.NotBefore, cert.NotAfter))
}

func (h *Hub) handleRelayStatus(w http.ResponseWriter, r *http.Request, rl store.Relay) {
	var s api.RelayStatus
	if !decode(w, r, api.MaxRelayStatusBytes, &s) {
		return
	}
	if s.RelayID != "" && s.RelayID != rl.ID {
		writeError(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("relay %q may not report as %q", rl.ID, s.RelayID))
		return
	}
	s.RelayID = rl.ID
	body, err := json.Marshal(&s)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	if err := h.st.PutRelayStatus(r.Context(), rl.ID, h.o.Now(), body); err != nil {
		if errors.Is(err, store.ErrRevoked) {
			writeError(w, http.StatusForbidden, api.ReasonDeviceRevoked, fmt.Sprintf("relay %q is revoked", rl.ID))
			return
		}
		h.internal(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleRelayPoll is a relay's long poll: every poke after ?after= (from now
// without it), at once when there are some, else when one comes or ?wait=
// passes. A poke naming devices is passed on with only those of the relay's
// own devices, and not at all when it names none of them and no group.
func (h *Hub) handleRelayPoll(w http.ResponseWriter, r *http.Request, rl store.Relay) {
	ctx := r.Context()
	q := r.URL.Query()
	wait := h.o.PollWait
	if ws := q.Get("wait"); ws != "" {
		dw, err := time.ParseDuration(ws)
		if err != nil || dw < 0 {
			writeError(w, http.StatusBadRequest, api.ReasonBadRequest, "wait: want a non-negative duration such as 30s")
			return
		}
		wait = min(dw, wait)
	}
	var after int64
	if as := q.Get("after"); as != "" {
		v, err := strconv.ParseInt(as, 10, 64)
		if err != nil || v < 0 {
			writeError(w, http.StatusBadRequest, api.ReasonBadRequest, "after: want a poke ID")
			return
		}
		after = v
	} else {
		latest, err := h.st.LatestPoke(ctx)
		if err != nil {
			h.internal(w, r, err)
			return
		}
		after = latest
	}
	h.m.polls.Inc()
	defer h.m.polls.Dec()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		woken := h.pokes.wait()
		ps, err := h.st.PokesAfter(ctx, after, 200)
		if err != nil {
			h.internal(w, r, err)
			return
		}
		if len(ps) > 0 {
			out := &api.RelayPokes{APIVersion: api.Version, Cursor: ps[len(ps)-1].ID}
			var mine []string
			for _, p := range ps {
				if len(p.Devices) > 0 && mine == nil {
					if mine, err = h.st.RelayDevices(ctx, rl.ID); err != nil {
						h.internal(w, r, err)
						return
					}
					if mine == nil {
						mine = []string{}
					}
				}
				rp := api.RelayPoke{ID: p.ID, Group: p.Group, Commit: p.Commit, Reason: p.Reason, Time: p.Time}
				for _, d := range p.Devices {
					if slices.Contains(mine, d) {
						rp.Devices = append(rp.Devices, d)
					}
				}
				if len(p.Devices) > 0 && len(rp.Devices) == 0 && p.Group == "" {
					continue // for other sites' devices only
				}
				out.Pokes = append(out.Pokes, rp)
			}
			writeJSON(w, http.StatusOK, out)
			return
		}
		select {
		case <-woken:
		case <-timer.C:
			writeJSON(w, http.StatusOK, &api.RelayPokes{APIVersion: api.Version, Cursor: after})
			return
		case <-h.stopping:
			writeJSON(w, http.StatusOK, &api.RelayPokes{APIVersion: api.Version, Cursor: after})
			return
		case <-ctx.Done():
			return
		}
	}
}

// apiRelay is the operator API's view of a relay.
func apiRelay(rl store.Relay) api.Relay {
	out := api.Relay{ID: rl.ID, Hosts: rl.Hosts, Enrolled: rl.Enrolled, Revoked: !rl.Revoked.IsZero(), CertNotAfter: rl.CertNotAfter,
		LastSeen: rl.LastSeen, DeviceCount: rl.DeviceCount}
	if len(rl.Status) > 0 {
		var s api.RelayStatus
		if json.Unmarshal(rl.Status, &s) == nil {
			out.Status = &s
		}
	}
	return out
}

func (h *Hub) handleRelays(w http.ResponseWriter, r *http.Request) {
	rs, err := h.st.ListRelays(r.Context())
	if err != nil {
		h.internal(w, r, err)
		return
	}
	out := make([]api.Relay, 0, len(rs))
	for _, rl := range rs {
		out = append(out, apiRelay(rl))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Hub) handleRelayRevoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := h.st.RevokeRelay(r.Context(), id, h.o.Now())
	h.relays.drop(id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("no relay %q", id))
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	h.log.Info("relay revoked", "relay", id)
	w.WriteHeader(http.StatusNoContent)
}
