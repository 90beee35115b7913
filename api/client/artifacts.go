package client

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/shoalfleet/shoal/api"
)

// ArtifactTransport returns an http.RoundTripper for downloading artifacts
// (OS releases, image tars) that asks the client's site relays first: a GET
// or HEAD of an http(s) URL goes to RELAY/v1/artifacts?url=URL with the
// device's certificate, Range and all, so a site fetches each artifact once
// over its uplink and devices resume from the relay. When no relay has it
// (404 artifact-unknown), none answers, or a relay fails (5xx), the request
// goes to its origin through next. The bytes are verified against their
// sha256 by the caller either way, as from the origin.
func (c *Client) ArtifactTransport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &artifactTransport{c: c, next: next}
}

type artifactTransport struct {
	c    *Client
	next http.RoundTripper
}

func (t *artifactTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if (req.Method != http.MethodGet && req.Method != http.MethodHead) || (req.URL.Scheme != "http" && req.URL.Scheme != "https") || req.Body != nil && req.Body != http.NoBody {
		return t.next.RoundTrip(req)
	}
	for _, relay := range t.c.endpoints[:t.c.relays] {
		if req.URL.Host == relay.Host {
			break // already a request to a relay
		}
		u := relay.JoinPath("/v1/artifacts")
		// JoinPath on a URL with no path gives "v1/artifacts": a request
		// line needs the leading slash.
		u.Path = "/" + strings.TrimPrefix(u.Path, "/")
		u.RawQuery = url.Values{"url": {req.URL.String()}}.Encode()
		r2 := req.Clone(req.Context())
		r2.URL, r2.Host = u, ""
		r2.Header.Del("Authorization") // the origin's credentials are not the relay's business
		resp, err := t.c.http().Transport.RoundTrip(r2)
		if err != nil {
			if req.Context().Err() != nil {
				return nil, err
			}
			t.c.o.Logger.Debug("relay artifact request failed; trying the next", "relay", relay.Host, "err", err)
			continue
		}
		if resp.StatusCode < 400 {
			return resp, nil
		}
		reason := errorReason(resp)
		t.c.o.Logger.Debug("relay did not serve the artifact", "relay", relay.Host, "status", resp.StatusCode, "reason", reason)
	}
	return t.next.RoundTrip(req)
}

// errorReason reads and closes an error response, returning its reason.
func errorReason(resp *http.Response) string {
	defer resp.Body.Close()
	err := readResponse(resp, nil)
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Reason
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	return strings.TrimSpace(resp.Status)
}
