package provision

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/internal/swtpmtest"
)

// startSwtpm runs `swtpm socket` on loopback for the test and returns its address.
func startSwtpm(t *testing.T) string { return swtpmtest.Start(t, "").Addr }

// TestReceiptTPMQuote: with a TPM (swtpm), the receipt is signed by the
// TPM-held device key and carries a quote whose nonce is the bundle hash,
// which attest's verifier accepts.
func TestReceiptTPMQuote(t *testing.T) {
	addr := startSwtpm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tpm, err := attest.DialTCP(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	state := t.TempDir()
	a, err := attest.New(ctx, attest.Options{StateDir: filepath.Join(state, "attest"), TPM: tpm})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Identity().Kind != attest.KindTPM {
		t.Fatalf("kind %q", a.Identity().Kind)
	}

	fleet := newFleet(t, "example/web:1", sha([]byte("tar")))
	images := t.TempDir()
	os.WriteFile(filepath.Join(images, sha([]byte("tar"))+".tar"), []byte("tar"), 0o644)
	stick := t.TempDir()
	key := newKey(t)
	p := create(t, stick, "dev-1.shoal", CreateOptions{FleetDir: fleet.dir, Devices: []string{"dev-1"}, Key: key, ImageDir: images})
	pcrs := []int{0, 7}
	res, err := Apply(ctx, p, ApplyOptions{
		StateDir: state, DeviceID: "dev-1", Signer: a.Signer(), KeyKind: a.Identity().Kind,
		BundleKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)},
		Quote: func(ctx context.Context, nonce []byte) (json.RawMessage, error) {
			q, err := a.Quote(ctx, nonce, pcrs)
			if err != nil {
				return nil, err
			}
			return json.Marshal(q)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(res.Receipt)
	if err != nil {
		t.Fatal(err)
	}
	rc, pub, err := api.VerifyReceipt(b)
	if err != nil {
		t.Fatal(err)
	}
	if rc.KeyKind != attest.KindTPM || len(rc.Quote) == 0 {
		t.Fatalf("receipt = %+v", rc)
	}
	if !a.Signer().Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
		t.Fatal("receipt not signed by the TPM device key")
	}
	var q attest.Quote
	if err := json.Unmarshal(rc.Quote, &q); err != nil {
		t.Fatal(err)
	}
	nonce, _ := hex.DecodeString(rc.BundleHash)
	v := attest.NewVerifier(attest.VerifierOptions{})
	if _, err := v.Verify(ctx, attest.Request{DeviceID: "dev-1", Quote: &q, AK: a.Identity().AK, Policy: attest.Policy{PCRs: append([]int{attest.AppPCR}, pcrs...)}, Nonce: nonce}); err != nil {
		t.Fatalf("quote in the receipt: %v", err)
	}
}
