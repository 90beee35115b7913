package hub

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub/store"
)

// certResponse builds the answer to enrolment and renewal.
func (h *Hub) certResponse(id string, certPEM []byte, notBefore, notAfter time.Time) *api.Certificate {
	// Two thirds into the lifetime from issue, not from the backdated
	// NotBefore: with a short lifetime that would already be past.
	issued := notBefore.Add(certSkew)
	life := notAfter.Sub(issued)
	return &api.Certificate{
		APIVersion:  api.Version,
		DeviceID:    id,
		Certificate: string(certPEM),
		CA:          string(h.ca.certPEM),
		NotAfter:    notAfter,
		RenewAfter:  issued.Add(life * 2 / 3),
	}
}

func (h *Hub) handleEnrol(w http.ResponseWriter, r *http.Request) {
	var req api.EnrolRequest
	if !decode(w, r, api.MaxEnrolBytes, &req) {
		h.m.enrolments.WithLabelValues("bad-request").Inc()
		return
	}
	ctx := r.Context()
	now := h.o.Now()
	th := hashToken(req.Token)
	if tk, err := h.st.PeekRelayToken(ctx, th, now); err == nil {
		h.enrolRelay(w, r, &req, tk)
		return
	} else if !errors.Is(err, store.ErrNotFound) {
		h.internal(w, r, err)
		return
	}
	id, ok := h.enrolToken(w, r, req.Token, now)
	if !ok {
		return
	}
	csr, _ := api.ParseCSR(req.CSR) // checked by Validate
	var ak []byte
	if req.KeyKind == api.KeyTPM && req.Attestation != nil {
		h.m.enrolments.WithLabelValues(api.ReasonActivationFailed).Inc()
		writeError(w, http.StatusForbidden, api.ReasonActivationFailed,
			"a TPM enrolment with an attestation key must activate it: send the attestation and EK to /v1/enrol/challenge, then the recovered secret here")
		return
	}
	if req.KeyKind == api.KeyTPM && req.Activation == nil && h.o.EKRoots != nil {
		h.m.enrolments.WithLabelValues(api.ReasonEKUntrusted).Inc()
		writeError(w, http.StatusForbidden, api.ReasonEKUntrusted,
			"this hub admits a TPM device only through the credential challenge, with an EK certificate from a trusted TPM maker (--ek-roots): send the attestation and EK to /v1/enrol/challenge first")
		return
	}
	if req.Activation != nil {
		err := h.st.UseNonce(ctx, id, activationBinding(req.Activation.Secret, req.Activation.AKPublic, csr.RawSubjectPublicKeyInfo), now)
		if errors.Is(err, store.ErrNotFound) {
			h.m.enrolments.WithLabelValues(api.ReasonActivationFailed).Inc()
			writeError(w, http.StatusForbidden, api.ReasonActivationFailed,
				"the secret answers no live challenge for this attestation key and CSR key: the key is not in the TPM whose EK was sent, or the challenge expired or was used")
			return
		}
		if err != nil {
			h.internal(w, r, err)
			return
		}
		ak = req.Activation.AKPublic
	}
	if req.Attestation != nil {
		if !h.enrolAttest(w, r, id, req.KeyKind == api.KeySoftware, req.Attestation) {
			return
		}
		ak = req.Attestation.AKPublic
	}
	cert, certPEM, err := h.ca.issueClient(id, now, csr, now, h.o.CertTTL)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	d, err := h.st.Enrol(ctx, th, now, store.Device{ID: id, KeyKind: req.KeyKind, CertSerial: serialHex(cert), CertNotAfter: cert.NotAfter, AK: ak})
	if errors.Is(err, store.ErrNotFound) {
		// Another request used the token first; this certificate is never handed out.
		h.m.enrolments.WithLabelValues("token-invalid").Inc()
		writeError(w, http.StatusUnauthorized, api.ReasonTokenInvalid, "enrolment token unknown, used, expired or revoked")
		return
	}
	if err != nil {
		h.internal(w, r, err)
		return
	}
	h.devs.drop(d.ID)
	h.recordKey(ctx, d.ID, csr.PublicKey)
	h.m.enrolments.WithLabelValues("ok").Inc()
	h.log.Info("device enrolled", "device", d.ID, "key", req.KeyKind, "attested", ak != nil, "notAfter", cert.NotAfter)
	writeJSON(w, http.StatusOK, h.certResponse(d.ID, certPEM, cert.NotBefore, cert.NotAfter))
}

