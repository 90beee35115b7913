package relay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// The relay's identity is a software ECDSA P-256 key and the certificate
// the hub issued for it, kept in the state dir's identity/. A site relay is
// a server in a cabinet, not a device in the field: its key is a file
// (0600), and it never holds a CA key.

func keyPath(stateDir string) string  { return filepath.Join(stateDir, "identity", "key.pem") }
func certPath(stateDir string) string { return filepath.Join(stateDir, "identity", "certificate.json") }

// EnrolOptions say how the relay reaches and trusts the hub on first contact.
type EnrolOptions struct {
	Hub           string // the hub's base URL
	Token         string // a relay token (shoal token create --relay ID --host NAME)
	CAFingerprint string // hex sha256 of the hub CA, as the token response gave it
	RootCAs       *x509.CertPool
}

// Enrol enrols the relay whose state is in stateDir with the hub: it makes
// the key (kept when one exists), exchanges the token for the relay's
// certificate and keeps both. It returns the relay's ID.
func Enrol(ctx context.Context, stateDir string, o EnrolOptions) (string, error) {
	key, err := loadOrMakeKey(stateDir)
	if err != nil {
		return "", err
	}
	c, err := client.Enrol(ctx, o.Hub, o.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: o.CAFingerprint, RootCAs: o.RootCAs})
	if err != nil {
		return "", fmt.Errorf("relay enrol: %w", err)
	}
	if err := writeCert(stateDir, c); err != nil {
		return "", err
	}
	return c.DeviceID, nil
}

func loadOrMakeKey(stateDir string) (*ecdsa.PrivateKey, error) {
	if k, err := loadKey(stateDir); err == nil || !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("relay key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("relay key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(keyPath(stateDir)), 0o700); err != nil {
		return nil, fmt.Errorf("relay key: %w", err)
	}
	if err := atomicfile.WriteFile(keyPath(stateDir), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("relay key: %w", err)
	}
	return k, nil
}

func loadKey(stateDir string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(keyPath(stateDir))
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: not PEM", keyPath(stateDir))
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath(stateDir), err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", keyPath(stateDir))
	}
	return ek, nil
}

func readCert(stateDir string) (*api.Certificate, error) {
	b, err := os.ReadFile(certPath(stateDir))
	if err != nil {
		return nil, err
	}
	var c api.Certificate
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", certPath(stateDir), err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", certPath(stateDir), err)
	}
	return &c, nil
}

func writeCert(stateDir string, c *api.Certificate) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certPath(stateDir)), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(certPath(stateDir), b, 0o600)
}

// identity is the relay's key and current certificate, swapped in place on renewal.
type identity struct {
	key *ecdsa.PrivateKey
	ca  *x509.CertPool // the hub CA: devices' certificates and the hub's are checked against it

	mu   sync.Mutex
	cert *api.Certificate
	tls  *tls.Certificate // leaf and the hub CA, so devices pinning the CA by fingerprint find it
	leaf *x509.Certificate
}

func loadIdentity(stateDir string) (*identity, error) {
	key, err := loadKey(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("relay not enrolled (no %s): run shoal relay enrol first", keyPath(stateDir))
	}
	if err != nil {
		return nil, err
	}
	c, err := readCert(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("relay not enrolled (no %s): run shoal relay enrol first", certPath(stateDir))
	}
	if err != nil {
		return nil, err
	}
	id := &identity{key: key, ca: x509.NewCertPool()}
	if !id.ca.AppendCertsFromPEM([]byte(c.CA)) {
		return nil, fmt.Errorf("%s: no usable hub CA", certPath(stateDir))
	}
	if err := id.set(c); err != nil {
		return nil, err
	}
	return id, nil
}

func (id *identity) set(c *api.Certificate) error {
	lb, _ := pem.Decode([]byte(c.Certificate))
	cb, _ := pem.Decode([]byte(c.CA))
	if lb == nil || cb == nil {
		return errors.New("relay certificate: not PEM")
	}
	leaf, err := x509.ParseCertificate(lb.Bytes)
	if err != nil {
		return fmt.Errorf("relay certificate: %w", err)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&id.key.PublicKey) {
		return errors.New("relay certificate is not for the relay's key")
	}
	if len(leaf.Subject.Organization) != 1 || leaf.Subject.Organization[0] != api.OrgRelay {
		return errors.New("relay certificate: not a relay's (enrol with a token from shoal token create --relay)")
	}
	id.mu.Lock()
	id.cert, id.leaf = c, leaf
	id.tls = &tls.Certificate{Certificate: [][]byte{lb.Bytes, cb.Bytes}, PrivateKey: id.key, Leaf: leaf}
	id.mu.Unlock()
	return nil
}

func (id *identity) current() (*tls.Certificate, *api.Certificate) {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.tls, id.cert
}

// ID is the relay's ID, from its certificate.
func (id *identity) ID() string {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.leaf.Subject.CommonName
}
