package relay

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoalfleet/shoal/api"
)

// Handler is the relay's device-facing HTTP handler: the hub's device API,
// answered locally where the relay can (status reports, pokes, artifacts,
// the fleet repo) and forwarded to the hub for everything else, so an
// endpoint the hub gains works through the relay unchanged.
func (r *Relay) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/status", r.handleStatus)
	mux.HandleFunc("GET /v1/poke", r.handlePoll)
	mux.HandleFunc("GET /v1/artifacts", r.handleArtifact)
	mux.HandleFunc("HEAD /v1/artifacts", r.handleArtifact)
	mux.HandleFunc("GET /v1/artifacts/sha256/{sha}", r.handleArtifact)
	mux.HandleFunc("HEAD /v1/artifacts/sha256/{sha}", r.handleArtifact)
	mux.HandleFunc("/git/", r.handleGit)
	for _, p := range []string{"/v1/admin/", "/v1/hooks/", "/v1/relay/"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, req *http.Request) {
			writeErr(w, http.StatusNotFound, api.ReasonNotFound, "not served by a relay: "+req.URL.Path+" (the operator and relay APIs are the hub's)")
		})
	}
	mux.Handle("/v1/", http.HandlerFunc(r.forward))
	mux.HandleFunc("GET /healthz", r.handleHealth)
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeErr(w, http.StatusNotFound, api.ReasonNotFound, "no such endpoint: "+req.URL.Path)
	})
	return r.recover(mux)
}

// MetricsHandler serves /metrics and /healthz alone, for a plain-HTTP
// listener of the operator's (shoal relay run --metrics-addr): nothing of
// the device API goes over it.
func (r *Relay) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", r.handleHealth)
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}))
	return mux
}

func (r *Relay) recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				r.log.Error("handler panic", "path", req.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				writeErr(w, http.StatusInternalServerError, api.ReasonInternal, "internal error")
			}
		}()
		next.ServeHTTP(w, req)
	})
}

// certCache keeps device certificates already verified, by sha256 of their DER.
type certCache struct {
	mu sync.Mutex
	m  map[[32]byte]*x509.Certificate
}

// deviceCert verifies the client certificate a device presented against the
// hub CA: a device's role, for client use, current by the relay's clock.
// (nil, nil) when none was presented.
func (r *Relay) deviceCert(req *http.Request) (*x509.Certificate, error) {
	if req.TLS == nil || len(req.TLS.PeerCertificates) == 0 {
		return nil, nil
	}
	leaf := req.TLS.PeerCertificates[0]
	key := sha256.Sum256(leaf.Raw)
	now := r.o.Now()
	r.certs.mu.Lock()
	c, ok := r.certs.m[key]
	r.certs.mu.Unlock()
	if !ok {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: r.id.ca, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		r.certs.mu.Lock()
		if r.certs.m == nil || len(r.certs.m) > 100_000 {
			r.certs.m = map[[32]byte]*x509.Certificate{}
		}
		r.certs.m[key] = leaf
		r.certs.mu.Unlock()
		c = leaf
	}
	if now.After(c.NotAfter) {
		return nil, errors.New("client certificate expired")
	}
	if len(c.Subject.Organization) == 1 && c.Subject.Organization[0] == api.OrgRelay {
		return nil, errDeviceNotRelay
	}
	if !api.ValidDeviceID(c.Subject.CommonName) {
		return nil, fmt.Errorf("client certificate names %q, not a device ID", c.Subject.CommonName)
	}
	return c, nil
}

var errDeviceNotRelay = errors.New("a relay's certificate cannot act as a device")

// device authenticates the device of a request; on failure it has answered.
func (r *Relay) device(w http.ResponseWriter, req *http.Request) (*x509.Certificate, bool) {
	c, err := r.deviceCert(req)
	switch {
	case errors.Is(err, errDeviceNotRelay):
		writeErr(w, http.StatusForbidden, api.ReasonRelayNotDevice, err.Error())
		return nil, false
	case err != nil:
		writeErr(w, http.StatusUnauthorized, api.ReasonUnauthorized, err.Error())
		return nil, false
	case c == nil:
		writeErr(w, http.StatusUnauthorized, api.ReasonUnauthorized, "a client certificate is required (mutual TLS)")
		return nil, false
	}
	return c, true
}

