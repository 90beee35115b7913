package hub

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

// Token prefixes make leaked secrets easy to recognise.
const (
	enrolPrefix    = "shoal_enrol_"
	operatorPrefix = "shoal_op_"
)

func newSecret(prefix string) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// CreateEnrolToken makes a one-time enrolment token for deviceID and stores
// its hash. ttl 0 means 24 hours.
func CreateEnrolToken(ctx context.Context, st store.Store, deviceID string, ttl time.Duration, now time.Time) (api.TokenResponse, error) {
	if !api.ValidDeviceID(deviceID) {
		return api.TokenResponse{}, fmt.Errorf("create token: device ID %q: %w", deviceID, api.ErrInvalid)
	}
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	tok, err := newSecret(enrolPrefix)
	if err != nil {
		return api.TokenResponse{}, err
	}
	exp := now.Add(ttl)
	if err := st.CreateToken(ctx, store.Token{Hash: hashToken(tok), Kind: store.TokenEnrol, DeviceID: deviceID, Created: now, Expires: exp}); err != nil {
		return api.TokenResponse{}, err
	}
	return api.TokenResponse{APIVersion: api.Version, DeviceID: deviceID, Token: tok, Expires: exp}, nil
}

// CreateRelayToken makes a one-time enrolment token for the site relay
// relayID, whose server certificate will name hosts, and stores its hash.
// ttl 0 means 24 hours.
func CreateRelayToken(ctx context.Context, st store.Store, relayID string, hosts []string, ttl time.Duration, now time.Time) (api.TokenResponse, error) {
	req := api.TokenRequest{APIVersion: api.Version, DeviceID: relayID, TTL: ttl, Relay: true, Hosts: hosts}
	if err := req.Validate(); err != nil {
		return api.TokenResponse{}, fmt.Errorf("create relay token: %w", err)
	}
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	tok, err := newSecret(enrolPrefix)
	if err != nil {
		return api.TokenResponse{}, err
	}
	exp := now.Add(ttl)
	if err := st.CreateToken(ctx, store.Token{Hash: hashToken(tok), Kind: store.TokenRelay, DeviceID: relayID, Hosts: hosts, Created: now, Expires: exp}); err != nil {
		return api.TokenResponse{}, err
	}
	return api.TokenResponse{APIVersion: api.Version, DeviceID: relayID, Token: tok, Expires: exp, Relay: true, Hosts: hosts}, nil
}

// CreateOperatorToken makes an operator token and stores its hash; ttl 0
// means it does not expire (revoke it instead).
func CreateOperatorToken(ctx context.Context, st store.Store, ttl time.Duration, now time.Time) (string, error) {
	tok, err := newSecret(operatorPrefix)
	if err != nil {
		return "", err
	}
	var exp time.Time
	if ttl > 0 {
		exp = now.Add(ttl)
	}
	if err := st.CreateToken(ctx, store.Token{Hash: hashToken(tok), Kind: store.TokenOperator, Created: now, Expires: exp}); err != nil {
		return "", err
	}
	return tok, nil
}

// RevokeToken revokes an enrolment, relay or operator token by its value
// and says which token it was.
func RevokeToken(ctx context.Context, st store.Store, token string) (api.TokenRevokeResult, error) {
	t, err := st.RevokeToken(ctx, hashToken(token))
	if err != nil {
		return api.TokenRevokeResult{}, err
	}
	return api.TokenRevokeResult{APIVersion: api.Version, Kind: t.Kind, DeviceID: t.DeviceID, Expires: t.Expires, Used: t.Used}, nil
}

func (h *Hub) handleTokenCreate(w http.ResponseWriter, r *http.Request) {
	var req api.TokenRequest
	if !decode(w, r, api.MaxPokeBytes, &req) {
		return
	}
	if !req.Relay && h.o.KnownDevice != nil {
		if err := h.o.KnownDevice(req.DeviceID); err != nil {
			h.log.Info("enrolment token refused", "device", req.DeviceID, "reason", api.ReasonDeviceNotInFleet, "err", err)
			writeError(w, http.StatusUnprocessableEntity, api.ReasonDeviceNotInFleet, err.Error())
			return
		}
	}
	create := func() (api.TokenResponse, error) {
		if req.Relay {
			return CreateRelayToken(r.Context(), h.st, req.DeviceID, req.Hosts, req.TTL, h.o.Now())
		}
		return CreateEnrolToken(r.Context(), h.st, req.DeviceID, req.TTL, h.o.Now())
	}
	resp, err := create()
	if err != nil {
		h.internal(w, r, err)
		return
	}
	resp.CAFingerprint = h.ca.fingerprint
	h.log.Info("enrolment token created", "device", req.DeviceID, "relay", req.Relay, "expires", resp.Expires)
	writeJSON(w, http.StatusOK, &resp)
}

