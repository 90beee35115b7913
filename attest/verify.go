package attest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/prometheus/client_golang/prometheus"
)

// MinNonce is the shortest nonce a quote may answer.
const MinNonce = 16

// NonceStore records the nonces the hub issued and makes each usable once.
// The hub implements it on its database; MemNonceStore is the in-memory one.
// attest/noncetest checks an implementation against this contract.
type NonceStore interface {
	// Issue records nonce as issued to deviceID, valid until expires.
	Issue(ctx context.Context, deviceID string, nonce []byte, expires time.Time) error
	// Consume uses nonce up: ErrWrongNonce if it was never issued to deviceID,
	// ErrReplay if it was already consumed, ErrStaleNonce if it expired before now.
	Consume(ctx context.Context, deviceID string, nonce []byte, now time.Time) error
}

// Counters are the TPM clock info of the last accepted quote; the hub stores
// them per device and passes them back so they can never go backwards. They
// belong to one AK: after a device enrols a new key, start again from nil.
type Counters struct {
	ResetCount   uint32 `json:"resetCount"`
	RestartCount uint32 `json:"restartCount"`
	Clock        uint64 `json:"clock"` // ms the TPM has been powered
}

// Request is one quote to verify, with what the hub knows about the device.
type Request struct {
	DeviceID string
	Quote    *Quote
	// AK is the attestation key (TPMT_PUBLIC) registered at enrolment.
	AK []byte
	// Software marks a device enrolled with a software key: its quote is
	// checked the same way but only AppPCR is held to the policy, and the
	// result is flagged weaker.
	Software bool
	Policy   Policy
	// Last holds the counters of the device's last accepted quote, nil on the first.
	Last *Counters
	// Nonce, when set, is the nonce the device says it answers; it must be the quoted one.
	Nonce []byte
}

// Result is an accepted quote: what the hub records and shows.
type Result struct {
	DeviceID        string         `json:"deviceID"`
	Counters        Counters       `json:"counters"`
	PCRs            map[int][]byte `json:"pcrs"`
	Unchecked       []int          `json:"unchecked,omitempty"` // quoted PCRs the policy does not constrain
	Software        bool           `json:"software,omitempty"`  // weaker: not a TPM key
	FirmwareVersion uint64         `json:"firmwareVersion"`
	At              time.Time      `json:"at"`
}

// CounterStore keeps each device's last accepted Counters, so a Request
// without Last is still held to them. The hub implements it on its database;
// MemCounterStore is the in-memory one.
type CounterStore interface {
	// LastCounters returns the device's last accepted counters, or nil if none.
	LastCounters(ctx context.Context, deviceID string) (*Counters, error)
	// SaveCounters records the counters of a quote just accepted.
	SaveCounters(ctx context.Context, deviceID string, c Counters) error
}

// VerifierOptions configures a Verifier.
type VerifierOptions struct {
	// Nonces issues and consumes nonces. Nil means the caller does both: it
	// has consumed Request.Nonce (issued to this device, fresh, unused)
	// before Verify, which then only checks the quote answers that nonce.
	Nonces NonceStore
	// Counters, when set, supplies Request.Last when it is nil and records
	// the counters of every accepted quote.
	Counters CounterStore
	NonceTTL time.Duration // how long an issued nonce is fresh; default 5 minutes
	Now      func() time.Time
	Logger   *slog.Logger
	Rand     io.Reader // nonce source; default crypto/rand
}

// Verifier issues nonces and verifies quotes. It needs no TPM. Every error it
// returns means "not attested"; Reason names the cause.
type Verifier struct {
	o       VerifierOptions
	log     *slog.Logger
	results *prometheus.CounterVec

	mu   sync.Mutex
	keys map[string]keyEntry // parsed registered AKs, by bytes
}

type keyEntry struct {
	key *ecdsa.PublicKey
	err error
}

