package web

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Store is what the page reads: the hub store's device, report and
// attestation history and its fleet view.
type Store interface {
	store.Viewer
	Reports(ctx context.Context, id string, limit int) ([]store.Report, error)
	Attestations(ctx context.Context, id string, limit int) ([]store.Attestation, error)
	CheckOperatorToken(ctx context.Context, hash []byte, now time.Time) error
	ListRelays(ctx context.Context) ([]store.Relay, error)
	RelayDevices(ctx context.Context, relayID string) ([]string, error)
}

// Rollouts is the hub's staged rollouts, as the page shows and steers them.
// An error with a NotFound method that returns true means there is no such
// rollout (or wave): the page then shows none.
type Rollouts interface {
	RolloutView(ctx context.Context, commit string, devices bool) (api.RolloutView, error)
	RolloutAct(ctx context.Context, a api.RolloutAction) (api.RolloutView, error)
}

// Options configure the page. Store is required; the zero value of the rest works.
type Options struct {
	// Store is the hub's store (both backends implement Store).
	Store store.Store
	// CheckOperatorToken accepts a live operator token; nil checks the
	// token's sha256 against the store, as the hub's operator API does.
	CheckOperatorToken func(ctx context.Context, token string) error
	// OpenAccess serves loopback clients without a login. Set it only when
	// the hub listens on localhost and the operator asked for it; other
	// clients still need the token.
	OpenAccess bool
	// OfflineAfter marks a device offline when it has not reported for this
	// long (default 1h); MaxSkew is the clock-skew bound (default 2s, the
	// fleet default time.max_skew).
	OfflineAfter, MaxSkew time.Duration
	// Notices are warnings about the hub's own configuration, shown at the
	// top of every page (a check it does not make, say).
	Notices []string
	// LiveInterval is how often the overview polls for changes (default 5s).
	LiveInterval time.Duration
	// Rollouts shows the hub's staged rollouts on the rollout page and takes
	// the operator's approve, pause, resume and abort; nil: the page shows
	// progress by commit and release only. *hub.Hub implements it.
	Rollouts Rollouts
	Logger   *slog.Logger
	Now      func() time.Time
}

// Cookie names.
const (
	sessionCookie = "shoal_operator"
	csrfCookie    = "shoal_csrf"
)

type server struct {
	o     Options
	st    Store
	log   *slog.Logger
	tmpl  map[string]*template.Template
	check func(ctx context.Context, token string) error
}

// New builds the page's handler, to be mounted at "/".
func New(o Options) (http.Handler, error) {
	if o.Store == nil {
		return nil, errors.New("web: Options.Store is required")
	}
	st, ok := o.Store.(Store)
	if !ok {
		return nil, fmt.Errorf("web: store %T has no fleet view", o.Store)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.OfflineAfter <= 0 {
		o.OfflineAfter = time.Hour
	}
	if o.MaxSkew <= 0 {
		o.MaxSkew = 2 * time.Second
	}
	if o.LiveInterval <= 0 {
		o.LiveInterval = 5 * time.Second
	}
	s := &server{o: o, st: st, log: o.Logger, check: o.CheckOperatorToken}
	if s.check == nil {
		s.check = func(ctx context.Context, token string) error {
			h := sha256.Sum256([]byte(token))
			return st.CheckOperatorToken(ctx, h[:], o.Now())
		}
	}
	var err error
	if s.tmpl, err = parseTemplates(); err != nil {
		return nil, err
	}
	static, _ := fs.Sub(staticFS, "static")
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", cacheStatic(http.FileServerFS(static))))
	mux.HandleFunc("GET /login", s.handleLoginForm)
	mux.HandleFunc("POST /login", s.handleLogin)
	mux.HandleFunc("POST /logout", s.page(s.handleLogout))
	mux.HandleFunc("GET /{$}", s.page(s.handleOverview))
	mux.HandleFunc("GET /devices/{id}", s.page(s.handleDevice))
	mux.HandleFunc("GET /rollout", s.page(s.handleRollout))
	mux.HandleFunc("POST /rollout/action", s.session(s.handleRolloutAction))
	mux.HandleFunc("GET /api/v1/fleet", s.api(s.apiFleet))
	mux.HandleFunc("GET /api/v1/live", s.api(s.apiLive))
	mux.HandleFunc("GET /api/v1/devices/{id}", s.api(s.apiDevice))
	mux.HandleFunc("GET /api/v1/rollout", s.api(s.apiRollout))
	mux.HandleFunc("GET /relays", s.page(s.handleRelays))
	mux.HandleFunc("GET /api/v1/relays", s.api(s.apiRelays))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") {
			writeJSONError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
			return
		}
		http.NotFound(w, r)
	})
	return securityHeaders(mux), nil
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Frame-Options", "DENY")
		next.ServeHTTP(w, r)
	})
}

