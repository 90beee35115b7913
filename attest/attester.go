package attest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/prometheus/client_golang/prometheus"
)

// Key kinds, as api.EnrolRequest.KeyKind spells them.
const (
	KindTPM      = "tpm"
	KindSoftware = "software"
)

// Identity is what a device tells the hub about its keys at enrolment.
type Identity struct {
	Kind string `json:"kind"` // KindTPM or KindSoftware
	// Weak is true for a software key: no hardware protects it, and every
	// report and the status page say so.
	Weak bool `json:"weak,omitempty"`
	// AK is the attestation key: a TPMT_PUBLIC for a TPM, PKIX DER for software.
	AK []byte `json:"ak"`
	// DeviceKey is the device identity key (PKIX DER) that signs the CSR and TLS.
	DeviceKey []byte `json:"deviceKey"`
	EKPublic  []byte `json:"ekPublic,omitempty"` // endorsement key, PKIX DER
	EKArea    []byte `json:"ekArea,omitempty"`   // the same EK as a TPMT_PUBLIC, for MakeCredential
	EKCert    []byte `json:"ekCert,omitempty"`   // DER, when the TPM maker stored one
}

// Options configures New.
type Options struct {
	// StateDir keeps the key files (TPM-wrapped blobs, or the software keys).
	StateDir string
	// TPM is an open TPM to use (swtpm via DialTCP, the tpmsim simulator).
	// The caller closes it after the Attester. Nil: open DevicePath.
	TPM transport.TPM
	// DevicePath is the TPM device; default DefaultDevice.
	DevicePath string
	// AllowSoftware falls back to software keys when there is no TPM.
	AllowSoftware bool
	Logger        *slog.Logger
}

// backend is a TPM or the software fallback.
type backend interface {
	identity() Identity
	devicePublic() *ecdsa.PublicKey
	sign(digest []byte) ([]byte, error) // ASN.1 ECDSA with the device key
	resetApp() error
	extendApp(digest []byte) error
	quote(nonce []byte, pcrs []int) (*Quote, error)
	activate(c Credential) ([]byte, error)
	close() error
}

// Attester holds the device's identity and attestation keys and answers the
// hub's nonces with quotes. Its methods are safe for concurrent use; TPM
// commands run one at a time.
type Attester struct {
	mu     sync.Mutex
	b      backend
	closer io.Closer // the TPM device we opened, if any
	log    *slog.Logger

	quotes   *prometheus.CounterVec
	software prometheus.Gauge
}

// Collectors returns the attester's metrics for the agent's registry:
// quotes made by result, and whether the device runs on a software key.
func (a *Attester) Collectors() []prometheus.Collector {
	return []prometheus.Collector{a.quotes, a.software}
}

// New opens the TPM (o.TPM, else o.DevicePath) and creates or loads the
// attestation key and device key from o.StateDir. Without a TPM it uses
// software keys if o.AllowSoftware, else returns ErrNoTPM.
func New(ctx context.Context, o Options) (*Attester, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.StateDir == "" {
		return nil, errors.New("attest: no state dir")
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("attest state dir: %w", err)
	}
	a := &Attester{
		log: log,
		quotes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_attest_quotes_total", Help: "Quotes made for the hub, by result (ok or error).",
		}, []string{"result"}),
		software: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_attest_software_key", Help: "1 when the device has no TPM and attests with a weaker software key.",
		}),
	}
	t := o.TPM
	if t == nil {
		path := o.DevicePath
		if path == "" {
			path = DefaultDevice
		}
		if _, err := os.Stat(path); err != nil {
			if !o.AllowSoftware {
				return nil, fmt.Errorf("%w: %s: %v", ErrNoTPM, path, err)
			}
			sw, err := newSoftwareBackend(o.StateDir)
			if err != nil {
				return nil, err
			}
			log.Warn("no TPM: using a software key, flagged as weaker", "device", path)
			a.b = sw
			a.software.Set(1)
			return a, nil
		}
		tc, err := OpenDevice(path)
		if err != nil {
			return nil, err
		}
		t, a.closer = tc, tc
	}
	b, err := newTPMBackend(t, o.StateDir, log)
	if err != nil {
		if a.closer != nil {
			a.closer.Close()
		}
		return nil, err
	}
	a.b = b
	return a, nil
}

// Identity returns the keys to enrol with.
func (a *Attester) Identity() Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.b.identity()
}

// ExtendApp resets AppPCR and extends it with the applied spec hash and the
// running release version, so that it holds AppPCRValue(specHash, releaseVersion).
func (a *Attester) ExtendApp(ctx context.Context, specHash, releaseVersion string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := a.b.resetApp(); err != nil {
		return err
	}
	for _, d := range appEvents(specHash, releaseVersion) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := a.b.extendApp(d); err != nil {
			return err
		}
	}
	return nil
}

// Quote signs the given PCRs (sha256 bank; AppPCR is always added) with the
// AK, qualified by the hub's nonce (16 to 64 bytes).
func (a *Attester) Quote(ctx context.Context, nonce []byte, pcrs []int) (*Quote, error) {
	if len(nonce) < MinNonce {
		return nil, fmt.Errorf("quote: nonce is %d bytes: %w", len(nonce), ErrShortNonce)
	}
	if len(nonce) > 64 {
		return nil, fmt.Errorf("quote: nonce is %d bytes, at most 64", len(nonce))
	}
	sel, err := normPCRs(append([]int{AppPCR}, pcrs...))
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q, err := a.b.quote(nonce, sel)
	if err != nil {
		a.quotes.WithLabelValues("error").Inc()
		return nil, err
	}
	a.quotes.WithLabelValues("ok").Inc()
	return q, nil
}

// ActivateCredential answers the hub's enrolment challenge (MakeCredential):
// the TPM releases the secret only if the AK named in the challenge is loaded
// in the same TPM as the EK it was encrypted to. A software key has no EK and
// returns ErrNoTPM.
func (a *Attester) ActivateCredential(ctx context.Context, c Credential) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return a.b.activate(c)
}

// Signer returns the device identity key as a crypto.Signer (ECDSA P-256,
// sha256 digests) for the enrolment CSR and TLS client authentication.
func (a *Attester) Signer() crypto.Signer { return deviceSigner{a} }

type deviceSigner struct{ a *Attester }

func (s deviceSigner) Public() crypto.PublicKey {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	return s.a.b.devicePublic()
}

func (s deviceSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("device key signs sha256 digests only, not %v", opts.HashFunc())
	}
	if len(digest) != 32 {
		return nil, fmt.Errorf("device key: digest is %d bytes, want 32", len(digest))
	}
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	return s.a.b.sign(digest)
}

// Close unloads the keys and closes the TPM device if New opened it.
func (a *Attester) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.b.close()
	if a.closer != nil {
		err = errors.Join(err, a.closer.Close())
	}
	return err
}