// NewVerifier returns a Verifier using o.Nonces.
func NewVerifier(o VerifierOptions) *Verifier {
	if o.NonceTTL <= 0 {
		o.NonceTTL = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Verifier{
		o:   o,
		log: log,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_attest_verifications_total",
			Help: "Quotes verified, by result (ok or the failure reason).",
		}, []string{"result"}),
		keys: map[string]keyEntry{},
	}
}

// Collectors returns the verifier's metrics for the hub's registry.
func (v *Verifier) Collectors() []prometheus.Collector { return []prometheus.Collector{v.results} }

// Issue makes a fresh 32-byte nonce for deviceID and records it in the store.
func (v *Verifier) Issue(ctx context.Context, deviceID string) ([]byte, error) {
	if v.o.Nonces == nil {
		return nil, errors.New("verifier has no nonce store: the caller issues nonces")
	}
	n := make([]byte, 32)
	if _, err := io.ReadFull(v.o.Rand, n); err != nil {
		return nil, fmt.Errorf("nonce for device %q: %w", deviceID, err)
	}
	if err := v.o.Nonces.Issue(ctx, deviceID, n, v.o.Now().Add(v.o.NonceTTL)); err != nil {
		return nil, fmt.Errorf("issue nonce for device %q: %w", deviceID, err)
	}
	return n, nil
}

// Verify checks r.Quote: its structure and TPM_GENERATED quote type, that it is
// signed by the device's registered AK, that it answers a nonce issued to the
// device, fresh and not used before (the nonce is used up once the signature
// holds), that the TPM clock is safe and its counters did not go backwards,
// that it covers exactly the policy's sha256 PCR selection, that the reported
// values match the quoted digest, and that they match the policy.
func (v *Verifier) Verify(ctx context.Context, r Request) (*Result, error) {
	res, err := v.verify(ctx, r)
	if err != nil {
		v.results.WithLabelValues(Reason(err)).Inc()
		return nil, fmt.Errorf("verify quote from device %q: %w", r.DeviceID, err)
	}
	v.results.WithLabelValues("ok").Inc()
	return res, nil
}

