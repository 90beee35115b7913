package provision

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/spec"
)

// FormatVersion is the version of the bundle format (envelope and manifest).
const FormatVersion = 1

// EnvelopeName is the name of a bundle's first member.
const EnvelopeName = "shoal-bundle.json"

// maxEnvelope bounds the first member, so a hostile file cannot make the
// reader buffer without end before the signature is checked.
const maxEnvelope = 4 << 20

// Error categories, checked with errors.Is; Reason maps them to the stable
// machine reasons a receipt and a status report carry.
var (
	// ErrInvalid: the file is not a well-formed bundle (truncated, a member not in the manifest, a bad name, a symlink).
	ErrInvalid = errors.New("invalid bundle")
	// ErrSignature: the manifest is not signed by a trusted bundle key.
	ErrSignature = errors.New("bundle signature not trusted")
	// ErrHash: a member's size or sha256 differs from the manifest.
	ErrHash = errors.New("bundle member does not match its manifest entry")
	// ErrReplay: the bundle is older than, or not a descendant of, what the device applied.
	ErrReplay = errors.New("bundle older than the applied one")
	// ErrWrongDevice: the bundle does not provision this device.
	ErrWrongDevice = errors.New("bundle is for another device")
	// ErrReceipt: a receipt is malformed or its signature does not verify.
	ErrReceipt = api.ErrReceipt
)

// Machine reasons Reason returns, stable for receipts and status reports
// (each is explained in docs/guide/troubleshooting.md).
const (
	ReasonSignatureUntrusted = "bundle-signature-untrusted"
	ReasonVerifyFailed       = "bundle-verify-failed"
	ReasonReplayed           = "bundle-replayed"
	ReasonWrongDevice        = "bundle-wrong-device"
	ReasonInvalid            = "bundle-invalid"
	ReasonApplyFailed        = "bundle-apply-failed" // anything else: a full disk, the Engine refusing an image
)

// Reason returns a stable machine reason for err.
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrSignature):
		return ReasonSignatureUntrusted
	case errors.Is(err, ErrHash):
		return ReasonVerifyFailed
	case errors.Is(err, ErrReplay):
		return ReasonReplayed
	case errors.Is(err, ErrWrongDevice):
		return ReasonWrongDevice
	case errors.Is(err, ErrInvalid):
		return ReasonInvalid
	}
	return ReasonApplyFailed
}

// Member kinds.
const (
	KindGit     = "git"     // a git bundle of the fleet repo
	KindImage   = "image"   // a container image tar (docker save format)
	KindRelease = "release" // the OS release image
	// A delta release instead of its image: the release's chunk index
	// (casync .caibx, whose sha256 the release signs) and the chunks
	// (chunks/<4 hex>/<id>.cacnk, a casync store) the devices lack.
	KindDeltaIndex = "delta-index"
	KindChunk      = "chunk"
)

// chunkNameRE is a chunk member's name: a casync store's layout under chunks/.
var chunkNameRE = regexp.MustCompile(`^chunks/([0-9a-f]{4})/([0-9a-f]{64})\.cacnk$`)

