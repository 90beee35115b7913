package attest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

// FuzzVerify feeds hostile quotes to the verifier: it must never panic, never
// accept what was not signed, and map every refusal to one stable reason.
func FuzzVerify(f *testing.F) {
	ak := newFakeAK(f)
	nonce := []byte("0123456789abcdef0123456789abcdef")
	pcrs, vals := fakePCRs()
	q := ak.quote(f, nonce, pcrs, vals)
	f.Add(q.Attest, q.Signature, ak.pub, false, vals[AppPCR])
	f.Add(q.Attest[:40], q.Signature, ak.pub, false, vals[AppPCR])
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18, 0, 0}, []byte{0, 0x18}, ak.pub, false, []byte{})
	f.Add([]byte("garbage"), []byte("garbage"), []byte("garbage"), true, []byte{1})

	sw, err := newSoftwareBackend(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	sq, err := sw.quote(nonce, pcrs)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sq.Attest, sq.Signature, sq.AK, true, sq.PCRs[AppPCR])

	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, attest, sig, akPub []byte, software bool, app []byte) {
		store := &MemNonceStore{}
		ctx := context.Background()
		if err := store.Issue(ctx, "d", nonce, now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		v := NewVerifier(VerifierOptions{Nonces: store, Now: func() time.Time { return now }})
		qv := map[int][]byte{}
		for k, val := range vals {
			qv[k] = val
		}
		qv[AppPCR] = app
		res, err := v.Verify(ctx, Request{DeviceID: "d", Quote: &Quote{Attest: attest, Signature: sig, AK: akPub, PCRs: qv},
			AK: akPub, Software: software, Policy: Policy{PCRs: pcrs}})
		if err != nil {
			if res != nil {
				t.Fatal("result with an error")
			}
			if Reason(err) == "error" {
				t.Fatalf("refusal without a reason: %v", err)
			}
			return
		}
		// Accepted: it must be a signed quote over exactly this nonce.
		p, perr := parseQuote(&Quote{Attest: attest, Signature: sig}, software)
		if perr != nil || string(p.extraData) != string(nonce) {
			t.Fatalf("accepted a quote that does not parse or answers another nonce: %v", perr)
		}
	})
}

// FuzzEKCert feeds hostile EK certificates, as a device sends them, to the
// parser and the chain check: never a panic, a parsed certificate always
// comes from the input, and nothing verifies but a certificate for the EK.
func FuzzEKCert(f *testing.F) {
	root := newTestCA(f, "Test TPM Maker Root", nil)
	inter := newTestCA(f, "Test TPM Maker EK CA 01", root)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	ekPub := pkixOf(f, &ek.PublicKey)
	roots, err := NewEKRoots([]*x509.Certificate{root.cert, inter.cert})
	if err != nil {
		f.Fatal(err)
	}
	good := issueEK(f, inter, &ek.PublicKey, ekCertShape{})
	f.Add(good)
	f.Add(append(bytes.Clone(good), 0xff, 0xff, 0xff))
	f.Add(append([]byte{0x10, 0x01, 0x00, byte(len(good) >> 8), byte(len(good))}, good...))
	f.Add([]byte{0x10, 0x01, 0x00, 0xff, 0xff, 0x30})
	f.Add([]byte{0x30, 0x80, 0x00, 0x00})
	f.Add([]byte("garbage"))
	now := time.Now()
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseEKCert(b)
		if err == nil && !bytes.Contains(b, c.Raw) {
			t.Fatal("parsed a certificate that is not in the input")
		}
		c, err = roots.Verify(b, ekPub, now)
		if err == nil && !bytes.Equal(pkixOf(t, c.PublicKey), ekPub) {
			t.Fatal("verified a certificate for another key")
		}
		if err != nil && !errors.Is(err, ErrEKUntrusted) {
			t.Fatalf("Verify error %v does not wrap ErrEKUntrusted", err)
		}
	})
}