func (r *Relay) handleStatus(w http.ResponseWriter, req *http.Request) {
	c, ok := r.device(w, req)
	if !ok {
		return
	}
	id := c.Subject.CommonName
	now := r.o.Now()
	refused, err := r.devs.seen(id, c.Raw, now)
	if err != nil {
		r.internal(w, req, err)
		return
	}
	if refused != nil {
		r.m.reports.WithLabelValues("rejected").Inc()
		writeJSON(w, refused.Status, refused)
		return
	}
	var s api.Status
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, api.MaxStatusBytes))
	err = dec.Decode(&s)
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			err = errors.New("trailing data after the JSON value")
		}
	}
	if err == nil {
		err = s.Validate()
	}
	if err != nil {
		r.m.reports.WithLabelValues("rejected").Inc()
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeErr(w, http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("body larger than %d bytes", api.MaxStatusBytes))
			return
		}
		writeErr(w, http.StatusBadRequest, api.ReasonBadRequest, "decode body: "+err.Error())
		return
	}
	if s.DeviceID != "" && s.DeviceID != id {
		r.m.reports.WithLabelValues("rejected").Inc()
		writeErr(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("device %q may not report as %q", id, s.DeviceID))
		return
	}
	s.DeviceID = id
	body, err := json.Marshal(&s)
	if err != nil {
		r.internal(w, req, err)
		return
	}
	if err := r.out.put(id, s.Seq, body, now); err != nil {
		r.internal(w, req, err)
		return
	}
	r.m.reports.WithLabelValues("stored").Inc()
	r.devs.report(id, &s, body)
	if r.mq != nil {
		r.mq.status(id, &s, body)
	}
	writeJSON(w, http.StatusOK, &api.StatusAck{APIVersion: api.Version, Seq: s.Seq, Latest: max(s.Seq, r.out.latest(id))})
}

// handlePoll is the devices' long poll, answered from the relay's own
// pokes: those the hub sent it and those it made (a mirror update, an
// import), numbered by the relay.
func (r *Relay) handlePoll(w http.ResponseWriter, req *http.Request) {
	c, ok := r.device(w, req)
	if !ok {
		return
	}
	id := c.Subject.CommonName
	if _, err := r.devs.seen(id, c.Raw, r.o.Now()); err != nil {
		r.internal(w, req, err)
		return
	}
	q := req.URL.Query()
	wait := r.o.PollWait
	if ws := q.Get("wait"); ws != "" {
		d, err := time.ParseDuration(ws)
		if err != nil || d < 0 {
			writeErr(w, http.StatusBadRequest, api.ReasonBadRequest, "wait: want a non-negative duration such as 30s")
			return
		}
		wait = min(d, wait)
	}
	after := r.pokes.latest()
	if as := q.Get("after"); as != "" {
		v, err := strconv.ParseInt(as, 10, 64)
		if err != nil || v < 0 {
			writeErr(w, http.StatusBadRequest, api.ReasonBadRequest, "after: want a poke ID")
			return
		}
		after = v
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		p, cur, woken := r.pokes.find(after, id, r.devs.groups(id))
		if p != nil {
			writeJSON(w, http.StatusOK, p)
			return
		}
		after = cur
		select {
		case <-woken:
		case <-timer.C:
			w.Header().Set("Shoal-Poke-Cursor", strconv.FormatInt(after, 10))
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.stopping:
			w.Header().Set("Shoal-Poke-Cursor", strconv.FormatInt(after, 10))
			w.WriteHeader(http.StatusNoContent)
			return
		case <-req.Context().Done():
			return
		}
	}
}