func cacheStatic(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		next.ServeHTTP(w, r)
	})
}

// loopback reports whether the request came from this machine.
func loopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// openAccess reports whether r is served without a login.
func (s *server) openAccess(r *http.Request) bool { return s.o.OpenAccess && loopback(r) }

// authorised checks the bearer token or the session cookie. It returns an
// error only when the store could not be asked.
func (s *server) authorised(r *http.Request) (bool, error) {
	if s.openAccess(r) {
		return true, nil
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		c, err := r.Cookie(sessionCookie)
		if err != nil {
			return false, nil
		}
		tok = c.Value
	}
	if tok == "" || len(tok) > 256 {
		return false, nil
	}
	err := s.check(r.Context(), tok)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// page guards an HTML page: without a valid token it redirects to the login form.
func (s *server) page(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ok, err := s.authorised(r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if !ok {
			if r.Method != http.MethodGet {
				http.Error(w, "login required", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		next(w, r)
	}
}

// session guards a state-changing form: it needs an operator session (a
// signed-in token), even on an open-access page, and the form's CSRF token.
func (s *server) session(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
		ok, err := s.operatorSession(r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if !ok {
			http.Error(w, "an operator session is required: sign in with an operator token", http.StatusUnauthorized)
			return
		}
		if !csrfOK(r) {
			http.Error(w, "form expired or sent from another site; reload the page", http.StatusForbidden)
			return
		}
		next(w, r)
	}
}

// operatorSession reports whether r carries a live operator token (cookie
// or bearer), open access or not.
func (s *server) operatorSession(r *http.Request) (bool, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		c, err := r.Cookie(sessionCookie)
		if err != nil {
			return false, nil
		}
		tok = c.Value
	}
	if tok == "" || len(tok) > 256 {
		return false, nil
	}
	err := s.check(r.Context(), tok)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// api guards a JSON endpoint.
func (s *server) api(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ok, err := s.authorised(r)
		if err != nil {
			s.failJSON(w, r, err)
			return
		}
		if !ok {
			writeJSONError(w, http.StatusUnauthorized, "an operator token is required (Authorization: Bearer …)")
			return
		}
		next(w, r)
	}
}

func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	if errors.Is(err, store.ErrBadQuery) {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.log.Error("status page", "path", r.URL.Path, "err", err)
	http.Error(w, "internal error", http.StatusInternalServerError)
}

func (s *server) failJSON(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	if errors.Is(err, store.ErrBadQuery) {
		writeJSONError(w, http.StatusBadRequest, err.Error())
		return
	}
	if errors.Is(err, store.ErrNotFound) {
		writeJSONError(w, http.StatusNotFound, err.Error())
		return
	}
	s.log.Error("status API", "path", r.URL.Path, "err", err)
	writeJSONError(w, http.StatusInternalServerError, "internal error")
}

// APIError is the JSON API's error body.
type APIError struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(APIError{Status: status, Message: msg})
}

// --- CSRF (double submit: a random cookie echoed in each form) and login

func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// csrfToken returns the request's CSRF token, setting the cookie if absent.
func csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) >= 32 {
		return c.Value
	}
	tok := newSecret()
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: tok, Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	return tok
}

// csrfOK checks a state-changing form: the field matches the cookie and the
// Origin, when the browser sends one, is this host.
func csrfOK(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) < 32 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) == 1
}

// safeNext keeps redirects after login on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

type loginData struct {
	CSRF, Next, Error string
}

func (s *server) handleLoginForm(w http.ResponseWriter, r *http.Request) {
	tok := csrfToken(w, r)
	s.render(w, r, "login", http.StatusOK, &layout{Title: "Sign in", CSRF: tok, Body: loginData{CSRF: tok, Next: safeNext(r.URL.Query().Get("next"))}})
}

func (s *server) handleLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	next := safeNext(r.PostFormValue("next"))
	if !csrfOK(r) {
		http.Error(w, "form expired or sent from another site; reload the sign-in page", http.StatusForbidden)
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	bad := func(msg string) {
		tok := csrfToken(w, r)
		s.render(w, r, "login", http.StatusUnauthorized, &layout{Title: "Sign in", CSRF: tok, Body: loginData{CSRF: tok, Next: next, Error: msg}})
	}
	if tok == "" || len(tok) > 256 {
		bad("Enter an operator token.")
		return
	}
	err := s.check(r.Context(), tok)
	if errors.Is(err, store.ErrNotFound) {
		bad("That operator token is not valid (unknown, expired or revoked).")
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: tok, Path: "/", MaxAge: 12 * 3600, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	// A fresh CSRF token for the session.
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: newSecret(), Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *server) handleLogout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if !csrfOK(r) {
		http.Error(w, "form expired or sent from another site", http.StatusForbidden)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
