package client

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/shoalfleet/shoal/api"
)

// The hub round trips (enrol, renew, report, poll, attest) are tested
// against a real hub over TLS in package hub.

func TestRetryable(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"network", fmt.Errorf("report: %w", &netError{&net.OpError{Op: "dial", Err: errors.New("refused")}}), true},
		{"503", &api.Error{Status: 503, Reason: api.ReasonUnavailable}, true},
		{"429", &api.Error{Status: 429}, true},
		{"400", fmt.Errorf("x: %w", &api.Error{Status: 400, Reason: api.ReasonBadRequest}), false},
		{"403 revoked", &api.Error{Status: 403, Reason: api.ReasonDeviceRevoked}, false},
		{"other", errors.New("boom"), false},
	}
	for _, c := range cases {
		if got := Retryable(c.err); got != c.want {
			t.Errorf("%s: Retryable = %v", c.name, got)
		}
	}
}

func TestCSR(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p, err := CSR(ec)
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.ParseCSR(p)
	if err != nil {
		t.Fatal(err)
	}
	if !ec.PublicKey.Equal(c.PublicKey) {
		t.Error("CSR is not for the key")
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	if _, err := CSR(rk); err == nil {
		t.Error("RSA key accepted")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := CSR(p384); err == nil {
		t.Error("P-384 key accepted")
	}
}

func TestParseHub(t *testing.T) {
	for in, ok := range map[string]bool{
		"https://hub:8443": true, "https://hub/": true, "http://hub": false, "hub:8443": false, "": false,
	} {
		if _, err := parseHub(in); (err == nil) != ok {
			t.Errorf("parseHub(%q): %v", in, err)
		}
	}
}