func (v *Verifier) verify(ctx context.Context, r Request) (*Result, error) {
	want, err := normPCRs(r.Policy.PCRs)
	if err != nil {
		return nil, err
	}
	pol := Policy{PCRs: want, Expected: r.Policy.Expected}
	if err := pol.validate(); err != nil {
		return nil, err
	}
	q := r.Quote
	if q == nil {
		return nil, fmt.Errorf("no quote: %w", ErrMalformed)
	}
	if !sameKey(q.AK, r.AK) {
		return nil, ErrUnknownKey
	}
	key, err := v.key(r.AK, r.Software)
	if err != nil {
		return nil, fmt.Errorf("registered key: %v: %w", err, ErrUnknownKey)
	}
	p, err := parseQuote(q, r.Software)
	if err != nil {
		return nil, err
	}
	if !verifySig(key, q.Attest, p) {
		return nil, ErrBadSignature
	}

	nonce := p.extraData
	if len(nonce) < MinNonce {
		return nil, fmt.Errorf("nonce is %d bytes: %w", len(nonce), ErrShortNonce)
	}
	if (r.Nonce != nil || v.o.Nonces == nil) && !bytes.Equal(r.Nonce, nonce) {
		return nil, ErrWrongNonce
	}
	now := v.o.Now()
	if v.o.Nonces != nil {
		if err := v.o.Nonces.Consume(ctx, r.DeviceID, nonce, now); err != nil {
			return nil, err
		}
	}
	last := r.Last
	if last == nil && v.o.Counters != nil {
		var err error
		if last, err = v.o.Counters.LastCounters(ctx, r.DeviceID); err != nil {
			return nil, fmt.Errorf("last counters: %w", err)
		}
	}

	ci := p.clock
	if ci.Safe != tpm2.TPMIYesNo(true) {
		return nil, ErrClockUnsafe
	}
	c := Counters{ResetCount: ci.ResetCount, RestartCount: ci.RestartCount, Clock: ci.Clock}
	if l := last; l != nil {
		// A TPM obfuscates the counters in quotes by keys outside the
		// endorsement and platform hierarchies: it adds a fixed per-key
		// offset, so they compare as serial numbers (RFC 1982), not as plain
		// integers that may wrap.
		dReset := int32(c.ResetCount - l.ResetCount)
		dRestart := int32(c.RestartCount - l.RestartCount)
		// The clock is not obfuscated; it only moves forward while the TPM
		// neither resets nor restarts, so within one reset and restart an
		// earlier clock is an older quote held back and replayed.
		if dReset < 0 || (dReset == 0 && dRestart < 0) || (dReset == 0 && dRestart == 0 && c.Clock < l.Clock) {
			return nil, fmt.Errorf("reset/restart/clock %d/%d/%d after %d/%d/%d: %w",
				c.ResetCount, c.RestartCount, c.Clock, l.ResetCount, l.RestartCount, l.Clock, ErrCountersBackwards)
		}
	}

	if len(p.banks) != 1 {
		return nil, fmt.Errorf("%d PCR banks selected, want 1: %w", len(p.banks), ErrPCRSelection)
	}
	if p.banks[0].hash != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("bank %#x: %w", uint16(p.banks[0].hash), ErrHashBank)
	}
	got := selectedPCRs(p.banks[0].bitmap)
	if !slices.Equal(got, want) {
		return nil, fmt.Errorf("quoted PCRs %v, policy selects %v: %w", got, want, ErrPCRSelection)
	}
	if len(q.PCRs) != len(want) {
		return nil, fmt.Errorf("%d PCR values reported for %d quoted: %w", len(q.PCRs), len(want), ErrPCRDigest)
	}
	for _, i := range want {
		if len(q.PCRs[i]) != 32 {
			return nil, fmt.Errorf("PCR %d value is %d bytes: %w", i, len(q.PCRs[i]), ErrPCRDigest)
		}
	}
	if !bytes.Equal(pcrDigest(want, q.PCRs), p.pcrDigest) {
		return nil, ErrPCRDigest
	}

	res := &Result{DeviceID: r.DeviceID, Counters: c, PCRs: q.PCRs, Software: r.Software,
		FirmwareVersion: p.firmware, At: now}
	var mismatches []error
	for _, i := range want {
		exp, ok := pol.Expected[i]
		if !ok || (r.Software && i != AppPCR) {
			res.Unchecked = append(res.Unchecked, i)
			continue
		}
		if !bytes.Equal(q.PCRs[i], exp) {
			mismatches = append(mismatches, &PCRMismatchError{PCR: i, Got: q.PCRs[i], Want: exp})
		}
	}
	if len(mismatches) == 1 {
		return nil, mismatches[0]
	}
	if len(mismatches) > 1 {
		return nil, multiError(mismatches)
	}
	if v.o.Counters != nil {
		if err := v.o.Counters.SaveCounters(ctx, r.DeviceID, c); err != nil {
			return nil, fmt.Errorf("save counters: %w", err)
		}
	}
	return res, nil
}

// key parses a registered AK once and keeps it: the hub verifies the same
// devices' keys over and over.
func (v *Verifier) key(b []byte, software bool) (*ecdsa.PublicKey, error) {
	id := string(b)
	if software {
		id = "sw\x00" + id
	}
	v.mu.Lock()
	e, ok := v.keys[id]
	v.mu.Unlock()
	if !ok {
		k, err := akKey(b, software)
		e = keyEntry{key: k, err: err}
		v.mu.Lock()
		if len(v.keys) >= maxCachedKeys {
			clear(v.keys)
		}
		v.keys[id] = e
		v.mu.Unlock()
	}
	if e.err != nil {
		return nil, e.err
	}
	return e.key, nil
}

// maxCachedKeys bounds the parsed-key cache (one entry per device).
const maxCachedKeys = 100_000

// multiError lists several failures on one line; errors.Is sees each.
type multiError []error

func (m multiError) Error() string {
	s := make([]string, len(m))
	for i, e := range m {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (m multiError) Unwrap() []error { return m }
