//go:build cgo

package tpmsim_test

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/shoalfleet/shoal/attest"
)

// BenchmarkQuoteVerify is the whole round on the simulator: issue a nonce,
// quote eight boot PCRs and AppPCR, verify with the in-memory nonce store.
func BenchmarkQuoteVerify(b *testing.B) {
	ctx := context.Background()
	sim := openSim(b)
	a, err := attest.New(ctx, attest.Options{StateDir: b.TempDir(), TPM: sim})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	if err := a.ExtendApp(ctx, "spec", "1"); err != nil {
		b.Fatal(err)
	}
	v := attest.NewVerifier(attest.VerifierOptions{Nonces: &attest.MemNonceStore{}})
	pol := attest.Policy{PCRs: append([]int{attest.AppPCR}, bootPCRs...),
		Expected: map[int][]byte{attest.AppPCR: attest.AppPCRValue("spec", "1")}}
	ak := a.Identity().AK
	for b.Loop() {
		n, err := v.Issue(ctx, "sim")
		if err != nil {
			b.Fatal(err)
		}
		q, err := a.Quote(ctx, n, bootPCRs)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := v.Verify(ctx, attest.Request{DeviceID: "sim", Quote: q, AK: ak, Policy: pol}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineTPMQuote is the floor for BenchmarkQuoteVerify: the bare
// TPM2_Quote command on the same simulator, with a restricted ECC P-256 key.
func BenchmarkBaselineTPMQuote(b *testing.B) {
	sim := openSim(b)
	key, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, NoDA: true, Restricted: true, SignEncrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	})}.Execute(sim)
	if err != nil {
		b.Fatal(err)
	}
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(0, 1, 2, 3, 4, 5, 6, 7, 23)}}}
	nonce := make([]byte, 32)
	for b.Loop() {
		rand.Read(nonce)
		if _, err := (tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: key.ObjectHandle, Name: key.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      sel,
		}).Execute(sim); err != nil {
			b.Fatal(err)
		}
	}
}
