package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// softwareKeysFile holds the software keys in the clear (mode 0600).
const softwareKeysFile = "software-keys.json"

type softwareKeyFile struct {
	Version int    `json:"version"`
	AK      []byte `json:"ak"`     // PKCS#8 DER
	Device  []byte `json:"device"` // PKCS#8 DER
	// Boots counts backend starts; it stands in for the TPM reset counter so
	// that the hub's "counters never go backwards" check still means something.
	Boots uint32 `json:"boots"`
}

// softwareBackend imitates the TPM's quote format with keys on disk, so the
// hub verifies both the same way. Only AppPCR means anything here: the other
// PCRs read as zero, and the verifier holds only AppPCR to the policy.
type softwareBackend struct {
	ak, dev *ecdsa.PrivateKey
	akDER   []byte
	id      Identity
	boots   uint32
	start   time.Time
	app     []byte
}

func newSoftwareBackend(stateDir string) (*softwareBackend, error) {
	path := filepath.Join(stateDir, softwareKeysFile)
	var kf softwareKeyFile
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		kf.Version = keyFileVersion
		for _, k := range []*[]byte{&kf.AK, &kf.Device} {
			pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return nil, err
			}
			if *k, err = x509.MarshalPKCS8PrivateKey(pk); err != nil {
				return nil, err
			}
		}
	case err != nil:
		return nil, fmt.Errorf("read software keys: %w", err)
	default:
		if err := json.Unmarshal(data, &kf); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if kf.Version != keyFileVersion {
			return nil, fmt.Errorf("%s: version %d, want %d", path, kf.Version, keyFileVersion)
		}
	}
	kf.Boots++
	out, err := json.Marshal(kf)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(path, out, 0o600); err != nil {
		return nil, fmt.Errorf("save software keys: %w", err)
	}
	b := &softwareBackend{boots: kf.Boots, start: time.Now(), app: make([]byte, sha256.Size)}
	if b.ak, err = parseECKey(kf.AK); err != nil {
		return nil, fmt.Errorf("%s: ak: %w", path, err)
	}
	if b.dev, err = parseECKey(kf.Device); err != nil {
		return nil, fmt.Errorf("%s: device: %w", path, err)
	}
	if b.akDER, err = x509.MarshalPKIXPublicKey(&b.ak.PublicKey); err != nil {
		return nil, err
	}
	devDER, err := x509.MarshalPKIXPublicKey(&b.dev.PublicKey)
	if err != nil {
		return nil, err
	}
	b.id = Identity{Kind: KindSoftware, Weak: true, AK: b.akDER, DeviceKey: devDER}
	return b, nil
}

func parseECKey(der []byte) (*ecdsa.PrivateKey, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 key")
	}
	return ec, nil
}

func (b *softwareBackend) identity() Identity             { return b.id }
func (b *softwareBackend) devicePublic() *ecdsa.PublicKey { return &b.dev.PublicKey }

func (b *softwareBackend) sign(digest []byte) ([]byte, error) {
	return ecdsa.SignASN1(rand.Reader, b.dev, digest)
}

func (b *softwareBackend) resetApp() error {
	b.app = make([]byte, sha256.Size)
	return nil
}

func (b *softwareBackend) extendApp(digest []byte) error {
	b.app = extend(b.app, digest)
	return nil
}

func (b *softwareBackend) quote(nonce []byte, pcrs []int) (*Quote, error) {
	vals := make(map[int][]byte, len(pcrs))
	for _, p := range pcrs {
		vals[p] = make([]byte, sha256.Size)
	}
	vals[AppPCR] = append([]byte(nil), b.app...)
	name := sha256.Sum256(b.akDER)
	a := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: append([]byte{0, 0x0b}, name[:]...)},
		ExtraData:       tpm2.TPM2BData{Buffer: nonce},
		ClockInfo: tpm2.TPMSClockInfo{
			Clock:      uint64(time.Since(b.start).Milliseconds()),
			ResetCount: b.boots,
			Safe:       true,
		},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: selection(pcrs),
			PCRDigest: tpm2.TPM2BDigest{Buffer: pcrDigest(pcrs, vals)},
		}),
	}
	attest := tpm2.Marshal(a)
	d := sha256.Sum256(attest)
	sig, err := ecdsa.SignASN1(rand.Reader, b.ak, d[:])
	if err != nil {
		return nil, fmt.Errorf("software quote: %w", err)
	}
	return &Quote{Attest: attest, Signature: sig, AK: b.akDER, PCRs: vals}, nil
}

func (b *softwareBackend) activate(Credential) ([]byte, error) {
	return nil, fmt.Errorf("activate credential: %w: software key", ErrNoTPM)
}

func (b *softwareBackend) close() error { return nil }
