package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"
)

func csr(t testing.TB, key any) string {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestValidate(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := csr(t, ec)
	now := time.Now()
	st := func(f func(*Status)) *Status {
		s := &Status{APIVersion: Version, Seq: 1, Time: now, State: StateConverged}
		f(s)
		return s
	}
	cases := []struct {
		name string
		v    interface{ Validate() error }
		ok   bool
	}{
		{"status ok", st(func(*Status) {}), true},
		{"status wrong version", st(func(s *Status) { s.APIVersion = "v0" }), false},
		{"status seq 0", st(func(s *Status) { s.Seq = 0 }), false},
		{"status no time", st(func(s *Status) { s.Time = time.Time{} }), false},
		{"status bad state", st(func(s *Status) { s.State = "happy" }), false},
		{"status bad device ID", st(func(s *Status) { s.DeviceID = "Dev 1" }), false},
		{"status app without name", st(func(s *Status) { s.Apps = []AppStatus{{}} }), false},
		{"status bad problem kind", st(func(s *Status) { s.Problem = &Problem{Kind: "sad"} }), false},
		{"enrol ok", &EnrolRequest{APIVersion: Version, Token: "t", CSR: good, KeyKind: KeyTPM}, true},
		{"enrol RSA CSR", &EnrolRequest{APIVersion: Version, Token: "t", CSR: csr(t, rk), KeyKind: KeyTPM}, false},
		{"enrol no token", &EnrolRequest{APIVersion: Version, CSR: good, KeyKind: KeyTPM}, false},
		{"enrol bad key kind", &EnrolRequest{APIVersion: Version, Token: "t", CSR: good, KeyKind: "hsm"}, false},
		{"enrol garbage CSR", &EnrolRequest{APIVersion: Version, Token: "t", CSR: "nope", KeyKind: KeyTPM}, false},
		{"enrol activation ok", &EnrolRequest{APIVersion: Version, Token: "t", CSR: good, KeyKind: KeyTPM, Activation: &Activation{AKPublic: []byte{1}, Secret: make([]byte, 32)}}, true},
		{"enrol activation with attestation", &EnrolRequest{APIVersion: Version, Token: "t", CSR: good, KeyKind: KeyTPM, Activation: &Activation{AKPublic: []byte{1}, Secret: make([]byte, 32)},
			Attestation: &AttestRequest{APIVersion: Version, Nonce: make([]byte, 32), AKPublic: []byte{1}, Quote: []byte{1}, Signature: []byte{1}}}, false},
		{"enrol activation for a software key", &EnrolRequest{APIVersion: Version, Token: "t", CSR: good, KeyKind: KeySoftware, Activation: &Activation{AKPublic: []byte{1}, Secret: make([]byte, 32)}}, false},
		{"enrol activation without secret", &EnrolRequest{APIVersion: Version, Token: "t", CSR: good, KeyKind: KeyTPM, Activation: &Activation{AKPublic: []byte{1}}}, false},
		{"enrol activation oversized secret", &EnrolRequest{APIVersion: Version, Token: "t", CSR: good, KeyKind: KeyTPM, Activation: &Activation{AKPublic: []byte{1}, Secret: make([]byte, 65)}}, false},
		{"enrol EK without area", &EnrolRequest{APIVersion: Version, Token: "t", CSR: good, KeyKind: KeyTPM, EK: &EndorsementKey{Public: []byte{1}}}, false},
		{"enrol challenge ok", &EnrolChallenge{APIVersion: Version, IDObject: []byte{1}, EncSecret: []byte{1}}, true},
		{"enrol challenge empty", &EnrolChallenge{APIVersion: Version}, false},
		{"renew ok", &RenewRequest{APIVersion: Version, CSR: good}, true},
		{"attest ok", &AttestRequest{APIVersion: Version, Nonce: make([]byte, 32), AKPublic: []byte{1}, Quote: []byte{1}, Signature: []byte{1}, PCRs: map[int][]byte{7: make([]byte, 32)}}, true},
		{"attest short nonce", &AttestRequest{APIVersion: Version, Nonce: make([]byte, 8), AKPublic: []byte{1}, Quote: []byte{1}, Signature: []byte{1}}, false},
		{"attest PCR out of range", &AttestRequest{APIVersion: Version, Nonce: make([]byte, 32), AKPublic: []byte{1}, Quote: []byte{1}, Signature: []byte{1}, PCRs: map[int][]byte{24: make([]byte, 32)}}, false},
		{"attest short PCR", &AttestRequest{APIVersion: Version, Nonce: make([]byte, 32), AKPublic: []byte{1}, Quote: []byte{1}, Signature: []byte{1}, PCRs: map[int][]byte{7: make([]byte, 20)}}, false},
		{"attest result failed without reason", &AttestResult{APIVersion: Version}, false},
		{"poke request ok", &PokeRequest{APIVersion: Version, Group: "edge"}, true},
		{"poke request bad device", &PokeRequest{APIVersion: Version, Devices: []string{"-x"}}, false},
		{"poke ok", &Poke{APIVersion: Version, ID: 3}, true},
		{"poke id 0", &Poke{APIVersion: Version}, false},
		{"token request ok", &TokenRequest{APIVersion: Version, DeviceID: "dev-1", TTL: time.Hour}, true},
		{"token request negative ttl", &TokenRequest{APIVersion: Version, DeviceID: "dev-1", TTL: -1}, false},
		{"token revoke empty", &TokenRevokeRequest{APIVersion: Version}, false},
		{"nonce short", &Nonce{APIVersion: Version, Nonce: []byte{1}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.v.Validate()
			if c.ok && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !c.ok && !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
}

func TestValidDeviceID(t *testing.T) {
	for id, want := range map[string]bool{
		"dev-1": true, "a": true, "edge.berlin_07": true, strings.Repeat("a", 64): true,
		"": false, "-a": false, "a-": false, "Dev": false, "a/b": false, strings.Repeat("a", 65): false,
	} {
		if got := ValidDeviceID(id); got != want {
			t.Errorf("ValidDeviceID(%q) = %v", id, got)
		}
	}
}

// FuzzParseCSR: arbitrary input is refused or yields a checked ECDSA CSR.
func FuzzParseCSR(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add(csr(f, ec))
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCSR(s)
		if err == nil && (c == nil || c.PublicKeyAlgorithm != x509.ECDSA || c.CheckSignature() != nil) {
			t.Fatalf("accepted a bad CSR: %+v", c)
		}
	})
}
