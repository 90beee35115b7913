// Package store keeps the hub's state: enrolment and operator tokens (hashed),
// devices and their certificates, status reports, attestation nonces and
// results, pokes, and the hub CA. Two backends implement Store: embedded
// SQLite (the default, pure Go through modernc.org/sqlite, WAL mode) and
// PostgreSQL (pgx) for several hubs on one database. One conformance suite
// (storetest) runs against both.
//
// Only hub/ and cmd/shoal import it.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors by category; backends wrap them with the ID concerned.
var (
	ErrNotFound = errors.New("not found")
	ErrRevoked  = errors.New("revoked")
	ErrExists   = errors.New("already exists")
)

// Token kinds.
const (
	TokenEnrol    = "enrol"
	TokenOperator = "operator"
	TokenRelay    = "relay" // enrols a site relay named by DeviceID
)

// Token is a one-time enrolment token or an operator token, stored by hash.
type Token struct {
	Hash     []byte   // sha256 of the secret
	Kind     string   // TokenEnrol or TokenOperator
	DeviceID string   // enrol tokens only (the relay's ID for relay tokens)
	Hosts    []string // relay tokens: the names the relay's server certificate covers
	Created  time.Time
	Expires  time.Time
	Used     time.Time // zero while unused
	Revoked  bool
}

// Device is an enrolled device.
type Device struct {
	ID           string
	KeyKind      string // tpm | software
	CertSerial   string // hex serial of the current client certificate
	CertNotAfter time.Time
	Enrolled     time.Time
	Revoked      time.Time // zero unless revoked
	LatestSeq    uint64
	State        string   // from the latest report
	Groups       []string // from the latest report
	LastSeen     time.Time
	AttestOK     *bool // nil until the first attestation
	// AttestPCRs: the last attestation held the PCR values to expected
	// ones (see Attestation.PCRsChecked); false also when not known.
	AttestPCRs bool
	AttestTime time.Time
	AK         []byte // attestation key registered at enrolment or first attestation; nil if none
	Relay      string // the relay the latest report came through; "" straight to the hub
}

// Report is one stored status report.
type Report struct {
	DeviceID string
	Seq      uint64
	Time     time.Time // the device's clock
	Received time.Time
	State    string
	Groups   []string
	Body     []byte // the report's JSON
}

// PutResult says what PutStatus did.
type PutResult struct {
	Duplicate bool   // this (device, seq) was already stored; nothing written
	Latest    uint64 // highest seq now stored for the device
}

// Attestation is a stored verdict.
type Attestation struct {
	DeviceID string
	Time     time.Time
	OK       bool
	// PCRsChecked: the quote's PCR values were held to expected ones, not
	// only proved fresh and signed by the device's key.
	PCRsChecked bool
	Result      []byte // api.AttestResult JSON
	AK          []byte // registers the device's attestation key if it has none yet
}

// Poke is news for devices: all devices when Group and Devices are empty.
type Poke struct {
	ID      int64
	Group   string
	Devices []string
	Commit  string
	Reason  string
	Time    time.Time
}

// Matches reports whether the poke is for a device with this ID and groups.
func (p Poke) Matches(id string, groups []string) bool {
	if p.Group == "" && len(p.Devices) == 0 {
		return true
	}
	for _, d := range p.Devices {
		if d == id {
			return true
		}
	}
	if p.Group != "" {
		for _, g := range groups {
			if g == p.Group {
				return true
			}
		}
	}
	return false
}

// CA is the hub's certificate authority, PEM encoded.
type CA struct {
	CertPEM []byte
	KeyPEM  []byte
}

// Store is everything the hub keeps. Methods are safe for concurrent use.
type Store interface {
	Tokens
	Devices
	Reports
	Attestations
	Counters
	Pokes
	ReceiptStore
	Relays
	Rollouts
	// CA returns the stored CA, or ErrNotFound.
	CA(ctx context.Context) (CA, error)
	// InitCA stores ca unless one exists, and returns the one stored, so
	// several hubs starting together agree on one CA.
	InitCA(ctx context.Context, ca CA) (CA, error)
	// Ping checks the database is reachable.
	Ping(ctx context.Context) error
	// Backend names the backend: "sqlite" or "postgres".
	Backend() string
	Close() error
}