// handleEnrolChallenge is the first step of a TPM enrolment: it verifies the
// attestation made with the enrolment token's nonce and answers with a
// secret encrypted to the device's EK for its AK's name. The hub keeps only
// a hash binding the secret to the AK and the CSR's key, as a nonce of the
// device, usable once until NonceTTL passes; handleEnrol takes it back.
func (h *Hub) handleEnrolChallenge(w http.ResponseWriter, r *http.Request) {
	var req api.EnrolRequest
	if !decode(w, r, api.MaxEnrolBytes, &req) {
		h.m.enrolments.WithLabelValues("bad-request").Inc()
		return
	}
	if req.KeyKind != api.KeyTPM || req.Attestation == nil || req.EK == nil {
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, `a challenge needs keyKind "tpm", an attestation and the EK`)
		return
	}
	ctx := r.Context()
	now := h.o.Now()
	id, ok := h.enrolToken(w, r, req.Token, now)
	if !ok {
		return
	}
	// Checked before the attestation so a refusal leaves the nonce unused.
	if h.o.EKRoots != nil {
		if _, err := h.o.EKRoots.Verify(req.EK.Cert, req.EK.Public, now); err != nil {
			h.m.enrolments.WithLabelValues(api.ReasonEKUntrusted).Inc()
			h.log.Warn("TPM enrolment refused", "device", id, "reason", api.ReasonEKUntrusted, "err", err)
			writeError(w, http.StatusForbidden, api.ReasonEKUntrusted, err.Error())
			return
		}
	}
	ekID := attest.Identity{EKArea: req.EK.Area, EKPublic: req.EK.Public, EKCert: req.EK.Cert}
	if err := attest.CheckEK(ekID); err != nil {
		h.m.enrolments.WithLabelValues(api.ReasonActivationFailed).Inc()
		writeError(w, http.StatusBadRequest, api.ReasonActivationFailed, err.Error())
		return
	}
	if !h.enrolAttest(w, r, id, false, req.Attestation) {
		return
	}
	secret, cred, err := attest.MakeCredential(req.EK.Area, req.Attestation.AKPublic)
	if err != nil {
		h.m.enrolments.WithLabelValues(api.ReasonActivationFailed).Inc()
		writeError(w, http.StatusBadRequest, api.ReasonActivationFailed, err.Error())
		return
	}
	csr, _ := api.ParseCSR(req.CSR) // checked by Validate
	exp := now.Add(h.o.NonceTTL)
	if err := h.st.PutNonce(ctx, id, activationBinding(secret, req.Attestation.AKPublic, csr.RawSubjectPublicKeyInfo), exp); err != nil {
		h.internal(w, r, err)
		return
	}
	// Which TPM makers' CAs the fleet needs shows here before --ek-roots is set.
	ekIssuer := ""
	if c, err := attest.ParseEKCert(req.EK.Cert); err == nil {
		ekIssuer = c.Issuer.String()
	}
	h.log.Info("TPM enrolment challenged", "device", id, "ekCert", len(req.EK.Cert) > 0, "ekIssuer", ekIssuer, "ekChecked", h.o.EKRoots != nil)
	writeJSON(w, http.StatusOK, &api.EnrolChallenge{APIVersion: api.Version, IDObject: cred.IDObject, EncSecret: cred.EncSecret, Expires: exp})
}

// enrolAttest verifies an enrolment's attestation for device id; when it
// fails it counts the refusal, answers the request and returns false.
func (h *Hub) enrolAttest(w http.ResponseWriter, r *http.Request, id string, software bool, att *api.AttestRequest) bool {
	res, status, reason, err := h.attest(r, id, nil, software, att)
	if err != nil {
		h.m.enrolments.WithLabelValues(reason).Inc()
		writeError(w, status, reason, err.Error())
		return false
	}
	if !res.OK {
		h.m.enrolments.WithLabelValues(api.ReasonQuoteInvalid).Inc()
		writeError(w, http.StatusForbidden, api.ReasonQuoteInvalid, "enrolment attestation failed: "+strings.Join(res.Reasons, "; "))
		return false
	}
	return true
}

