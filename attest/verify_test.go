package attest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/prometheus/client_golang/prometheus"
)

// fakeClock is a settable time source for nonce expiry.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// bootPCRs is the boot PCR selection the tests' policy asks for.
var bootPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}

// tpmDevice is an Attester on a swtpm, with its application PCR extended.
func tpmDevice(t testing.TB, sw *swtpm) *Attester {
	t.Helper()
	ctx := context.Background()
	a, err := New(ctx, Options{StateDir: t.TempDir(), TPM: sw.Open(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.ExtendApp(ctx, "spec-hash-1", "1.2.3"); err != nil {
		t.Fatal(err)
	}
	return a
}

func testPolicy(t testing.TB, a *Attester) Policy {
	t.Helper()
	// Expected boot PCRs are what this swtpm holds now: a release would ship them.
	vals, err := readPCRs(a.b.(*tpmBackend).t, bootPCRs)
	if err != nil {
		t.Fatal(err)
	}
	exp := map[int][]byte{AppPCR: AppPCRValue("spec-hash-1", "1.2.3")}
	for _, p := range bootPCRs {
		exp[p] = vals[p]
	}
	return Policy{PCRs: append(slices.Clone(bootPCRs), AppPCR), Expected: exp}
}

func randomNonce(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// rawQuote has the TPM quote pcrs of the given bank with the device's AK,
// bypassing the Attester's own checks, to build hostile quotes.
func rawQuote(t testing.TB, a *Attester, nonce []byte, bank tpm2.TPMAlgID, pcrs []int) *Quote {
	t.Helper()
	b := a.b.(*tpmBackend)
	sel := selection(pcrs)
	sel.PCRSelections[0].Hash = bank
	if len(pcrs) == 0 {
		sel = tpm2.TPMLPCRSelection{}
	}
	rsp, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: b.ak.Handle, Name: b.ak.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      sel,
	}.Execute(b.t)
	if err != nil {
		t.Fatalf("raw quote: %v", err)
	}
	vals := map[int][]byte{}
	if bank == tpm2.TPMAlgSHA256 && len(pcrs) > 0 {
		if vals, err = readPCRs(b.t, pcrs); err != nil {
			t.Fatal(err)
		}
	}
	return &Quote{Attest: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature), AK: b.akPub, PCRs: vals}
}

// certifyAttest has the AK sign a TPM-generated structure that is not a
// quote: a certification of the device key.
func certifyAttest(t testing.TB, a *Attester, nonce []byte) *Quote {
	t.Helper()
	b := a.b.(*tpmBackend)
	rsp, err := tpm2.Certify{
		ObjectHandle:   tpm2.AuthHandle{Handle: b.dev.Handle, Name: b.dev.Name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:     tpm2.AuthHandle{Handle: b.ak.Handle, Name: b.ak.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(b.t)
	if err != nil {
		t.Fatalf("certify: %v", err)
	}
	return &Quote{Attest: rsp.CertifyInfo.Bytes(), Signature: tpm2.Marshal(rsp.Signature), AK: b.akPub, PCRs: map[int][]byte{}}
}

// TestVerifySwtpm drives the verifier with quotes a real (software) TPM
// signed: a good one, and each kind of bad input or attack, each refused
// with its own error.
func TestVerifySwtpm(t *testing.T) {
	sw := startSwtpm(t, "")
	dev := tpmDevice(t, sw)
	other := tpmDevice(t, startSwtpm(t, "")) // another device, its own TPM and AK
	pol := testPolicy(t, dev)
	ak := dev.Identity().AK
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	store := &MemNonceStore{}
	v := NewVerifier(VerifierOptions{Nonces: store, Now: clock.Now, NonceTTL: time.Minute})

	issue := func(t *testing.T, device string) []byte {
		n, err := v.Issue(ctx, device)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	goodQuote := func(t *testing.T, a *Attester, nonce []byte) *Quote {
		q, err := a.Quote(ctx, nonce, bootPCRs)
		if err != nil {
			t.Fatal(err)
		}
		return q
	}

	t.Run("ok", func(t *testing.T) {
		n := issue(t, "dev-a")
		res, err := v.Verify(ctx, Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, n), AK: ak, Policy: pol, Nonce: n})
		if err != nil {
			t.Fatalf("good quote refused: %v", err)
		}
		if res.Software || len(res.Unchecked) != 0 || !bytes.Equal(res.PCRs[AppPCR], AppPCRValue("spec-hash-1", "1.2.3")) {
			t.Fatalf("result = %+v", res)
		}
	})

	tests := []struct {
		name string
		req  func(t *testing.T) Request
		want error
	}{
		{"replayed quote", func(t *testing.T) Request {
			n := issue(t, "dev-a")
			q := goodQuote(t, dev, n)
			if _, err := v.Verify(ctx, Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}); err != nil {
				t.Fatalf("first use refused: %v", err)
			}
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}
		}, ErrReplay},
		{"nonce never issued", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, randomNonce(t, 32)), AK: ak, Policy: pol}
		}, ErrWrongNonce},
		{"nonce issued to another device", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, issue(t, "dev-b")), AK: ak, Policy: pol}
		}, ErrWrongNonce},
		{"quote for another nonce than the session's", func(t *testing.T) Request {
			n1, n2 := issue(t, "dev-a"), issue(t, "dev-a")
			return Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, n2), AK: ak, Policy: pol, Nonce: n1}
		}, ErrWrongNonce},
		{"stale nonce", func(t *testing.T) Request {
			n := issue(t, "dev-a")
			clock.Add(2 * time.Minute)
			return Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, n), AK: ak, Policy: pol}
		}, ErrStaleNonce},
		{"nonce shorter than 16 bytes", func(t *testing.T) Request {
			n := randomNonce(t, 8)
			if err := store.Issue(ctx, "dev-a", n, clock.Now().Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			return Request{DeviceID: "dev-a", Quote: rawQuote(t, dev, n, tpm2.TPMAlgSHA256, pol.PCRs), AK: ak, Policy: pol}
		}, ErrShortNonce},
		{"signed by another device's AK", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: goodQuote(t, other, issue(t, "dev-a")), AK: ak, Policy: pol}
		}, ErrUnknownKey},
		{"another AK's signature under this AK's name", func(t *testing.T) Request {
			q := goodQuote(t, other, issue(t, "dev-a"))
			q.AK = ak
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}
		}, ErrBadSignature},
		{"no registered key", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, issue(t, "dev-a")), Policy: pol}
		}, ErrUnknownKey},
		{"quoted bytes altered", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			q.Attest[len(q.Attest)-1] ^= 1
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}
		}, ErrBadSignature},
		{"one reported PCR value modified", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			q.PCRs[4][0] ^= 1
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}
		}, ErrPCRDigest},
		{"a PCR value missing", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			delete(q.PCRs, 4)
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}
		}, ErrPCRDigest},
		{"empty PCR selection", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: rawQuote(t, dev, issue(t, "dev-a"), tpm2.TPMAlgSHA256, nil), AK: ak, Policy: pol}
		}, ErrPCRSelection},
		{"partial PCR selection", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: rawQuote(t, dev, issue(t, "dev-a"), tpm2.TPMAlgSHA256, []int{0, 1, AppPCR}), AK: ak, Policy: pol}
		}, ErrPCRSelection},
		{"sha1 bank", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: rawQuote(t, dev, issue(t, "dev-a"), tpm2.TPMAlgSHA1, pol.PCRs), AK: ak, Policy: pol}
		}, ErrHashBank},
		{"TPM-signed structure that is not a quote", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: certifyAttest(t, dev, issue(t, "dev-a")), AK: ak, Policy: pol}
		}, ErrNotQuote},
		{"wrong magic", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			q.Attest[0] = 0
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}
		}, ErrNotQuote},
		{"truncated quote", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			q.Attest = q.Attest[:len(q.Attest)-7]
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}
		}, ErrMalformed},
		{"truncated signature", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			q.Signature = q.Signature[:10]
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}
		}, ErrMalformed},
		{"garbage", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: &Quote{Attest: randomNonce(t, 100), Signature: randomNonce(t, 70), AK: ak}, AK: ak, Policy: pol}
		}, ErrNotQuote},
		{"garbage after the magic", func(t *testing.T) Request {
			g := append([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18}, randomNonce(t, 100)...)
			return Request{DeviceID: "dev-a", Quote: &Quote{Attest: g, Signature: randomNonce(t, 70), AK: ak}, AK: ak, Policy: pol}
		}, ErrMalformed},
		{"counters went backwards", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			p, err := parseQuote(q, false)
			if err != nil {
				t.Fatal(err)
			}
			ci := p.clock
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol,
				Last: &Counters{ResetCount: ci.ResetCount + 1, RestartCount: 0}}
		}, ErrCountersBackwards},
		{"restart counter went backwards", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			p, _ := parseQuote(q, false)
			ci := p.clock
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol,
				Last: &Counters{ResetCount: ci.ResetCount, RestartCount: ci.RestartCount + 1}}
		}, ErrCountersBackwards},
		{"clock went backwards within one boot", func(t *testing.T) Request {
			q := goodQuote(t, dev, issue(t, "dev-a"))
			p, _ := parseQuote(q, false)
			ci := p.clock
			return Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol,
				Last: &Counters{ResetCount: ci.ResetCount, RestartCount: ci.RestartCount, Clock: ci.Clock + 1}}
		}, ErrCountersBackwards},
		{"application PCR of another spec", func(t *testing.T) Request {
			p := Policy{PCRs: pol.PCRs, Expected: map[int][]byte{AppPCR: AppPCRValue("spec-hash-2", "1.2.3")}}
			return Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, issue(t, "dev-a")), AK: ak, Policy: p}
		}, ErrPCRMismatch},
		{"empty policy", func(t *testing.T) Request {
			return Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, issue(t, "dev-a")), AK: ak, Policy: Policy{}}
		}, ErrPolicy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req(t)
			res, err := v.Verify(ctx, req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify() = %v, %v; want %v", res, err, tc.want)
			}
			if res != nil {
				t.Fatalf("failed verification returned a result: %+v", res)
			}
			// Each failure is its own error: no other sentinel matches.
			for _, r := range reasons {
				if r.err != tc.want && errors.Is(err, r.err) {
					t.Errorf("error %v also matches %v", err, r.err)
				}
			}
			t.Logf("%s: %v", Reason(err), err)
		})
	}

	t.Run("metrics count results by reason", func(t *testing.T) {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(v.Collectors()...)
		for result, atLeast := range map[string]float64{"ok": 2, "replay": 1, "wrong-nonce": 3, "pcr-selection": 2, "not-quote": 3} {
			if got := metricValue(t, reg, "shoal_attest_verifications_total", "result", result); got < atLeast {
				t.Errorf("shoal_attest_verifications_total{result=%q} = %v, want >= %v", result, got, atLeast)
			}
		}
	})

	t.Run("PCR mismatch names the PCR", func(t *testing.T) {
		p := Policy{PCRs: pol.PCRs, Expected: map[int][]byte{AppPCR: pol.Expected[AppPCR], 5: bytes.Repeat([]byte{7}, 32)}}
		_, err := v.Verify(ctx, Request{DeviceID: "dev-a", Quote: goodQuote(t, dev, issue(t, "dev-a")), AK: ak, Policy: p})
		var m *PCRMismatchError
		if !errors.As(err, &m) || m.PCR != 5 {
			t.Fatalf("err = %v, want a mismatch on PCR 5", err)
		}
	})
}
