package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// fakeAK signs TPM-format quotes in software, with a TPMT_PUBLIC that claims
// the AK attributes. It stands in for a TPM where only the verifier's speed
// or parsing is under test (benchmarks, fuzz seeds); every behaviour test
// uses swtpm or the simulator.
type fakeAK struct {
	key *ecdsa.PrivateKey
	pub []byte // TPMT_PUBLIC
}

func newFakeAK(t testing.TB) *fakeAK {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := k.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	tmpl := akTemplate(true)
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
		Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
	})
	return &fakeAK{key: k, pub: tpm2.Marshal(tmpl)}
}

// quote builds and signs a TPM-format quote of pcrs with the given values.
func (f *fakeAK) quote(t testing.TB, nonce []byte, pcrs []int, vals map[int][]byte) *Quote {
	t.Helper()
	a := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: make([]byte, 34)},
		ExtraData:       tpm2.TPM2BData{Buffer: nonce},
		ClockInfo:       tpm2.TPMSClockInfo{Clock: 1000, ResetCount: 7, RestartCount: 1, Safe: true},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: selection(pcrs),
			PCRDigest: tpm2.TPM2BDigest{Buffer: pcrDigest(pcrs, vals)},
		}),
	}
	attest := tpm2.Marshal(a)
	d := sha256.Sum256(attest)
	r, s, err := ecdsa.Sign(rand.Reader, f.key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash:       tpm2.TPMAlgSHA256,
		SignatureR: tpm2.TPM2BECCParameter{Buffer: pad32(r)},
		SignatureS: tpm2.TPM2BECCParameter{Buffer: pad32(s)},
	})}
	return &Quote{Attest: attest, Signature: tpm2.Marshal(sig), AK: f.pub, PCRs: vals}
}

func pad32(i *big.Int) []byte { return i.FillBytes(make([]byte, 32)) }

// fakePCRs is a full boot selection plus AppPCR with distinct values.
func fakePCRs() ([]int, map[int][]byte) {
	pcrs := append(append([]int{}, bootPCRs...), AppPCR)
	vals := map[int][]byte{}
	for _, p := range pcrs {
		v := sha256.Sum256([]byte{byte(p)})
		vals[p] = v[:]
	}
	return pcrs, vals
}
