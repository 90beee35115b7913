// Package client is the device side of the hub API: enrolment with a
// one-time token and a CSR signed by the device key, certificate renewal,
// status reports, attestation round trips and the long-poll poke, all over
// mutual TLS 1.3 with the certificate the hub issued.
//
// The device key is any crypto.Signer over an ECDSA P-256 key: a TPM-backed
// key or a software one. The package keeps nothing on disk: the caller
// persists the api.Certificate that Enrol and Renew return (atomically).
// It imports only api, so the device binary links no hub code.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoalfleet/shoal/api"
)

// maxResponse bounds any response body the client reads.
const maxResponse = 4 << 20

// CSR makes a PEM certificate request signed by key. The hub ignores the
// subject; the enrolment token or the current certificate decides the ID.
func CSR(key crypto.Signer) (string, error) {
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return "", errors.New("csr: device key must be ECDSA P-256")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: "shoal device"},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, key)
	if err != nil {
		return "", fmt.Errorf("csr: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// EnrolOptions say how a device trusts the hub on first contact and whether
// it attests while enrolling.
type EnrolOptions struct {
	// RootCAs verify the hub's server certificate. When nil, CAFingerprint
	// must pin the hub CA instead.
	RootCAs *x509.CertPool
	// CAFingerprint is the hex sha256 of the hub CA certificate's DER (from
	// `shoal token create`): the hub's chain must include that CA and the
	// server certificate must verify against it.
	CAFingerprint string
	// Attest, when set, answers a hub nonce with a quote (TPM devices).
	Attest func(ctx context.Context, nonce []byte) (*api.AttestRequest, error)
	// Now is the device's best idea of the time, for checking the hub's
	// certificate (default time.Now). An agent passes its bounded clock: a
	// device that boots with its clock at 1970 still trusts the hub.
	Now func() time.Time
	// EK and Activate are required with Attest for a "tpm" key: the hub
	// challenges the AK with a secret encrypted to EK, and Activate recovers
	// it in the TPM (attest.Attester.ActivateCredential).
	EK       *api.EndorsementKey
	Activate func(ctx context.Context, c *api.EnrolChallenge) ([]byte, error)
	// Timeout bounds each request (default 30s).
	Timeout time.Duration
}

// Enrol exchanges a one-time token and a CSR signed by key for the device's
// first client certificate.
func Enrol(ctx context.Context, hubURL, token string, key crypto.Signer, keyKind string, o EnrolOptions) (*api.Certificate, error) {
	base, err := parseHub(hubURL)
	if err != nil {
		return nil, err
	}
	tc, err := firstContactTLS(base.Hostname(), o)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: transport(tc), Timeout: timeout(o.Timeout)}
	defer hc.CloseIdleConnections()
	csr, err := CSR(key)
	if err != nil {
		return nil, err
	}
	req := &api.EnrolRequest{APIVersion: api.Version, Token: token, CSR: csr, KeyKind: keyKind}
	if o.Attest != nil {
		var n api.Nonce
		if err := do(ctx, hc, base, "POST", "/v1/attest/nonce", token, nil, &n); err != nil {
			return nil, fmt.Errorf("enrol: nonce: %w", err)
		}
		if err := n.Validate(); err != nil {
			return nil, fmt.Errorf("enrol: nonce: %w", err)
		}
		if req.Attestation, err = o.Attest(ctx, n.Nonce); err != nil {
			return nil, fmt.Errorf("enrol: attest: %w", err)
		}
		if keyKind == api.KeyTPM {
			if err := activate(ctx, hc, base, req, o); err != nil {
				return nil, err
			}
		}
	}
	var c api.Certificate
	if err := do(ctx, hc, base, "POST", "/v1/enrol", "", req, &c); err != nil {
		return nil, fmt.Errorf("enrol: %w", err)
	}
	if err := checkCert(&c, key); err != nil {
		return nil, fmt.Errorf("enrol: %w", err)
	}
	return &c, nil
}

// activate runs the challenge step of a TPM enrolment and turns req into
// the second step: the recovered secret instead of the attestation.
func activate(ctx context.Context, hc *http.Client, base *url.URL, req *api.EnrolRequest, o EnrolOptions) error {
	if o.EK == nil || o.Activate == nil || req.Attestation == nil {
		return errors.New("enrol: a TPM key with an attestation needs EK and Activate")
	}
	req.EK = o.EK
	var ch api.EnrolChallenge
	if err := do(ctx, hc, base, "POST", "/v1/enrol/challenge", "", req, &ch); err != nil {
		return fmt.Errorf("enrol: challenge: %w", err)
	}
	if err := ch.Validate(); err != nil {
		return fmt.Errorf("enrol: challenge: %w", err)
	}
	secret, err := o.Activate(ctx, &ch)
	if err != nil {
		return fmt.Errorf("enrol: activate credential: %w", err)
	}
	req.Activation = &api.Activation{AKPublic: req.Attestation.AKPublic, Secret: secret}
	req.Attestation, req.EK = nil, nil
	return nil
}

func firstContactTLS(serverName string, o EnrolOptions) (*tls.Config, error) {
	if o.RootCAs != nil {
		return &tls.Config{MinVersion: tls.VersionTLS13, ServerName: serverName, RootCAs: o.RootCAs, Time: o.Now}, nil
	}
	tc, err := PinnedTLS(serverName, o.CAFingerprint, o.Now)
	if err != nil {
		return nil, fmt.Errorf("enrol: need RootCAs or %w", err)
	}
	return tc, nil
}

// ErrPinnedCA is returned (wrapped) when the hub's TLS chain holds no CA
// certificate with the pinned fingerprint.
var ErrPinnedCA = errors.New("hub did not present the pinned CA")

// ParseFingerprint reads a sha256 fingerprint: 64 hex digits, colons allowed.
func ParseFingerprint(s string) ([]byte, error) {
	fp, err := hex.DecodeString(strings.ToLower(strings.ReplaceAll(s, ":", "")))
	if err != nil || len(fp) != sha256.Size {
		return nil, errors.New("a CA fingerprint of 64 hex digits (sha256)")
	}
	return fp, nil
}

// PinnedTLS is a TLS 1.3 client configuration that trusts only the CA
// certificate whose sha256 is fingerprint: the hub must send that CA in its
// chain, and its certificate must verify against it for serverName, by
// now (nil: the system clock).
func PinnedTLS(serverName, fingerprint string, now func() time.Time) (*tls.Config, error) {
	fp, err := ParseFingerprint(fingerprint)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: serverName, Time: now}
	// The standard verification runs below, against the pinned CA only.
	tc.InsecureSkipVerify = true
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		var sent []string
		for _, c := range cs.PeerCertificates[1:] {
			sum := sha256.Sum256(c.Raw)
			if !bytes.Equal(sum[:], fp) || !c.IsCA {
				sent = append(sent, hex.EncodeToString(sum[:]))
				continue
			}
			pool := x509.NewCertPool()
			pool.AddCert(c)
			vo := x509.VerifyOptions{Roots: pool, DNSName: serverName}
			if now != nil {
				vo.CurrentTime = now()
			}
			_, err := cs.PeerCertificates[0].Verify(vo)
			return err
		}
		if len(sent) == 0 {
			return fmt.Errorf("%w: it sent no CA certificate", ErrPinnedCA)
		}
		return fmt.Errorf("%w: it sent CA sha256 %s", ErrPinnedCA, strings.Join(sent, ", "))
	}
	return tc, nil
}

