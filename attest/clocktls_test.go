package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestClockTLS: a device that booted in 1970 with no NTP reachable still
// completes a real TLS handshake with the hub when the certificate check uses
// Clock.Now, because the clock is bounded by the fleet commit time; with its
// raw clock the same handshake fails with "not yet valid".
func TestClockTLS(t *testing.T) {
	commit := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hub"},
		NotBefore: commit.Add(-24 * time.Hour), NotAfter: commit.Add(365 * 24 * time.Hour),
		DNSNames: []string{"hub.test"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	srv.StartTLS()
	defer srv.Close()

	start := time.Now()
	boot1970 := func() time.Time { return time.Unix(0, 0).Add(time.Since(start)) }
	clock := NewClock(ClockOptions{Now: boot1970})
	clock.SetLowerBound("fleet-commit", commit)

	get := func(now func() time.Time) error {
		roots := x509.NewCertPool()
		roots.AddCert(cert)
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "hub.test", Time: now}}}
		resp, err := c.Get(srv.URL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	if err := get(boot1970); err == nil || !strings.Contains(err.Error(), "not yet valid") && !strings.Contains(err.Error(), "expired") {
		t.Fatalf("raw 1970 clock: %v, want a certificate validity error", err)
	}
	if err := get(clock.Now); err != nil {
		t.Fatalf("bounded clock: %v", err)
	}
}