// Tokens stores enrolment and operator tokens.
type Tokens interface {
	CreateToken(ctx context.Context, t Token) error
	// PeekEnrolToken returns the device ID of a usable (unused, unexpired,
	// unrevoked) enrol token without using it, or ErrNotFound.
	PeekEnrolToken(ctx context.Context, hash []byte, now time.Time) (string, error)
	// CheckOperatorToken reports ErrNotFound unless hash is a live operator token.
	CheckOperatorToken(ctx context.Context, hash []byte, now time.Time) error
	// RevokeToken revokes a token by hash and returns what it was, so the
	// operator can be told (ErrNotFound for an unknown token).
	RevokeToken(ctx context.Context, hash []byte) (Token, error)
}

// Devices stores enrolled devices.
type Devices interface {
	// Enrol uses the enrol token (once: a used, expired or revoked token is
	// ErrNotFound) and creates or replaces the device it names, in one
	// transaction. d.ID is set from the token.
	Enrol(ctx context.Context, tokenHash []byte, now time.Time, d Device) (Device, error)
	// Device returns a device, or ErrNotFound.
	Device(ctx context.Context, id string) (Device, error)
	// SetCert records a renewed certificate; ErrRevoked for a revoked device.
	SetCert(ctx context.Context, id, serial string, notAfter time.Time) error
	// RevokeDevice revokes a device at once.
	RevokeDevice(ctx context.Context, id string, now time.Time) error
	// ListDevices lists devices by ID.
	ListDevices(ctx context.Context) ([]Device, error)
	// CountByState counts unrevoked devices by their latest state ("" = never reported).
	CountByState(ctx context.Context) (map[string]int, error)
}

// Reports stores status reports.
type Reports interface {
	// PutStatus stores a report once per (device, seq). A report with a seq
	// below the latest is kept in history but does not change the device's
	// current state. ErrNotFound for an unknown device, ErrRevoked for a
	// revoked one; nothing is written then.
	PutStatus(ctx context.Context, r Report) (PutResult, error)
	// Reports returns a device's reports, newest seq first, at most limit.
	Reports(ctx context.Context, id string, limit int) ([]Report, error)
	// PruneReports deletes reports received before cutoff, keeping each
	// device's latest; it returns how many were deleted.
	PruneReports(ctx context.Context, cutoff time.Time) (int64, error)
}

// Attestations stores nonces and verdicts.
type Attestations interface {
	PutNonce(ctx context.Context, deviceID string, nonce []byte, expires time.Time) error
	// UseNonce consumes a nonce issued to deviceID; ErrNotFound if it is
	// unknown, another device's, used or expired.
	UseNonce(ctx context.Context, deviceID string, nonce []byte, now time.Time) error
	PutAttestation(ctx context.Context, a Attestation) error
	Attestations(ctx context.Context, id string, limit int) ([]Attestation, error)
}

// Pokes stores pokes; long-polling hubs read them after an ID.
type Pokes interface {
	// AddPoke stores p and returns its ID. The PostgreSQL backend also
	// notifies every listening hub (see Listen).
	AddPoke(ctx context.Context, p Poke) (int64, error)
	// PokesAfter returns pokes with ID > after, oldest first, at most limit.
	PokesAfter(ctx context.Context, after int64, limit int) ([]Poke, error)
	// LatestPoke returns the highest poke ID (0 if none).
	LatestPoke(ctx context.Context) (int64, error)
}

// Listener is implemented by backends that tell other processes about new
// pokes (PostgreSQL LISTEN/NOTIFY). Listen calls fn with each new poke ID
// until ctx ends.
type Listener interface {
	Listen(ctx context.Context, fn func(id int64)) error
}

// Open opens a store from a URL: sqlite:///abs/path.db (or sqlite://rel/path.db),
// postgres://… or postgresql://….
// Migrations are applied before it returns.
func Open(ctx context.Context, url string) (Store, error) {
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		return OpenSQLite(ctx, strings.TrimPrefix(url, "sqlite://"))
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return OpenPostgres(ctx, url)
	}
	return nil, fmt.Errorf("open store: unsupported database URL (want sqlite:///path or postgres://…)")
}
