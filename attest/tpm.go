package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// tpmKeysFile holds the TPM-wrapped key blobs: useless outside this TPM.
const tpmKeysFile = "tpm-keys.json"

// keyFileVersion is the version of the key files in the state dir.
const keyFileVersion = 1

type tpmKeyFile struct {
	Version int     `json:"version"`
	AK      keyBlob `json:"ak"`
	Device  keyBlob `json:"device"`
}

// keyBlob is a key created under the SRK: its TPM2B_PUBLIC contents and its
// TPM-encrypted TPM2B_PRIVATE.
type keyBlob struct {
	Public  []byte `json:"public"`
	Private []byte `json:"private"`
}

// EK certificate NV indexes (TCG EK Credential Profile).
const (
	ekCertNVRSA = 0x01c00002
	ekCertNVECC = 0x01c0000a
)

// tpmBackend holds the AK and the device key loaded in a TPM.
type tpmBackend struct {
	t      transport.TPM
	ak     tpm2.NamedHandle
	dev    tpm2.NamedHandle
	akPub  []byte // TPMT_PUBLIC
	devPub *ecdsa.PublicKey
	ekTmpl tpm2.TPMTPublic // the EK is recreated from it for credential activation
	id     Identity
}

// akTemplate is a restricted ECC P-256 signing key: the TPM signs with it
// only structures it generated itself (quotes), never outside data that could
// pose as one.
func akTemplate(restricted bool) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          restricted,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

func newTPMBackend(t transport.TPM, stateDir string, log *slog.Logger) (*tpmBackend, error) {
	b := &tpmBackend{t: t}
	restored, err := restoreClockSafe(t)
	if err != nil {
		// Quotes will say the clock is unsafe and fail at the hub, which is
		// the true state; keep the identity usable for everything else.
		log.Warn("TPM clock is unsafe after an unorderly shutdown and could not be advanced", "err", err)
	} else if restored {
		log.Info("TPM clock advanced past its last saved value after an unorderly shutdown")
	}
	ek, cert, err := readEK(t)
	if err != nil {
		return nil, err
	}
	b.ekTmpl = ek.tmpl
	srk, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create SRK: %w", err)
	}
	// Loaded children stay usable once their parent is flushed; keeping only
	// two objects loaded fits TPMs without a resource manager (3 slots).
	defer flush(t, srk.ObjectHandle)
	parent := tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}

	path := filepath.Join(stateDir, tpmKeysFile)
	var kf tpmKeyFile
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if kf.AK, err = createKey(t, parent, true); err != nil {
			return nil, fmt.Errorf("create attestation key: %w", err)
		}
		if kf.Device, err = createKey(t, parent, false); err != nil {
			return nil, fmt.Errorf("create device key: %w", err)
		}
		kf.Version = keyFileVersion
		out, err := json.Marshal(kf)
		if err != nil {
			return nil, err
		}
		if err := atomicfile.WriteFile(path, out, 0o600); err != nil {
			return nil, fmt.Errorf("save TPM keys: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("read TPM keys: %w", err)
	default:
		if err := json.Unmarshal(data, &kf); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if kf.Version != keyFileVersion {
			return nil, fmt.Errorf("%s: version %d, want %d", path, kf.Version, keyFileVersion)
		}
	}
	if b.ak, err = loadKey(t, parent, kf.AK); err != nil {
		return nil, fmt.Errorf("load attestation key: %w", err)
	}
	if b.dev, err = loadKey(t, parent, kf.Device); err != nil {
		flush(t, b.ak.Handle)
		return nil, fmt.Errorf("load device key: %w", err)
	}
	b.akPub = kf.AK.Public
	if _, err := akKey(b.akPub, false); err != nil {
		b.close()
		return nil, fmt.Errorf("attestation key: %w", err)
	}
	if b.devPub, err = tpmECKey(kf.Device.Public); err != nil {
		b.close()
		return nil, fmt.Errorf("device key: %w", err)
	}
	devDER, err := x509.MarshalPKIXPublicKey(b.devPub)
	if err != nil {
		b.close()
		return nil, err
	}
	b.id = Identity{Kind: KindTPM, AK: b.akPub, DeviceKey: devDER, EKPublic: ek.pkix, EKArea: ek.area, EKCert: cert}
	return b, nil
}