// handleArtifact serves an artifact the fleet repo names, by its origin URL
// (?url=) or its sha256, from the cache (fetching it once when missing); a
// chunk of a delta's chunk store is one too (chunks.go).
func (r *Relay) handleArtifact(w http.ResponseWriter, req *http.Request) {
	c, ok := r.device(w, req)
	if !ok {
		return
	}
	var a artifact
	if sha := req.PathValue("sha"); sha != "" {
		if !hexRE.MatchString(sha) {
			writeErr(w, http.StatusBadRequest, api.ReasonBadRequest, "sha256: want 64 lowercase hex digits")
			return
		}
		a, ok = r.cache.lookupHash(sha)
	} else {
		u := req.URL.Query().Get("url")
		if u == "" {
			writeErr(w, http.StatusBadRequest, api.ReasonBadRequest, "url: required")
			return
		}
		a, ok = r.cache.lookupURL(u)
		if !ok && r.mirror != nil && r.firstAtCommit(c.Subject.CommonName) {
			// A device new to this relay since the last commit: its images.
			r.index([]string{c.Subject.CommonName})
			a, ok = r.cache.lookupURL(u)
		}
		if !ok {
			var id string
			if a, id, ok = r.cache.lookupChunk(u); ok && a.SHA256 == "" {
				var err error
				if a, err = r.cache.fetchChunk(req.Context(), u, id); err != nil {
					writeFetchErr(w, req, err)
					return
				}
			}
		}
	}
	if !ok {
		writeErr(w, http.StatusNotFound, api.ReasonArtifactUnknown, "no artifact by that URL or digest in the relay's fleet repo mirror: fetch it from its origin")
		return
	}
	r.cache.serve(w, req, a)
}

func (r *Relay) handleGit(w http.ResponseWriter, req *http.Request) {
	if _, ok := r.device(w, req); !ok {
		return
	}
	if r.mirror == nil {
		writeErr(w, http.StatusNotFound, api.ReasonNotFound, "this relay mirrors no fleet repo (shoal relay run --fleet URL)")
		return
	}
	r.mirror.ServeHTTP(w, req)
}

// forward passes a device request on to the hub, with the device's
// certificate (checked here against the hub CA) in api.HeaderDeviceCert,
// and the hub's answer back. With no client certificate (enrolment, by
// token) nothing is forwarded for it. When the hub cannot be reached the
// device is told to retry: 503 upstream-unavailable.
func (r *Relay) forward(w http.ResponseWriter, req *http.Request) {
	c, err := r.deviceCert(req)
	switch {
	case errors.Is(err, errDeviceNotRelay):
		writeErr(w, http.StatusForbidden, api.ReasonRelayNotDevice, err.Error())
		return
	case err != nil:
		writeErr(w, http.StatusUnauthorized, api.ReasonUnauthorized, err.Error())
		return
	}
	var cert []byte
	if c != nil {
		cert = c.Raw
		if _, err := r.devs.seen(c.Subject.CommonName, c.Raw, r.o.Now()); err != nil {
			r.internal(w, req, err)
			return
		}
	}
	r.proxy.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), fwdCertKey{}, cert)))
}

type fwdCertKey struct{}

func (r *Relay) newProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(r.up.base)
			pr.Out.Host = r.up.base.Host
			// Never a device's own: it would speak for another device.
			pr.Out.Header.Del(api.HeaderDeviceCert)
			if cert, _ := pr.In.Context().Value(fwdCertKey{}).([]byte); cert != nil {
				pr.Out.Header.Set(api.HeaderDeviceCert, base64.StdEncoding.EncodeToString(cert))
			}
		},
		Transport:     r.up.hc.Transport,
		FlushInterval: -1,
		ModifyResponse: func(*http.Response) error {
			r.up.ok.Store(true)
			r.m.requests.WithLabelValues("answered").Inc()
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			if req.Context().Err() != nil {
				return
			}
			r.up.ok.Store(false)
			r.m.requests.WithLabelValues("unreachable").Inc()
			r.log.Warn("hub unreachable; the device is told to retry", "path", req.URL.Path, "err", unwrapURL(err))
			writeErr(w, http.StatusServiceUnavailable, api.ReasonUpstreamUnavailable,
				"the relay cannot reach the hub now; retry later (enrolment, attestation and the like need the hub)")
		},
		ErrorLog: nil,
	}
}

func (r *Relay) handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, r.Status())
}

func (r *Relay) internal(w http.ResponseWriter, req *http.Request, err error) {
	if req.Context().Err() != nil {
		return
	}
	r.log.Error("request failed", "path", req.URL.Path, "err", err)
	writeErr(w, http.StatusInternalServerError, api.ReasonInternal, "internal error")
}
