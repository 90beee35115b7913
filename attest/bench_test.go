package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"math/big"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// acceptAll is a NonceStore that accepts every nonce, so a benchmark measures
// the verifier and not a store.
type acceptAll struct{}

func (acceptAll) Issue(context.Context, string, []byte, time.Time) error   { return nil }
func (acceptAll) Consume(context.Context, string, []byte, time.Time) error { return nil }

// BenchmarkVerify verifies one quote a real TPM (swtpm) signed, over eight
// boot PCRs and AppPCR: parse, key, signature, counters, selection, digest
// and policy. The nonce store is left out.
func BenchmarkVerify(b *testing.B) {
	sw := startSwtpm(b, "")
	dev := tpmDevice(b, sw)
	pol := testPolicy(b, dev)
	q, err := dev.Quote(context.Background(), randomNonce(b, 32), bootPCRs)
	if err != nil {
		b.Fatal(err)
	}
	v := NewVerifier(VerifierOptions{Nonces: acceptAll{}})
	req := Request{DeviceID: "dev-a", Quote: q, AK: dev.Identity().AK, Policy: pol}
	ctx := context.Background()
	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		if _, err := v.Verify(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b)
}

// BenchmarkVerifyParallel is BenchmarkVerify on every core (one hub, all cores).
func BenchmarkVerifyParallel(b *testing.B) {
	sw := startSwtpm(b, "")
	dev := tpmDevice(b, sw)
	pol := testPolicy(b, dev)
	q, err := dev.Quote(context.Background(), randomNonce(b, 32), bootPCRs)
	if err != nil {
		b.Fatal(err)
	}
	v := NewVerifier(VerifierOptions{Nonces: acceptAll{}})
	req := Request{DeviceID: "dev-a", Quote: q, AK: dev.Identity().AK, Policy: pol}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Verify(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkBaselineECDSAVerify is the floor for BenchmarkVerify: one bare
// ECDSA P-256 verification of the same quote's signature.
func BenchmarkBaselineECDSAVerify(b *testing.B) {
	sw := startSwtpm(b, "")
	dev := tpmDevice(b, sw)
	q, err := dev.Quote(context.Background(), randomNonce(b, 32), bootPCRs)
	if err != nil {
		b.Fatal(err)
	}
	key, err := akKey(q.AK, false)
	if err != nil {
		b.Fatal(err)
	}
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
	if err != nil {
		b.Fatal(err)
	}
	e, _ := s.Signature.ECDSA()
	r, ss := new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)
	cpu := startCPU()
	for b.Loop() {
		d := sha256.Sum256(q.Attest)
		if !ecdsa.Verify(key, d[:], r, ss) {
			b.Fatal("bad signature")
		}
	}
	cpu.report(b)
}

// cpuClock measures this process's CPU time (user+system, all threads), a
// figure the other tenants of a shared machine disturb far less than wall time.
type cpuClock struct{ start time.Duration }

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuClock { return cpuClock{start: processCPU()} }

func (c cpuClock) report(b *testing.B) {
	b.ReportMetric(float64(processCPU()-c.start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkQuoteVerifySwtpm is the whole round on swtpm: issue a nonce,
// quote (TPM2_Quote and PCR reads over TCP), verify with the in-memory store.
func BenchmarkQuoteVerifySwtpm(b *testing.B) {
	sw := startSwtpm(b, "")
	dev := tpmDevice(b, sw)
	pol := testPolicy(b, dev)
	v := NewVerifier(VerifierOptions{Nonces: &MemNonceStore{}})
	ak := dev.Identity().AK
	ctx := context.Background()
	for b.Loop() {
		n, err := v.Issue(ctx, "dev-a")
		if err != nil {
			b.Fatal(err)
		}
		q, err := dev.Quote(ctx, n, bootPCRs)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := v.Verify(ctx, Request{DeviceID: "dev-a", Quote: q, AK: ak, Policy: pol}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineTPMQuoteSwtpm is the floor for BenchmarkQuoteVerifySwtpm:
// the bare TPM2_Quote command on the same swtpm.
func BenchmarkBaselineTPMQuoteSwtpm(b *testing.B) {
	sw := startSwtpm(b, "")
	dev := tpmDevice(b, sw)
	pcrs := append([]int{AppPCR}, bootPCRs...)
	for b.Loop() {
		rawQuote(b, dev, randomNonce(b, 32), tpm2.TPMAlgSHA256, pcrs)
	}
}