func createKey(t transport.TPM, parent tpm2.NamedHandle, restricted bool) (keyBlob, error) {
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPublic:     tpm2.New2B(akTemplate(restricted)),
	}.Execute(t)
	if err != nil {
		return keyBlob{}, err
	}
	return keyBlob{Public: rsp.OutPublic.Bytes(), Private: rsp.OutPrivate.Buffer}, nil
}

func loadKey(t transport.TPM, parent tpm2.NamedHandle, k keyBlob) (tpm2.NamedHandle, error) {
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    tpm2.TPM2BPrivate{Buffer: k.Private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](k.Public),
	}.Execute(t)
	if err != nil {
		var tpmErr tpm2.TPMFmt1Error
		if errors.As(err, &tpmErr) {
			return tpm2.NamedHandle{}, fmt.Errorf("%w: %v", ErrKeyMismatch, err)
		}
		return tpm2.NamedHandle{}, err
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

func flush(t transport.TPM, h tpm2.TPMHandle) {
	// A failed flush leaves a transient object until the next TPM reset; there
	// is nothing better to do with the error.
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(t)
}

// ekInfo is the endorsement key as the hub needs it.
type ekInfo struct {
	tmpl tpm2.TPMTPublic
	area []byte // TPMT_PUBLIC
	pkix []byte
}

// readEK returns the endorsement key and, if the manufacturer stored one,
// its certificate (DER). The ECC EK is used unless only an RSA certificate exists.
func readEK(t transport.TPM) (ekInfo, []byte, error) {
	info := ekInfo{tmpl: tpm2.ECCEKTemplate}
	cert, ok := readNV(t, ekCertNVECC)
	if !ok {
		if cert, ok = readNV(t, ekCertNVRSA); ok {
			info.tmpl = tpm2.RSAEKTemplate
		}
	}
	ek, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(info.tmpl),
	}.Execute(t)
	if err != nil {
		return info, nil, fmt.Errorf("create EK: %w", err)
	}
	defer flush(t, ek.ObjectHandle)
	p, err := ek.OutPublic.Contents()
	if err != nil {
		return info, nil, fmt.Errorf("EK public: %w", err)
	}
	k, err := tpm2.Pub(*p)
	if err != nil {
		return info, nil, fmt.Errorf("EK public: %w", err)
	}
	if info.pkix, err = x509.MarshalPKIXPublicKey(k); err != nil {
		return info, nil, fmt.Errorf("EK public: %w", err)
	}
	info.area = ek.OutPublic.Bytes()
	return info, cert, nil
}

// readNV reads a whole NV index with owner auth; ok is false if it is absent or unreadable.
func readNV(t transport.TPM, index tpm2.TPMHandle) ([]byte, bool) {
	rp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(t)
	if err != nil {
		return nil, false
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, false
	}
	var out []byte
	for off := 0; off < int(pub.DataSize); {
		n := min(int(pub.DataSize)-off, 512)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: rp.NVName},
			Size:       uint16(n),
			Offset:     uint16(off),
		}.Execute(t)
		if err != nil {
			return nil, false
		}
		out = append(out, rsp.Data.Buffer...)
		off += n
	}
	return out, true
}

// tpmECKey decodes a TPMT_PUBLIC ECC P-256 key without the AK's attribute demands.
func tpmECKey(b []byte) (*ecdsa.PublicKey, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, err
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, err
	}
	return p256Key(pt.X.Buffer, pt.Y.Buffer)
}

func (b *tpmBackend) identity() Identity { return b.id }

func (b *tpmBackend) devicePublic() *ecdsa.PublicKey { return b.devPub }