// activationBinding ties a challenge's secret to the AK it was made for and
// the key the certificate will be issued to.
func activationBinding(secret, ak, csrKey []byte) []byte {
	h := sha256.New()
	h.Write([]byte("shoal/activation\x00"))
	for _, b := range [][]byte{secret, ak, csrKey} {
		s := sha256.Sum256(b)
		h.Write(s[:])
	}
	return h.Sum(nil)
}

func (h *Hub) handleRenew(w http.ResponseWriter, r *http.Request, d store.Device) {
	var req api.RenewRequest
	if !decode(w, r, api.MaxEnrolBytes, &req) {
		return
	}
	csr, _ := api.ParseCSR(req.CSR)
	cert, certPEM, err := h.ca.issueClient(d.ID, d.Enrolled, csr, h.o.Now(), h.o.CertTTL)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	if err := h.st.SetCert(r.Context(), d.ID, serialHex(cert), cert.NotAfter); err != nil {
		if errors.Is(err, store.ErrRevoked) {
			writeError(w, http.StatusForbidden, api.ReasonDeviceRevoked, fmt.Sprintf("device %q is revoked", d.ID))
			return
		}
		h.internal(w, r, err)
		return
	}
	h.devs.drop(d.ID)
	h.recordKey(r.Context(), d.ID, csr.PublicKey)
	h.m.renewals.Inc()
	h.log.Info("certificate renewed", "device", d.ID, "notAfter", cert.NotAfter)
	writeJSON(w, http.StatusOK, h.certResponse(d.ID, certPEM, cert.NotBefore, cert.NotAfter))
}

func (h *Hub) handleStatus(w http.ResponseWriter, r *http.Request, d store.Device) {
	start := time.Now()
	var s api.Status
	if !decode(w, r, api.MaxStatusBytes, &s) {
		h.m.reports.WithLabelValues("rejected").Inc()
		return
	}
	if s.DeviceID != "" && s.DeviceID != d.ID {
		h.m.reports.WithLabelValues("rejected").Inc()
		writeError(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("device %q may not report as %q", d.ID, s.DeviceID))
		return
	}
	s.DeviceID = d.ID
	if via := viaRelay(r); via != d.Relay {
		if err := h.st.SetDeviceRelay(r.Context(), d.ID, via); err != nil {
			h.internal(w, r, err)
			return
		}
		h.devs.drop(d.ID)
		h.log.Info("device reports through a new path", "device", d.ID, "relay", via, "was", d.Relay)
	}
	body, err := json.Marshal(&s) // normalised: exactly what was validated
	if err != nil {
		h.internal(w, r, err)
		return
	}
	dbStart := time.Now()
	res, err := h.st.PutStatus(r.Context(), store.Report{
		DeviceID: d.ID, Seq: s.Seq, Time: s.Time, Received: h.o.Now(), State: string(s.State), Groups: s.Groups, Body: body,
	})
	h.m.dbLatency.WithLabelValues("put_status").Observe(time.Since(dbStart).Seconds())
	switch {
	case errors.Is(err, store.ErrRevoked):
		h.devs.drop(d.ID)
		h.m.reports.WithLabelValues("rejected").Inc()
		writeError(w, http.StatusForbidden, api.ReasonDeviceRevoked, fmt.Sprintf("device %q is revoked", d.ID))
		return
	case err != nil:
		h.internal(w, r, err)
		return
	}
	result := "stored"
	if res.Duplicate {
		result = "duplicate"
	}
	h.m.reports.WithLabelValues(result).Inc()
	h.m.ingestLatency.Observe(time.Since(start).Seconds())
	writeJSON(w, http.StatusOK, &api.StatusAck{APIVersion: api.Version, Seq: s.Seq, Duplicate: res.Duplicate, Latest: res.Latest})
}

// handleNonce issues an attestation nonce to an enrolled device (mutual TLS)
// or, before enrolment, to the holder of a live enrolment token (Bearer).
func (h *Hub) handleNonce(w http.ResponseWriter, r *http.Request) {
	// A relay forwarding an enrolment's nonce request presents its own
	// certificate and no device's: that one goes by the token.
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && (r.Header.Get(api.HeaderDeviceCert) != "" || certRole(r.TLS.PeerCertificates[0]) != api.OrgRelay) {
		h.device(func(w http.ResponseWriter, r *http.Request, d store.Device) { h.issueNonce(w, r, d.ID) })(w, r)
		return
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" || len(tok) > 256 {
		writeError(w, http.StatusUnauthorized, api.ReasonUnauthorized, "a client certificate or an enrolment token is required")
		return
	}
	if id, ok := h.enrolToken(w, r, tok, h.o.Now()); ok {
		h.issueNonce(w, r, id)
	}
}