// checkCert makes sure a certificate response is well formed and for key.
func checkCert(c *api.Certificate, key crypto.Signer) error {
	if err := c.Validate(); err != nil {
		return err
	}
	b, _ := pem.Decode([]byte(c.Certificate))
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return errors.New("certificate is not for the device key")
	}
	return nil
}

// Options configure a Client.
type Options struct {
	// Hub is the hub's base URL, e.g. https://hub.example.com:8443.
	Hub string
	// Relays are site relays (shoal relay) tried before Hub, in order: every
	// call goes to the first that answers, and back to the first every
	// RetryFirst. A relay speaks the hub's API with the hub's CA; it also
	// serves artifacts (ArtifactTransport). Hub may be empty with relays.
	Relays []string
	// RetryFirst is how long the client stays on a later endpoint after
	// failing over before it tries the first again (default 5 minutes).
	RetryFirst time.Duration
	// Key is the device key the certificate was issued for.
	Key crypto.Signer
	// Cert is the device's current certificate (from Enrol or Renew).
	Cert *api.Certificate
	// Timeout bounds each request (default 30s); a long poll adds its wait.
	Timeout time.Duration
	// PollWait is how long WaitPoke waits (default 55s; the hub caps it).
	PollWait time.Duration
	Logger   *slog.Logger
	// Now is the device's best idea of the time (default time.Now): the
	// hub's certificate is checked against it, and renewal is due by it.
	Now func() time.Time
}

