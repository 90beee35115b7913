package updater

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/internal/pemkeys"
	"github.com/shoalfleet/shoal/spec"
)

// The signed payload's first line names its format version. A release with
// a delta is signed as v2, which adds the index's digest; one without stays
// v1, so every signature made before deltas existed still verifies. An agent
// that knows only v1 cannot verify a v2 signature and refuses the release
// (its schema refuses the delta field first).
const (
	payloadHeader   = "shoal-release-v1\n"
	payloadHeaderV2 = "shoal-release-v2\n"
)

// SignedPayload is the exact byte string a release signature covers. It is
// line-oriented text, so a person can reproduce it with printf:
//
//	shoal-release-v1
//	version=<version>
//	min-version=<minVersion, may be empty>
//	size=<bytes of the uncompressed image>
//	sha256=<hex sha256 of the uncompressed image>
//	chunk-size=<bytes per chunk, 0 without a chunk manifest>
//	chunks-sha256=<hex sha256 of the chunk digests, each in lower-case hex followed by "\n"; empty without a manifest>
//	built=<build time, RFC 3339 in UTC; empty when unset>
//	pcrs=<expected PCRs as index=hex pairs sorted by index, comma-separated; empty when unset>
//
// A release with a delta is signed as shoal-release-v2: the same lines under
// that first line, then
//
//	delta-index-sha256=<hex sha256 of the chunk index file>
//
// Build time and PCRs are signed because the device trusts them: the build
// time is a lower bound for its clock, the PCRs are what attestation expects.
// The URL and name are not signed, nor where the delta's index and store are:
// a release may move to a mirror, a relay or a USB stick and stay valid. Size and digests describe the image as written to the
// slot, so a compressed download is verified after decompression.
func SignedPayload(rel *spec.Release) []byte {
	var b strings.Builder
	if rel.Delta != nil {
		b.WriteString(payloadHeaderV2)
	} else {
		b.WriteString(payloadHeader)
	}
	fmt.Fprintf(&b, "version=%s\n", rel.Version)
	fmt.Fprintf(&b, "min-version=%s\n", rel.MinVersion)
	fmt.Fprintf(&b, "size=%d\n", rel.Size)
	fmt.Fprintf(&b, "sha256=%s\n", strings.ToLower(rel.SHA256))
	var chunkSize int64
	chunks := ""
	if rel.Chunks != nil {
		chunkSize = rel.Chunks.Size
		h := sha256.New()
		for _, c := range rel.Chunks.SHA256 {
			h.Write([]byte(strings.ToLower(c) + "\n"))
		}
		chunks = hex.EncodeToString(h.Sum(nil))
	}
	fmt.Fprintf(&b, "chunk-size=%d\n", chunkSize)
	fmt.Fprintf(&b, "chunks-sha256=%s\n", chunks)
	built := ""
	if !rel.Built.IsZero() {
		built = rel.Built.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(&b, "built=%s\n", built)
	idx := slices.Sorted(maps.Keys(rel.PCRs))
	slices.SortFunc(idx, func(a, b string) int {
		na, ea := strconv.Atoi(a)
		nb, eb := strconv.Atoi(b)
		if ea == nil && eb == nil {
			return cmp.Compare(na, nb)
		}
		return strings.Compare(a, b)
	})
	pcrs := make([]string, len(idx))
	for i, k := range idx {
		pcrs[i] = k + "=" + strings.ToLower(rel.PCRs[k])
	}
	fmt.Fprintf(&b, "pcrs=%s\n", strings.Join(pcrs, ","))
	if rel.Delta != nil {
		fmt.Fprintf(&b, "delta-index-sha256=%s\n", strings.ToLower(rel.Delta.SHA256))
	}
	return []byte(b.String())
}

// ParseTrustRoots reads PEM "PUBLIC KEY" blocks (PKIX) holding ed25519 or
// ECDSA P-256 keys: the keys a release signature must verify against.
func ParseTrustRoots(pemData []byte) ([]crypto.PublicKey, error) {
	keys, err := pemkeys.Parse(pemData)
	if err != nil {
		return nil, fmt.Errorf("trust roots: %w", err)
	}
	for i, k := range keys {
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("trust root %d: %w", i+1, err)
		}
	}
	return keys, nil
}

func checkKey(k crypto.PublicKey) error {
	switch k := k.(type) {
	case ed25519.PublicKey:
		return nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("ECDSA key on %s: only P-256 is accepted", k.Curve.Params().Name)
		}
		return nil
	default:
		return fmt.Errorf("key type %T: only ed25519 and ECDSA P-256 are accepted", k)
	}
}

// SignRelease signs rel's payload with an ed25519 or ECDSA P-256 key and
// returns the signature as the release's signature field wants it (base64;
// ECDSA signatures are ASN.1 over the payload's sha256).
func SignRelease(rel *spec.Release, key crypto.Signer) (string, error) {
	if err := checkKey(key.Public()); err != nil {
		return "", err
	}
	payload := SignedPayload(rel)
	var sig []byte
	var err error
	switch key.Public().(type) {
	case ed25519.PublicKey:
		sig, err = key.Sign(rand.Reader, payload, crypto.Hash(0))
	default:
		d := sha256.Sum256(payload)
		sig, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		return "", fmt.Errorf("sign release %q: %w", rel.Version, err)
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// VerifyRelease checks rel's signature against the trust roots and the
// sanity of its fields. It touches nothing: call it before any byte is written.
func VerifyRelease(rel *spec.Release, roots []crypto.PublicKey) error {
	if rel == nil {
		return fmt.Errorf("%w: no release", ErrSignature)
	}
	if len(roots) == 0 {
		return fmt.Errorf("release %q: %w: no trust roots configured", rel.Version, ErrSignature)
	}
	if rel.Size <= 0 {
		return fmt.Errorf("release %q: %w: size %d", rel.Version, ErrInvalidRelease, rel.Size)
	}
	if d, err := hex.DecodeString(rel.SHA256); err != nil || len(d) != sha256.Size {
		return fmt.Errorf("release %q: %w: sha256 %q is not 64 hex digits", rel.Version, ErrInvalidRelease, rel.SHA256)
	}
	if d := rel.Delta; d != nil {
		if b, err := hex.DecodeString(d.SHA256); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("release %q: %w: delta sha256 %q is not 64 hex digits", rel.Version, ErrInvalidRelease, d.SHA256)
		}
	}
	if c := rel.Chunks; c != nil {
		if c.Size <= 0 || int64(len(c.SHA256)) != (rel.Size+c.Size-1)/c.Size {
			return fmt.Errorf("release %q: %w: chunk manifest does not cover the image", rel.Version, ErrInvalidRelease)
		}
	}
	sig, err := base64.StdEncoding.DecodeString(rel.Signature)
	if err != nil || len(sig) == 0 {
		return fmt.Errorf("release %q: %w: signature is not base64", rel.Version, ErrSignature)
	}
	payload := SignedPayload(rel)
	digest := sha256.Sum256(payload)
	for _, k := range roots {
		switch k := k.(type) {
		case ed25519.PublicKey:
			if ed25519.Verify(k, payload, sig) {
				return nil
			}
		case *ecdsa.PublicKey:
			if ecdsa.VerifyASN1(k, digest[:], sig) {
				return nil
			}
		}
	}
	return fmt.Errorf("release %q: %w: no trust root verifies the signature", rel.Version, ErrSignature)
}