// enrolToken returns the device a live enrolment token is for, without
// using it up. An unknown, used, expired or revoked token is answered with
// 401 and counted as a refused enrolment; then ok is false.
func (h *Hub) enrolToken(w http.ResponseWriter, r *http.Request, token string, now time.Time) (id string, ok bool) {
	id, err := h.st.PeekEnrolToken(r.Context(), hashToken(token), now)
	if errors.Is(err, store.ErrNotFound) {
		h.m.enrolments.WithLabelValues("token-invalid").Inc()
		writeError(w, http.StatusUnauthorized, api.ReasonTokenInvalid, "enrolment token unknown, used, expired or revoked")
		return "", false
	}
	if err != nil {
		h.internal(w, r, err)
		return "", false
	}
	return id, true
}

func (h *Hub) issueNonce(w http.ResponseWriter, r *http.Request, id string) {
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		h.internal(w, r, err)
		return
	}
	exp := h.o.Now().Add(h.o.NonceTTL)
	if err := h.st.PutNonce(r.Context(), id, n, exp); err != nil {
		h.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, &api.Nonce{APIVersion: api.Version, Nonce: n, Expires: exp})
}

// attest consumes the nonce, checks the AK and runs the verifier. On a
// refusal it returns the status and reason to answer with.
func (h *Hub) attest(r *http.Request, id string, registeredAK []byte, software bool, req *api.AttestRequest) (api.AttestResult, int, string, error) {
	if h.o.Verifier == nil {
		return api.AttestResult{}, http.StatusNotImplemented, api.ReasonUnavailable, errors.New("this hub has no attestation verifier configured")
	}
	if registeredAK != nil && !bytes.Equal(registeredAK, req.AKPublic) {
		h.m.attestations.WithLabelValues("ak-mismatch").Inc()
		return api.AttestResult{}, http.StatusForbidden, api.ReasonQuoteInvalid, errors.New("quote made with an attestation key other than the registered one")
	}
	err := h.st.UseNonce(r.Context(), id, req.Nonce, h.o.Now())
	if errors.Is(err, store.ErrNotFound) {
		h.m.attestations.WithLabelValues("nonce-invalid").Inc()
		return api.AttestResult{}, http.StatusForbidden, api.ReasonNonceInvalid, errors.New("nonce unknown, used, expired or issued to another device")
	}
	if err != nil {
		return api.AttestResult{}, http.StatusInternalServerError, api.ReasonInternal, err
	}
	res, err := h.o.Verifier.Verify(r.Context(), id, registeredAK, software, req)
	if err != nil {
		h.log.Error("attestation verifier failed", "device", id, "err", err)
		return api.AttestResult{}, http.StatusInternalServerError, api.ReasonInternal, errors.New("verifier failed")
	}
	res.APIVersion = api.Version
	if res.Time.IsZero() {
		res.Time = h.o.Now()
	}
	if res.OK {
		h.m.attestations.WithLabelValues("ok").Inc()
	} else {
		h.m.attestations.WithLabelValues("failed").Inc()
	}
	return res, 0, "", nil
}

func (h *Hub) handleAttest(w http.ResponseWriter, r *http.Request, d store.Device) {
	var req api.AttestRequest
	if !decode(w, r, api.MaxAttestBytes, &req) {
		return
	}
	res, status, reason, err := h.attest(r, d.ID, d.AK, d.KeyKind == api.KeySoftware, &req)
	if err != nil {
		if status == http.StatusInternalServerError {
			h.internal(w, r, err)
			return
		}
		writeError(w, status, reason, err.Error())
		return
	}
	body, _ := json.Marshal(&res)
	a := store.Attestation{DeviceID: d.ID, Time: res.Time, OK: res.OK, PCRsChecked: res.PCRsChecked(), Result: body}
	if res.OK {
		a.AK = req.AKPublic // registers the AK on a device's first good quote
	}
	if err := h.st.PutAttestation(r.Context(), a); err != nil {
		h.internal(w, r, err)
		return
	}
	h.devs.drop(d.ID)
	h.log.Info("attestation", "device", d.ID, "ok", res.OK, "reasons", res.Reasons, "checkedPCRs", res.CheckedPCRs)
	writeJSON(w, http.StatusOK, &res)
}