// Client talks to the hub as one enrolled device over mutual TLS. It is
// safe for concurrent use; Renew swaps the certificate in place.
type Client struct {
	o         Options
	endpoints []*url.URL // relays, then the hub
	relays    int        // how many of endpoints are relays
	tlsc      *tls.Config

	mu     sync.Mutex
	hc     *http.Client // replaced by Renew
	cert   *api.Certificate
	tc     *tls.Certificate
	leaf   *x509.Certificate
	cursor int64 // WaitPoke's next ?after=; -1 = from now
	cur    int   // the endpoint in use
	moved  time.Time
}

// New builds a client for an enrolled device.
func New(o Options) (*Client, error) {
	if o.Key == nil || o.Cert == nil {
		return nil, errors.New("client: Key and Cert are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PollWait <= 0 {
		o.PollWait = 55 * time.Second
	}
	if o.RetryFirst <= 0 {
		o.RetryFirst = 5 * time.Minute
	}
	c := &Client{o: o, cursor: -1, relays: len(o.Relays)}
	urls := o.Relays
	if o.Hub != "" || len(urls) == 0 {
		urls = append(append([]string(nil), urls...), o.Hub)
	}
	for _, s := range urls {
		u, err := parseHub(s)
		if err != nil {
			return nil, err
		}
		c.endpoints = append(c.endpoints, u)
	}
	if err := c.setCert(o.Cert); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(o.Cert.CA)) {
		return nil, errors.New("client: certificate response has no usable CA")
	}
	tc := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool, // the server name comes from each request's URL
		Time:       o.Now,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.tc, nil
		},
	}
	c.tlsc = tc
	c.hc = &http.Client{Transport: transport(tc)}
	return c, nil
}

// http returns the HTTP client requests go through now.
func (c *Client) http() *http.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hc
}

func (c *Client) setCert(ac *api.Certificate) error {
	if err := checkCert(ac, c.o.Key); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	b, _ := pem.Decode([]byte(ac.Certificate))
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	c.mu.Lock()
	c.cert, c.leaf = ac, leaf
	c.tc = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: c.o.Key, Leaf: leaf}
	c.mu.Unlock()
	return nil
}

// DeviceID returns the identity in the current certificate.
func (c *Client) DeviceID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaf.Subject.CommonName
}

// TLSCertificate returns the current certificate with the device key, for
// other mutual-TLS connections to the hub's or a relay's servers.
func (c *Client) TLSCertificate() *tls.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tc
}

// Certificate returns the current certificate, to persist after Renew.
func (c *Client) Certificate() *api.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cert
}

// NeedsRenewal reports whether the certificate is past its RenewAfter time.
func (c *Client) NeedsRenewal() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.o.Now().Before(c.cert.RenewAfter)
}

// RenewAfter is when the hub wants the current certificate renewed.
func (c *Client) RenewAfter() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cert.RenewAfter
}

// CloseIdleConnections closes kept-alive connections; after Renew it makes
// the next request present the new certificate.
func (c *Client) CloseIdleConnections() { c.http().CloseIdleConnections() }

// Renew asks for a fresh certificate for the same key and starts using it.
func (c *Client) Renew(ctx context.Context) (*api.Certificate, error) {
	csr, err := CSR(c.o.Key)
	if err != nil {
		return nil, err
	}
	var ac api.Certificate
	if err := c.call(ctx, "POST", "/v1/renew", &api.RenewRequest{APIVersion: api.Version, CSR: csr}, &ac); err != nil {
		return nil, fmt.Errorf("renew certificate: %w", err)
	}
	if err := c.setCert(&ac); err != nil {
		return nil, err
	}
	// The client certificate is presented at the TLS handshake only, and an
	// HTTP/2 connection carrying a long poll is never idle: later requests
	// would go on presenting the old certificate until it expires. New
	// requests go through a fresh transport (new connections, the new
	// certificate); requests in flight finish on the old one.
	c.mu.Lock()
	old := c.hc
	c.hc = &http.Client{Transport: transport(c.tlsc)}
	c.mu.Unlock()
	old.CloseIdleConnections()
	return &ac, nil
}