func (h *Hub) handleTokenRevoke(w http.ResponseWriter, r *http.Request) {
	var req api.TokenRevokeRequest
	if !decode(w, r, api.MaxPokeBytes, &req) {
		return
	}
	res, err := RevokeToken(r.Context(), h.st, req.Token)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, api.ReasonNotFound, "no such token")
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	h.log.Info("token revoked", "kind", res.Kind, "device", res.DeviceID)
	writeJSON(w, http.StatusOK, &res)
}

func (h *Hub) handleRevoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := h.st.RevokeDevice(r.Context(), id, h.o.Now())
	h.devs.drop(id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("no device %q", id))
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	h.log.Info("device revoked", "device", id)
	w.WriteHeader(http.StatusNoContent)
}

func (h *Hub) handleDevices(w http.ResponseWriter, r *http.Request) {
	ds, err := h.st.ListDevices(r.Context())
	if err != nil {
		h.internal(w, r, err)
		return
	}
	out := make([]api.Device, 0, len(ds))
	for _, d := range ds {
		out = append(out, apiDevice(d))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Hub) handleDevice(w http.ResponseWriter, r *http.Request) {
	d, err := h.st.Device(r.Context(), r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, api.ReasonNotFound, err.Error())
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, apiDevice(d))
}

func (h *Hub) handleReports(w http.ResponseWriter, r *http.Request) {
	h.writeReports(w, r, r.PathValue("id"))
}

func (h *Hub) handlePoke(w http.ResponseWriter, r *http.Request) {
	var req api.PokeRequest
	if !decode(w, r, api.MaxPokeBytes, &req) {
		return
	}
	if req.Reason == "" {
		req.Reason = "operator"
	}
	h.poke(w, r, store.Poke{Group: req.Group, Devices: req.Devices, Commit: req.Commit, Reason: req.Reason, Time: h.o.Now()})
}

// Poke stores a poke and wakes this hub's long polls; other hubs on the same
// PostgreSQL database hear of it through LISTEN/NOTIFY.
func (h *Hub) Poke(ctx context.Context, p store.Poke) (int64, error) {
	id, err := h.st.AddPoke(ctx, p)
	if err != nil {
		return 0, err
	}
	h.m.pokes.WithLabelValues(p.Reason).Inc()
	h.pokes.notify(id)
	return id, nil
}

func (h *Hub) poke(w http.ResponseWriter, r *http.Request, p store.Poke) {
	id, err := h.Poke(r.Context(), p)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	n := 0
	if ds, err := h.st.ListDevices(r.Context()); err == nil {
		for _, d := range ds {
			if d.Revoked.IsZero() && p.Matches(d.ID, d.Groups) {
				n++
			}
		}
	}
	h.log.Info("poke", "id", id, "group", p.Group, "devices", len(p.Devices), "commit", p.Commit, "reason", p.Reason, "reaches", n)
	writeJSON(w, http.StatusOK, &api.PokeResult{APIVersion: api.Version, ID: id, Devices: n})
}

// gitPush is the part of a Git server's push webhook (GitHub, Gitea,
// Forgejo, GitLab) the hub reads.
type gitPush struct {
	Ref   string `json:"ref"`
	After string `json:"after"` // GitHub, Gitea, Forgejo
	// GitLab names it checkout_sha.
	CheckoutSHA string `json:"checkout_sha"`
}

// handleWebhook pokes devices when the fleet repo gets a push. The Git
// server authenticates with an operator token; ?group= narrows the poke.
func (h *Hub) handleWebhook(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, api.ReasonTooLarge, "webhook body larger than 1 MiB")
		return
	}
	var p gitPush
	if len(body) > 0 {
		if err := json.Unmarshal(body, &p); err != nil {
			writeError(w, http.StatusBadRequest, api.ReasonBadRequest, "webhook body: "+err.Error())
			return
		}
	}
	commit := p.After
	if commit == "" {
		commit = p.CheckoutSHA
	}
	if len(commit) > 128 {
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, "commit too long")
		return
	}
	group := r.URL.Query().Get("group")
	if len(group) > 128 {
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, "group too long")
		return
	}
	h.poke(w, r, store.Poke{Group: group, Commit: commit, Reason: "webhook", Time: h.o.Now()})
}