// handlePoll is the long poll: it answers as soon as there is a poke for the
// device newer than ?after=, or 204 when ?wait= (capped by PollWait) passes,
// with the cursor to pass next time in the Shoal-Poke-Cursor header.
// Without ?after= it waits for pokes from now on.
func (h *Hub) handlePoll(w http.ResponseWriter, r *http.Request, d store.Device) {
	ctx := r.Context()
	// Groups come from the latest report: read them fresh, not from the auth cache.
	d, err := h.st.Device(ctx, d.ID)
	if err != nil {
		h.internal(w, r, err)
		return
	}
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
		woken := h.pokes.wait() // before reading, so no poke slips between
		for {
			ps, err := h.st.PokesAfter(ctx, after, 200)
			if err != nil {
				h.internal(w, r, err)
				return
			}
			var hit *store.Poke
			for i := range ps {
				after = ps[i].ID
				if ps[i].Matches(d.ID, d.Groups) {
					hit = &ps[i]
				}
			}
			if hit != nil {
				writeJSON(w, http.StatusOK, &api.Poke{APIVersion: api.Version, ID: after, Commit: hit.Commit, Reason: hit.Reason, Time: hit.Time})
				return
			}
			if len(ps) < 200 {
				break
			}
		}
		select {
		case <-woken:
		case <-timer.C:
			w.Header().Set("Shoal-Poke-Cursor", strconv.FormatInt(after, 10))
			w.WriteHeader(http.StatusNoContent)
			return
		case <-h.stopping:
			w.Header().Set("Shoal-Poke-Cursor", strconv.FormatInt(after, 10))
			w.WriteHeader(http.StatusNoContent)
			return
		case <-ctx.Done():
			return
		}
	}
}

// own refuses a device reading another device's records.
// Through a relay, a device's records are read only through the relay its
// latest report came through: a relay reads its own site's records alone.
func own(w http.ResponseWriter, r *http.Request, d store.Device) bool {
	if id := r.PathValue("id"); id != d.ID {
		writeError(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("device %q may not read device %q", d.ID, id))
		return false
	}
	if via := viaRelay(r); via != "" && via != d.Relay {
		writeError(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("relay %q may not read device %q, which reports through %q", via, d.ID, d.Relay))
		return false
	}
	return true
}

func (h *Hub) handleOwnDevice(w http.ResponseWriter, r *http.Request, d store.Device) {
	if !own(w, r, d) {
		return
	}
	d, err := h.st.Device(r.Context(), d.ID)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, apiDevice(d))
}

func (h *Hub) handleOwnReports(w http.ResponseWriter, r *http.Request, d store.Device) {
	if own(w, r, d) {
		h.writeReports(w, r, d.ID)
	}
}

func (h *Hub) writeReports(w http.ResponseWriter, r *http.Request, id string) {
	limit := 50
	if ls := r.URL.Query().Get("limit"); ls != "" {
		v, err := strconv.Atoi(ls)
		if err != nil || v < 1 || v > 1000 {
			writeError(w, http.StatusBadRequest, api.ReasonBadRequest, "limit: want 1..1000")
			return
		}
		limit = v
	}
	rs, err := h.st.Reports(r.Context(), id, limit)
	if err != nil {
		h.internal(w, r, err)
		return
	}
	out := make([]json.RawMessage, 0, len(rs))
	for _, rep := range rs {
		out = append(out, rep.Body)
	}
	writeJSON(w, http.StatusOK, out)
}

func apiDevice(d store.Device) api.Device {
	return api.Device{
		ID: d.ID, KeyKind: d.KeyKind, Enrolled: d.Enrolled, Revoked: !d.Revoked.IsZero(), CertNotAfter: d.CertNotAfter,
		State: api.State(d.State), Groups: d.Groups, LatestSeq: d.LatestSeq, LastSeen: d.LastSeen, AttestOK: d.AttestOK,
	}
}
