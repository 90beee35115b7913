package provision

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/internal/pemkeys"
)

// GenerateKey makes a new ed25519 bundle key.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate bundle key: %w", err)
	}
	return priv, nil
}

// KeyID names a public key in errors and listings: the first 16 hex digits
// of the sha256 of its raw bytes.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// MarshalPrivateKey encodes key as a PKCS #8 PEM block.
func MarshalPrivateKey(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKey encodes pub as a PKIX PEM block.
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// WriteKeyPair writes key to path (mode 0600) and its public half to path+".pub".
// It refuses to overwrite an existing private key.
func WriteKeyPair(path string, key ed25519.PrivateKey) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("bundle key %s already exists", path)
	}
	priv, err := MarshalPrivateKey(key)
	if err != nil {
		return err
	}
	pub, err := MarshalPublicKey(key.Public().(ed25519.PublicKey))
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, priv, 0o600); err != nil {
		return err
	}
	return atomicfile.WriteFile(path+".pub", pub, 0o644)
}

// ReadPrivateKey reads a PKCS #8 PEM ed25519 key.
func ReadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bundle key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("bundle key %s: no PRIVATE KEY PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("bundle key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("bundle key %s: %T, want ed25519", path, k)
	}
	return ek, nil
}

// ParsePublicKeys reads every PKIX PEM ed25519 public key in data.
func ParsePublicKeys(data []byte) ([]ed25519.PublicKey, error) {
	keys, err := pemkeys.Parse(data)
	if err != nil {
		return nil, err
	}
	out := make([]ed25519.PublicKey, 0, len(keys))
	for _, k := range keys {
		ek, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key: %T, want ed25519", k)
		}
		out = append(out, ek)
	}
	return out, nil
}

// ReadPublicKeys reads the ed25519 public keys in a PEM file.
func ReadPublicKeys(path string) ([]ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bundle public key: %w", err)
	}
	ks, err := ParsePublicKeys(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ks, nil
}

func keyIDs(ks []ed25519.PublicKey) string {
	ids := make([]string, len(ks))
	for i, k := range ks {
		ids[i] = KeyID(k)
	}
	return strings.Join(ids, ", ")
}