// Report delivers one status report (the agent outbox's Reporter). A
// resent report (same Seq) is acknowledged as a duplicate, which is success.
func (c *Client) Report(ctx context.Context, s api.Status) error {
	_, err := c.Send(ctx, &s)
	return err
}

// Send sends one status report and returns the hub's acknowledgement.
func (c *Client) Send(ctx context.Context, s *api.Status) (*api.StatusAck, error) {
	var ack api.StatusAck
	if err := c.call(ctx, "POST", "/v1/status", s, &ack); err != nil {
		return nil, fmt.Errorf("report status %d: %w", s.Seq, err)
	}
	return &ack, nil
}

// Reports returns the device's own stored reports, newest first.
func (c *Client) Reports(ctx context.Context, limit int) ([]api.Status, error) {
	var out []api.Status
	p := "/v1/devices/" + url.PathEscape(c.DeviceID()) + "/reports?limit=" + strconv.Itoa(limit)
	if err := c.call(ctx, "GET", p, nil, &out); err != nil {
		return nil, fmt.Errorf("read reports: %w", err)
	}
	return out, nil
}

// Grant asks the hub whether the device may converge on a commit (see
// api.GrantRequest). The answer is a grant to check (rollout/grant) or why
// to wait; a refusal (such as a commit that is not the one rolled out)
// comes back as an *api.Error.
func (c *Client) Grant(ctx context.Context, req *api.GrantRequest) (*api.GrantResponse, error) {
	var res api.GrantResponse
	if err := c.call(ctx, "POST", "/v1/rollout/grant", req, &res); err != nil {
		return nil, fmt.Errorf("rollout grant: %w", err)
	}
	if err := res.Validate(); err != nil {
		return nil, fmt.Errorf("rollout grant: %w", err)
	}
	return &res, nil
}

// HubCA returns the hub CA certificate (PEM) of the current certificate:
// what grants are checked against.
func (c *Client) HubCA() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return []byte(c.cert.CA)
}

// Nonce asks the hub for a fresh attestation nonce.
func (c *Client) Nonce(ctx context.Context) (*api.Nonce, error) {
	var n api.Nonce
	if err := c.call(ctx, "POST", "/v1/attest/nonce", nil, &n); err != nil {
		return nil, fmt.Errorf("attestation nonce: %w", err)
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("attestation nonce: %w", err)
	}
	return &n, nil
}

// Attest sends a quote answering a nonce and returns the hub's verdict.
func (c *Client) Attest(ctx context.Context, req *api.AttestRequest) (*api.AttestResult, error) {
	var res api.AttestResult
	if err := c.call(ctx, "POST", "/v1/attest", req, &res); err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	if err := res.Validate(); err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return &res, nil
}

// WaitPoke long-polls for the next poke (the agent's Poker): it returns the
// poke, or nil when PollWait passed with none. after is the last poke ID the
// caller saw; 0 means "continue from this client's cursor", which starts at
// "now", so a restarted agent is not poked by old news.
func (c *Client) WaitPoke(ctx context.Context, after int64) (*api.Poke, error) {
	i, base := c.endpoint()
	c.mu.Lock()
	if after <= 0 {
		after = c.cursor
	}
	c.mu.Unlock()
	p, cur, err := c.poll(ctx, i, base, after, c.o.PollWait)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.cur == i { // a cursor is only good at the endpoint that gave it
		c.cursor = cur
	}
	c.mu.Unlock()
	return p, nil
}

// Poll long-polls for a poke newer than after (after < 0: from now on),
// waiting at most wait. It returns the poke, or nil when the wait passed,
// and the cursor to pass as after next time.
func (c *Client) Poll(ctx context.Context, after int64, wait time.Duration) (*api.Poke, int64, error) {
	i, base := c.endpoint()
	return c.poll(ctx, i, base, after, wait)
}

