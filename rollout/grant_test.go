package rollout

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/rollout/grant"
)

// testCA makes a CA key and certificate as the hub makes its own.
func testCA(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestGrantSignCheck(t *testing.T) {
	key, caPEM := testCA(t)
	other, _ := testCA(t)
	nonce := []byte("0123456789abcdef")
	body := api.GrantBody{ID: "g1", Device: "d1", Commit: commit, SpecHash: "aa", Rollout: 7, Why: WhyWave, Nonce: nonce, Issued: time.Now()}
	good, err := Sign(key, body)
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := Sign(other, body)
	tampered := *good
	tampered.Body = json.RawMessage(string(good.Body[:len(good.Body)-1]) + ` `)
	ck, err := grant.NewChecker(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	want := grant.Expect{Device: "d1", Commit: commit, SpecHash: "aa", Nonce: nonce}
	tests := []struct {
		name   string
		g      *api.Grant
		want   grant.Expect
		err    error
		reason string
	}{
		{name: "good", g: good, want: want},
		{name: "signed by another key", g: forged, want: want, err: grant.ErrForged, reason: "grant-forged"},
		{name: "body changed", g: &tampered, want: want, err: grant.ErrForged, reason: "grant-forged"},
		{name: "other device", g: good, want: grant.Expect{Device: "d2", Commit: commit, SpecHash: "aa", Nonce: nonce}, err: grant.ErrReplayed, reason: "grant-replayed"},
		{name: "other commit", g: good, want: grant.Expect{Device: "d1", Commit: "22", SpecHash: "aa", Nonce: nonce}, err: grant.ErrReplayed},
		{name: "other spec", g: good, want: grant.Expect{Device: "d1", Commit: commit, SpecHash: "bb", Nonce: nonce}, err: grant.ErrReplayed},
		{name: "old nonce", g: good, want: grant.Expect{Device: "d1", Commit: commit, SpecHash: "aa", Nonce: []byte("fedcba9876543210")}, err: grant.ErrReplayed},
		{name: "empty", g: &api.Grant{}, want: want, err: grant.ErrMalformed, reason: "grant-malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ck.Check(tc.g, tc.want)
			if tc.err == nil {
				if err != nil || b.ID != "g1" || b.Rollout != 7 || b.Version != grant.Version {
					t.Fatalf("Check = %+v, %v", b, err)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if tc.reason != "" && grant.Reason(err) != tc.reason {
				t.Errorf("reason = %s, want %s", grant.Reason(err), tc.reason)
			}
		})
	}
	if _, err := grant.NewChecker([]byte("not pem")); err == nil {
		t.Error("NewChecker took garbage")
	}
}

// FuzzGrantCheck feeds arbitrary grants to the device's checker: it must
// never panic, and never accept anything but a grant the CA signed.
func FuzzGrantCheck(f *testing.F) {
	key, caPEM := testCA(f)
	ck, err := grant.NewChecker(caPEM)
	if err != nil {
		f.Fatal(err)
	}
	nonce := []byte("0123456789abcdef")
	g, _ := Sign(key, api.GrantBody{ID: "g", Device: "d1", Commit: commit, SpecHash: "aa", Nonce: nonce})
	f.Add([]byte(g.Body), g.Signature)
	f.Add([]byte(`{"version":1}`), []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01})
	f.Add([]byte(`null`), []byte{})
	f.Fuzz(func(t *testing.T, body, sig []byte) {
		b, err := ck.Check(&api.Grant{Body: body, Signature: sig}, grant.Expect{Device: "d1", Commit: commit, SpecHash: "aa", Nonce: nonce})
		if err == nil && (string(body) != string(g.Body) || b.Device != "d1") {
			t.Fatalf("accepted a grant the CA did not sign: %q", body)
		}
	})
}
