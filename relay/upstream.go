package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
)

// upstream is the relay's mutual-TLS link to the hub: its own calls
// (status, poke stream, renewal) and the requests it forwards for devices.
type upstream struct {
	base *url.URL
	id   *identity
	hc   *http.Client
	// ok is 1 while the last call reached the hub (any HTTP answer), 0 after
	// a transport failure.
	ok atomic.Bool
}

func newUpstream(hub string, id *identity) (*upstream, error) {
	u, err := url.Parse(strings.TrimRight(hub, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("hub URL %q: want https://host[:port]", hub)
	}
	tc := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    id.ca,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, _ := id.current()
			return c, nil
		},
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     2 * time.Minute,
		ForceAttemptHTTP2:   true,
	}
	up := &upstream{base: u, id: id, hc: &http.Client{Transport: tr}}
	up.ok.Store(true)
	return up, nil
}

// errUnreachable marks a transport failure: the hub could not be reached.
var errUnreachable = errors.New("hub unreachable")

// do sends one request to the hub. deviceCert, when not nil, is forwarded
// as the device's certificate. A transport failure wraps errUnreachable; an
// HTTP error status is returned as *api.Error.
func (u *upstream) do(ctx context.Context, method, path string, deviceCert []byte, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.base.String()+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if deviceCert != nil {
		req.Header.Set(api.HeaderDeviceCert, base64.StdEncoding.EncodeToString(deviceCert))
	}
	resp, err := u.hc.Do(req)
	if err != nil {
		u.ok.Store(false)
		return fmt.Errorf("%w: %v", errUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		u.ok.Store(false)
		return fmt.Errorf("%w: %v", errUnreachable, err)
	}
	u.ok.Store(true)
	if resp.StatusCode >= 400 {
		ae := &api.Error{}
		if json.Unmarshal(b, ae) != nil || ae.Reason == "" {
			ae = &api.Error{Reason: http.StatusText(resp.StatusCode), Message: strings.TrimSpace(string(b))}
		}
		ae.Status = resp.StatusCode
		return ae
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode hub answer to %s: %w", path, err)
		}
	}
	return nil
}

// retryable reports whether a failed call may succeed later.
func retryable(err error) bool {
	return errors.Is(err, errUnreachable) || errors.Is(err, context.DeadlineExceeded) || client.Retryable(err)
}

// renew asks the hub for a fresh relay certificate for the same key.
func (u *upstream) renew(ctx context.Context) (*api.Certificate, error) {
	csr, err := client.CSR(u.id.key)
	if err != nil {
		return nil, err
	}
	var c api.Certificate
	if err := u.do(ctx, "POST", "/v1/relay/renew", nil, &api.RenewRequest{APIVersion: api.Version, CSR: csr}, &c); err != nil {
		return nil, fmt.Errorf("renew relay certificate: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("renew relay certificate: %w", err)
	}
	if err := u.id.set(&c); err != nil {
		return nil, err
	}
	// Later connections present the new certificate.
	u.hc.CloseIdleConnections()
	return &c, nil
}

// pokes long-polls the hub's relay poke stream after cursor (<0: from now).
func (u *upstream) pokes(ctx context.Context, after int64, wait time.Duration) (*api.RelayPokes, error) {
	q := url.Values{"wait": {wait.String()}}
	if after >= 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	ctx, cancel := context.WithTimeout(ctx, wait+30*time.Second)
	defer cancel()
	var p api.RelayPokes
	if err := u.do(ctx, "GET", "/v1/relay/poke?"+q.Encode(), nil, nil, &p); err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("relay poke stream: %w", err)
	}
	return &p, nil
}