// Member is one file of the bundle after the envelope.
type Member struct {
	Name   string `json:"name"` // path inside the tar: git/fleet.bundle, images/<sha256>.tar, release/<name>
	Kind   string `json:"kind"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Refs are the image references an image tar provides.
	Refs []string `json:"refs,omitempty"`
}

// TrustRoots are the keys a provisioned device trusts, written on first
// provisioning; a provisioned device replaces them only from a bundle signed
// by its current bundle key.
type TrustRoots struct {
	BundleKeys    []string `json:"bundleKeys"`              // PEM public keys (ed25519) that may sign later bundles
	ReleaseKeys   string   `json:"releaseKeys,omitempty"`   // PEM, as updater.ParseTrustRoots reads it
	CommitSigners string   `json:"commitSigners,omitempty"` // ssh authorized_keys lines for commit signatures
}

// Manifest says what a bundle holds and for whom.
type Manifest struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	// Seq orders the bundles of one operator key: a device refuses one whose
	// Seq is not above the last it applied.
	Seq     uint64   `json:"seq"`
	Devices []string `json:"devices"`         // the device IDs it provisions
	Group   string   `json:"group,omitempty"` // set when made with --group
	// Hardware maps hardware IDs (HardwareID) to device IDs, so one group
	// bundle lets each device find its own ID.
	Hardware map[string]string `json:"hardware,omitempty"`
	Commit   string            `json:"commit"` // fleet repo commit (40 hex)
	Ref      string            `json:"ref"`    // the ref the git bundle carries, e.g. refs/heads/main
	RepoURL  string            `json:"repoURL,omitempty"`
	HubURL   string            `json:"hubURL,omitempty"`
	// HubCA is the hex sha256 of the hub CA certificate: the device pins
	// the hub by it when it enrols with a token from the bundle.
	HubCA string `json:"hubCA,omitempty"`
	// Tokens are one-time enrolment tokens by device ID. The bundle is
	// signed, not encrypted: keep the stick like a password.
	Tokens  map[string]string `json:"tokens,omitempty"`
	Trust   TrustRoots        `json:"trust"`
	Release *spec.Release     `json:"release,omitempty"`
	Members []Member          `json:"members"`
}

// envelope is the first member: the manifest's exact bytes and their signature.
type envelope struct {
	Version   int    `json:"version"`
	Manifest  []byte `json:"manifest"`  // JSON of Manifest, base64 on the wire
	KeyID     string `json:"keyID"`     // KeyID of PublicKey
	PublicKey []byte `json:"publicKey"` // raw ed25519 public key
	Signature []byte `json:"signature"` // ed25519 over Manifest
}

// Hash is the bundle's identity: the sha256 of its signed manifest, which
// names every member's sha256. Receipts and the applied state carry it.
func hashManifest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

var (
	hexRE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
	commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+){0,3}$`)
	deviceRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$`)
)

// checkName refuses member names that could escape the temp area or
// collide: absolute, with "..", or outside a plain character set.
func checkName(name string) error {
	switch {
	case name == "" || len(name) > 200:
		return fmt.Errorf("member name %q: empty or too long: %w", name, ErrInvalid)
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("member name %q is absolute: %w", name, ErrInvalid)
	case !fs.ValidPath(name) || name == EnvelopeName:
		return fmt.Errorf("member name %q is not a clean relative path: %w", name, ErrInvalid)
	case !nameRE.MatchString(name):
		return fmt.Errorf("member name %q has characters outside [A-Za-z0-9._+-/]: %w", name, ErrInvalid)
	}
	for _, el := range strings.Split(name, "/") {
		if el == "." || el == ".." {
			return fmt.Errorf("member name %q has a %q element: %w", name, el, ErrInvalid)
		}
	}
	return nil
}

// Validate checks the manifest's own consistency.
func (m *Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("manifest: %s: %w", fmt.Sprintf(format, args...), ErrInvalid)
	}
	if m.Version != FormatVersion {
		return bad("version %d, want %d", m.Version, FormatVersion)
	}
	if len(m.Devices) == 0 {
		return bad("no devices")
	}
	for _, d := range m.Devices {
		if !deviceRE.MatchString(d) {
			return bad("device ID %q is malformed", d)
		}
	}
	if !commitRE.MatchString(m.Commit) {
		return bad("commit %q: want 40 lowercase hex digits", m.Commit)
	}
	if !strings.HasPrefix(m.Ref, "refs/") {
		return bad("ref %q: want refs/...", m.Ref)
	}
	if m.HubCA != "" && !hexRE.MatchString(m.HubCA) {
		return bad("hub CA fingerprint %q: want 64 lowercase hex digits", m.HubCA)
	}
	if len(m.Trust.BundleKeys) == 0 {
		return bad("no bundle keys in trust roots")
	}
	for hw, id := range m.Hardware {
		if hw == "" || !m.For(id) {
			return bad("hardware %q maps to %q, which the bundle does not provision", hw, id)
		}
	}
	seen := map[string]bool{}
	git := 0
	for i, mem := range m.Members {
		if err := checkName(mem.Name); err != nil {
			return fmt.Errorf("manifest: member %d: %w", i, err)
		}
		if seen[mem.Name] {
			return bad("member %q listed twice", mem.Name)
		}
		seen[mem.Name] = true
		if mem.Size < 0 {
			return bad("member %q: negative size", mem.Name)
		}
		if !hexRE.MatchString(mem.SHA256) {
			return bad("member %q: sha256 %q is not 64 lowercase hex digits", mem.Name, mem.SHA256)
		}
		switch mem.Kind {
		case KindGit:
			git++
		case KindImage, KindRelease:
		case KindDeltaIndex:
			if m.Release == nil || m.Release.Delta == nil || !strings.EqualFold(mem.SHA256, m.Release.Delta.SHA256) {
				return bad("member %q: a delta index that is not the release's (its sha256 %s)", mem.Name, mem.SHA256)
			}
		case KindChunk:
			if c := chunkNameRE.FindStringSubmatch(mem.Name); c == nil || c[2][:4] != c[1] {
				return bad("member %q: a chunk's name is chunks/<4 hex>/<64 hex>.cacnk", mem.Name)
			}
		default:
			return bad("member %q: unknown kind %q", mem.Name, mem.Kind)
		}
	}
	if git != 1 {
		return bad("%d git bundle members, want 1", git)
	}
	if m.Release != nil && m.member(KindRelease) == nil && m.member(KindDeltaIndex) == nil {
		return bad("release %q has no release member", m.Release.Version)
	}
	return nil
}

func (m *Manifest) member(kind string) *Member {
	for i := range m.Members {
		if m.Members[i].Kind == kind {
			return &m.Members[i]
		}
	}
	return nil
}

// For reports whether the bundle provisions device id.
func (m *Manifest) For(id string) bool {
	for _, d := range m.Devices {
		if d == id {
			return true
		}
	}
	return false
}

// bundleKeys parses the manifest's trusted bundle keys.
func (t TrustRoots) bundleKeys() ([]ed25519.PublicKey, error) {
	return ParsePublicKeys([]byte(strings.Join(t.BundleKeys, "")))
}

// sign wraps m in an envelope signed by key.
func sign(m *Manifest, key ed25519.PrivateKey) (env []byte, manifest []byte, err error) {
	manifest, err = json.Marshal(m)
	if err != nil {
		return nil, nil, err
	}
	pub := key.Public().(ed25519.PublicKey)
	env, err = json.MarshalIndent(envelope{
		Version:   FormatVersion,
		Manifest:  manifest,
		KeyID:     KeyID(pub),
		PublicKey: pub,
		Signature: ed25519.Sign(key, manifest),
	}, "", " ")
	return env, manifest, err
}

// openEnvelope checks the envelope's signature against trusted (when not
// empty; else against the keys the manifest itself lists, for a device's
// first provisioning) and returns the manifest and its hash.
func openEnvelope(b []byte, trusted []ed25519.PublicKey) (*Manifest, string, ed25519.PublicKey, error) {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, "", nil, fmt.Errorf("envelope: %v: %w", err, ErrInvalid)
	}
	if env.Version != FormatVersion {
		return nil, "", nil, fmt.Errorf("envelope: version %d, want %d: %w", env.Version, FormatVersion, ErrInvalid)
	}
	if len(env.PublicKey) != ed25519.PublicKeySize || len(env.Signature) != ed25519.SignatureSize {
		return nil, "", nil, fmt.Errorf("envelope: malformed key or signature: %w", ErrSignature)
	}
	pub := ed25519.PublicKey(env.PublicKey)
	if !ed25519.Verify(pub, env.Manifest, env.Signature) {
		return nil, "", nil, fmt.Errorf("manifest signature does not verify with key %s: %w", KeyID(pub), ErrSignature)
	}
	var m Manifest
	if err := json.Unmarshal(env.Manifest, &m); err != nil {
		return nil, "", nil, fmt.Errorf("manifest: %v: %w", err, ErrInvalid)
	}
	if err := m.Validate(); err != nil {
		return nil, "", nil, err
	}
	if trusted == nil {
		// First provisioning trusting the first bundle (or a look at a
		// bundle with no trust at all): the key must be one the bundle
		// installs, so a device trusts afterwards exactly the key that
		// provisioned it. An empty, non-nil trusted refuses every key.
		var err error
		if trusted, err = m.Trust.bundleKeys(); err != nil {
			return nil, "", nil, fmt.Errorf("manifest trust roots: %v: %w", err, ErrInvalid)
		}
	}
	for _, k := range trusted {
		if k.Equal(pub) {
			return &m, hashManifest(env.Manifest), pub, nil
		}
	}
	return nil, "", nil, fmt.Errorf("signed by key %s, which is not a trusted bundle key (trusted: %s): %w", KeyID(pub), orNone(keyIDs(trusted)), ErrSignature)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