func (b *tpmBackend) sign(digest []byte) ([]byte, error) {
	rsp, err := tpm2.Sign{
		KeyHandle:  tpm2.AuthHandle{Handle: b.dev.Handle, Name: b.dev.Name, Auth: tpm2.PasswordAuth(nil)},
		Digest:     tpm2.TPM2BDigest{Buffer: digest},
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(b.t)
	if err != nil {
		return nil, fmt.Errorf("TPM sign: %w", err)
	}
	s, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("TPM sign: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(s.SignatureR.Buffer), new(big.Int).SetBytes(s.SignatureS.Buffer)})
}

func (b *tpmBackend) resetApp() error {
	_, err := tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(AppPCR), Auth: tpm2.PasswordAuth(nil)}}.Execute(b.t)
	if err != nil {
		return fmt.Errorf("reset PCR %d: %w", AppPCR, err)
	}
	return nil
}

func (b *tpmBackend) extendApp(digest []byte) error {
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(AppPCR), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}},
	}.Execute(b.t)
	if err != nil {
		return fmt.Errorf("extend PCR %d: %w", AppPCR, err)
	}
	return nil
}

func (b *tpmBackend) quote(nonce []byte, pcrs []int) (*Quote, error) {
	// A PCR may be extended between the quote and the read-back; then the
	// values do not match the quoted digest and we quote again.
	for attempt := 0; ; attempt++ {
		rsp, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: b.ak.Handle, Name: b.ak.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      selection(pcrs),
		}.Execute(b.t)
		if err != nil {
			return nil, fmt.Errorf("TPM quote: %w", err)
		}
		vals, err := readPCRs(b.t, pcrs)
		if err != nil {
			return nil, err
		}
		q := &Quote{Attest: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature), AK: b.akPub, PCRs: vals}
		a, err := rsp.Quoted.Contents()
		if err != nil {
			return nil, fmt.Errorf("TPM quote: %w", err)
		}
		info, err := a.Attested.Quote()
		if err != nil {
			return nil, fmt.Errorf("TPM quote: %w", err)
		}
		if bytes.Equal(info.PCRDigest.Buffer, pcrDigest(pcrs, vals)) {
			return q, nil
		}
		if attempt == 2 {
			return nil, fmt.Errorf("PCRs kept changing while quoting: %w", ErrPCRDigest)
		}
	}
}

// readPCRs reads sha256-bank values; a TPM returns at most 8 per call.
func readPCRs(t transport.TPM, pcrs []int) (map[int][]byte, error) {
	out := make(map[int][]byte, len(pcrs))
	left := slices.Clone(pcrs)
	for len(left) > 0 {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: selection(left)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("read PCRs %v: %w", left, err)
		}
		var got []int
		for _, s := range rsp.PCRSelectionOut.PCRSelections {
			if s.Hash == tpm2.TPMAlgSHA256 {
				got = selectedPCRs(s.PCRSelect)
			}
		}
		if len(got) == 0 || len(got) != len(rsp.PCRValues.Digests) {
			return nil, fmt.Errorf("read PCRs %v: TPM returned no sha256 values", left)
		}
		for i, p := range got {
			out[p] = rsp.PCRValues.Digests[i].Buffer
		}
		left = slices.DeleteFunc(left, func(p int) bool { _, ok := out[p]; return ok })
	}
	return out, nil
}

func (b *tpmBackend) activate(c Credential) ([]byte, error) {
	ek, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(b.ekTmpl),
	}.Execute(b.t)
	if err != nil {
		return nil, fmt.Errorf("create EK: %w", err)
	}
	defer flush(b.t, ek.ObjectHandle)
	// The TCG EK may be used only under PolicySecret(TPM_RH_ENDORSEMENT).
	ekPolicy := func(t transport.TPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: h, NonceTPM: nonce}.Execute(t)
		return err
	}
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: b.ak.Handle, Name: b.ak.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle:      tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: c.IDObject},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: c.EncSecret},
	}.Execute(b.t)
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	return rsp.CertInfo.Buffer, nil
}

func (b *tpmBackend) close() error {
	flush(b.t, b.ak.Handle)
	flush(b.t, b.dev.Handle)
	return nil
}
