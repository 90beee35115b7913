package api

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// fuzzKey is fixed so seeds signed with it stay valid across runs.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

func goodReceipt() *Receipt {
	return &Receipt{APIVersion: ReceiptVersion, DeviceID: "dev-1", BundleHash: strings.Repeat("a", 64),
		Commit: strings.Repeat("b", 40), Release: "1.2.0", Result: ReceiptApplied, Time: time.Unix(1e9, 0).UTC()}
}

func signed(t testing.TB, r *Receipt, key crypto.Signer) []byte {
	t.Helper()
	if err := SignReceipt(r, key); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerifyReceipt(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edit := func(f func(*Receipt)) *Receipt { r := goodReceipt(); f(r); return r }
	cases := []struct {
		name string
		b    func(t *testing.T) []byte
		want string // "" accepts; else a part of the error
	}{
		{"ed25519", func(t *testing.T) []byte { return signed(t, goodReceipt(), fuzzKey) }, ""},
		{"ecdsa (tpm)", func(t *testing.T) []byte { return signed(t, goodReceipt(), ec) }, ""},
		{"rsa (tpm)", func(t *testing.T) []byte { return signed(t, goodReceipt(), rk) }, ""},
		{"unsigned", func(t *testing.T) []byte { b, _ := json.Marshal(goodReceipt()); return b }, "not signed"},
		{"field changed after signing", func(t *testing.T) []byte {
			r := goodReceipt()
			signed(t, r, ec)
			r.Commit = strings.Repeat("c", 40)
			b, _ := json.Marshal(r)
			return b
		}, "does not verify"},
		{"another key's signature", func(t *testing.T) []byte {
			r := goodReceipt()
			signed(t, r, ec)
			r2 := goodReceipt()
			signed(t, r2, other)
			r.Signature = r2.Signature
			b, _ := json.Marshal(r)
			return b
		}, "does not verify"},
		{"wrong version", func(t *testing.T) []byte { return signed(t, edit(func(r *Receipt) { r.APIVersion = "v0" }), ec) }, "apiVersion"},
		{"bad device", func(t *testing.T) []byte { return signed(t, edit(func(r *Receipt) { r.DeviceID = "../x" }), ec) }, "device ID"},
		{"bad bundle hash", func(t *testing.T) []byte { return signed(t, edit(func(r *Receipt) { r.BundleHash = "xyz" }), ec) }, "bundle hash"},
		{"bad commit", func(t *testing.T) []byte { return signed(t, edit(func(r *Receipt) { r.Commit = "HEAD" }), ec) }, "commit"},
		{"bad result", func(t *testing.T) []byte { return signed(t, edit(func(r *Receipt) { r.Result = "maybe" }), ec) }, "result"},
		{"too many errors", func(t *testing.T) []byte {
			return signed(t, edit(func(r *Receipt) { r.Errors = make([]string, 33) }), ec)
		}, "errors"},
		{"not json", func(*testing.T) []byte { return []byte("{") }, "receipt"},
		{"too large", func(*testing.T) []byte { return make([]byte, MaxReceiptBytes+1) }, "bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, pub, err := VerifyReceipt(c.b(t))
			if c.want == "" {
				if err != nil || r == nil || pub == nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrReceipt) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("err %v, want one containing %q wrapping ErrReceipt and ErrInvalid", err, c.want)
			}
		})
	}
}

func TestReceiptBatchValidate(t *testing.T) {
	raw := json.RawMessage(`{}`)
	cases := []struct {
		name string
		b    *ReceiptBatch
		ok   bool
	}{
		{"one", &ReceiptBatch{APIVersion: ReceiptVersion, Receipts: []json.RawMessage{raw}}, true},
		{"nil", nil, false},
		{"wrong version", &ReceiptBatch{APIVersion: Version, Receipts: []json.RawMessage{raw}}, false},
		{"empty", &ReceiptBatch{APIVersion: ReceiptVersion}, false},
		{"too many", &ReceiptBatch{APIVersion: ReceiptVersion, Receipts: make([]json.RawMessage, MaxReceiptBatch+1)}, false},
		{"one too large", &ReceiptBatch{APIVersion: ReceiptVersion, Receipts: []json.RawMessage{make([]byte, MaxReceiptBytes+1)}}, false},
	}
	for _, c := range cases {
		if err := c.b.Validate(); (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// FuzzReceipt: receipt parsing never panics and accepts only receipts whose
// signature verifies with the key they carry.
func FuzzReceipt(f *testing.F) {
	f.Add(signed(f, goodReceipt(), fuzzKey))
	f.Add(signed(f, &Receipt{APIVersion: ReceiptVersion, DeviceID: "dev-1", Result: ReceiptRefused, Reason: "bundle-invalid"}, fuzzKey))
	f.Add([]byte(`{"apiVersion":"shoal.receipt/v1"}`))
	f.Add([]byte(`{"apiVersion":"shoal.receipt/v1","deviceID":"dev-1","result":"applied","publicKey":"AAAA","signature":"AAAA"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, pub, err := VerifyReceipt(b)
		if err != nil {
			if !errors.Is(err, ErrReceipt) {
				t.Fatalf("error does not wrap ErrReceipt: %v", err)
			}
			return
		}
		if len(r.Signature) == 0 || pub == nil {
			t.Fatal("accepted an unsigned receipt")
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted a receipt that does not validate: %v", err)
		}
	})
}