func (c *Client) poll(ctx context.Context, i int, base *url.URL, after int64, wait time.Duration) (*api.Poke, int64, error) {
	q := url.Values{"wait": {wait.String()}}
	if after >= 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	ctx, cancel := context.WithTimeout(ctx, wait+timeout(c.o.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", base.JoinPath("/v1/poke").String()+"?"+q.Encode(), nil)
	if err != nil {
		return nil, after, fmt.Errorf("poll: %w", err)
	}
	hc := c.http()
	defer func() {
		// Renewed during the poll: the old transport's last connection goes.
		if c.http() != hc {
			hc.CloseIdleConnections()
		}
	}()
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			c.failed(i, err)
		}
		return nil, after, fmt.Errorf("poll: %w", &netError{err})
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		if cur, err := strconv.ParseInt(resp.Header.Get("Shoal-Poke-Cursor"), 10, 64); err == nil {
			return nil, cur, nil
		}
		return nil, after, nil
	}
	var p api.Poke
	if err := readResponse(resp, &p); err != nil {
		return nil, after, fmt.Errorf("poll: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, after, fmt.Errorf("poll: %w", err)
	}
	return &p, p.ID, nil
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var err error
	for range c.endpoints {
		i, base := c.endpoint()
		cctx, cancel := context.WithTimeout(ctx, timeout(c.o.Timeout))
		err = do(cctx, c.http(), base, method, path, "", in, out)
		cancel()
		var ne *netError
		if !errors.As(err, &ne) || ctx.Err() != nil {
			return err
		}
		c.failed(i, err)
	}
	return err
}

// endpoint returns the endpoint to use now: the one in use, or the first
// again once RetryFirst has passed since the client moved off it.
func (c *Client) endpoint() (int, *url.URL) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != 0 && c.o.Now().Sub(c.moved) >= c.o.RetryFirst {
		c.switchTo(0)
	}
	return c.cur, c.endpoints[c.cur]
}

// failed moves off endpoint i after a transport failure there.
func (c *Client) failed(i int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != i || len(c.endpoints) == 1 {
		return
	}
	next := (i + 1) % len(c.endpoints)
	c.o.Logger.Warn("endpoint unreachable; failing over", "from", c.endpoints[i].Host, "to", c.endpoints[next].Host, "err", err)
	c.switchTo(next)
}

func (c *Client) switchTo(i int) {
	if c.cur != i {
		c.cur, c.moved = i, c.o.Now()
		c.cursor = -1 // poke cursors are each endpoint's own
	}
}

// Endpoint returns the base URL in use now, and whether it is a relay's.
func (c *Client) Endpoint() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endpoints[c.cur].String(), c.cur < c.relays
}

// Retryable reports whether err may succeed later: network trouble, a 5xx,
// 429 or 408. A 4xx otherwise means the request itself is refused.
func Retryable(err error) bool {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusRequestTimeout
	}
	var ne *netError
	return errors.As(err, &ne)
}

// netError marks a transport failure (retryable).
type netError struct{ err error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

func do(ctx context.Context, hc *http.Client, base *url.URL, method, path, bearer string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := base.String() + path
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return &netError{err}
	}
	defer resp.Body.Close()
	return readResponse(resp, out)
}

func readResponse(resp *http.Response, out any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return &netError{err}
	}
	if resp.StatusCode >= 400 {
		ae := &api.Error{}
		if json.Unmarshal(b, ae) != nil || ae.Reason == "" {
			ae = &api.Error{Status: resp.StatusCode, Reason: http.StatusText(resp.StatusCode), Message: strings.TrimSpace(string(b))}
		}
		ae.Status = resp.StatusCode
		return ae
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode %d response: %w", resp.StatusCode, err)
	}
	return nil
}

func parseHub(s string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(s, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("hub URL %q: want https://host[:port]", s)
	}
	return u, nil
}

func timeout(d time.Duration) time.Duration {
	if d <= 0 {
		return 30 * time.Second
	}
	return d
}

func transport(tc *tls.Config) *http.Transport {
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 15 * time.Second,
		MaxIdleConns:        4,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     5 * time.Minute,
		ForceAttemptHTTP2:   true,
	}
}
