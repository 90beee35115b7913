package provision

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/source"
	"github.com/shoalfleet/shoal/spec"
)

// ImageLoader loads image tars into the Docker Engine; *client.Client satisfies it.
type ImageLoader interface {
	ImageLoad(ctx context.Context, input io.Reader, opts ...client.ImageLoadOption) (image.LoadResponse, error)
}

// RepoImporter adds a verified git bundle to the device's fleet repo;
// *source.Source satisfies it.
type RepoImporter interface {
	ImportBundle(ctx context.Context, path, since string) (*source.Revision, error)
}

// ApplyOptions configure Apply.
type ApplyOptions struct {
	StateDir string
	// DeviceID is this device; "" means the one it was provisioned as, else
	// the bundle's hardware map applied to HardwareID, else HardwareID itself.
	DeviceID string
	// HardwareID overrides the package's HardwareID (tests, odd boards).
	HardwareID func() string
	// BundleKeys are trusted before first provisioning (from the device's
	// config, baked into the OS image). Once provisioned, only the keys the
	// device holds in its state dir count.
	BundleKeys []ed25519.PublicKey
	// TrustFirstBundle trusts, before first provisioning and with no
	// BundleKeys, the first bundle's own keys (trust on first use). Off, a
	// device with no bundle keys refuses every bundle and writes nothing.
	TrustFirstBundle bool
	// Images loads image tars; nil leaves them in StateDir/images for the
	// reconciler.
	Images ImageLoader
	// Repo imports the git bundle; nil means a source.Source on
	// StateDir/repo following the bundle's ref.
	Repo RepoImporter
	// InstallRelease installs the bundle's OS release (the updater, with its
	// own signature check); rel.URL is a file:// URL in the temp area. nil
	// refuses bundles that carry a release.
	InstallRelease func(ctx context.Context, rel *spec.Release) error
	// Signer signs receipts (the device key); nil writes unsigned receipts.
	Signer  crypto.Signer
	KeyKind string // "tpm" or "software", copied into receipts
	// Quote returns a TPM quote over the bundle hash for the receipt; nil: none.
	Quote func(ctx context.Context, nonce []byte) (json.RawMessage, error)
	// NoReceipt skips writing the receipt next to the bundle.
	NoReceipt bool
	Now       func() time.Time
	Logger    *slog.Logger
}

// Result is what an Apply did, for status and the receipt.
type Result struct {
	DeviceID    string
	BundleHash  string
	Commit      string // applied commit after the bundle
	Release     string // release version after the bundle
	First       bool   // the bundle provisioned the device
	Images      []string
	Receipt     string // path of the receipt written, if any
	ReceiptErr  error  // why no receipt could be written
	Err         error  // why the bundle was not applied; nil when it was
	Provisioned State
}

// Paths under the state dir that provisioning writes.
const (
	provDir        = "provision"
	stateFile      = "provision/state.json"
	deviceFile     = "provision/device.json"
	enrolFile      = "provision/enrol.json"
	trustDir       = "provision/trust"
	bundleKeysFile = "provision/trust/bundle-keys.pem"
	releaseKeys    = "provision/trust/release-keys.pem"
	commitSigners  = "provision/trust/commit-signers"
	stagePrefix    = ".provision-stage-"
)

// TrustPaths are the files holding a provisioned device's trust roots, for
// the agent's config (release keys for the updater, commit signers for source).
type TrustPaths struct{ BundleKeys, ReleaseKeys, CommitSigners string }

// Trust returns where Apply writes the trust roots under stateDir.
func Trust(stateDir string) TrustPaths {
	return TrustPaths{
		BundleKeys:    filepath.Join(stateDir, bundleKeysFile),
		ReleaseKeys:   filepath.Join(stateDir, releaseKeys),
		CommitSigners: filepath.Join(stateDir, commitSigners),
	}
}

// State is what the device remembers of the last bundle it applied.
type State struct {
	Version    int       `json:"version"`
	DeviceID   string    `json:"deviceID"`
	BundleHash string    `json:"bundleHash"`
	Seq        uint64    `json:"seq"`
	Commit     string    `json:"commit"`
	Ref        string    `json:"ref"`
	Release    string    `json:"release,omitempty"`
	Applied    time.Time `json:"applied"`
}

// DeviceConfig is written on provisioning for the agent: who it is and where
// its hub and fleet repo are.
type DeviceConfig struct {
	Version  int    `json:"version"`
	DeviceID string `json:"deviceID"`
	HubURL   string `json:"hubURL,omitempty"`
	RepoURL  string `json:"repoURL,omitempty"`
	Ref      string `json:"ref"`
}

// Enrolment is a queued enrolment: the agent enrols with Token when the hub
// is reachable, then removes the file (RemoveEnrolment).
type Enrolment struct {
	Version  int    `json:"version"`
	DeviceID string `json:"deviceID"`
	HubURL   string `json:"hubURL"`
	// HubCA is the hex sha256 of the hub CA certificate; "" when the
	// bundle did not carry one (the agent then needs it from elsewhere).
	HubCA string `json:"hubCA,omitempty"`
	Token string `json:"token"`
}

// ReadState returns the provisioning state, or nil when the device was never provisioned.
func ReadState(stateDir string) (*State, error) {
	var s State
	ok, err := readJSON(filepath.Join(stateDir, stateFile), &s)
	if err != nil || !ok {
		return nil, err
	}
	if s.Version != FormatVersion {
		return nil, fmt.Errorf("provision state: version %d, want %d", s.Version, FormatVersion)
	}
	return &s, nil
}

// ReadEnrolment returns the queued enrolment, or nil when none is queued.
func ReadEnrolment(stateDir string) (*Enrolment, error) {
	var e Enrolment
	ok, err := readJSON(filepath.Join(stateDir, enrolFile), &e)
	if err != nil || !ok {
		return nil, err
	}
	return &e, nil
}

// RemoveEnrolment drops the queued enrolment once the device has enrolled.
func RemoveEnrolment(stateDir string) error {
	return atomicfile.Remove(filepath.Join(stateDir, enrolFile))
}

// ReadDeviceConfig returns the provisioned device config, or nil.
func ReadDeviceConfig(stateDir string) (*DeviceConfig, error) {
	var c DeviceConfig
	ok, err := readJSON(filepath.Join(stateDir, deviceFile), &c)
	if err != nil || !ok {
		return nil, err
	}
	return &c, nil
}

func readJSON(p string, v any) (bool, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%s: %w", p, err)
	}
	return true, nil
}

func writeJSON(p string, v any, perm fs.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, append(b, '\n'), perm)
}

func (o *ApplyOptions) defaults() {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Apply verifies the bundle at path and applies it to the device, then
// writes a receipt next to it (path + "." + device + ".receipt.json"),
// whatever the outcome. Nothing in the state dir changes unless the whole
// bundle verified: members are streamed into a temp area of the state dir,
// checked (signature, every hash, git history, replay), and only then moved
// into place; the provisioning state is written last.
func Apply(ctx context.Context, path string, o ApplyOptions) (*Result, error) {
	o.defaults()
	res, err := apply(ctx, path, &o)
	if res == nil {
		res = &Result{}
	}
	res.Err = err
	rp := path + "." + res.DeviceID + ".receipt.json"
	switch {
	case o.NoReceipt || res.DeviceID == "" || errors.Is(err, ErrWrongDevice):
	case errors.Is(err, ErrReplay) && fileExists(rp):
		// The receipt of the first application stays until it is imported.
		res.Receipt = rp
	default:
		rc := o.receipt(ctx, res, err)
		res.Receipt = rp
		if werr := WriteReceipt(res.Receipt, rc, o.Signer); werr != nil {
			res.Receipt, res.ReceiptErr = "", werr
			o.Logger.Warn("receipt not written", "bundle", path, "err", werr)
		}
	}
	if err != nil {
		return res, fmt.Errorf("apply bundle %s: %w", filepath.Base(path), err)
	}
	return res, nil
}

func apply(ctx context.Context, path string, o *ApplyOptions) (*Result, error) {
	if o.StateDir == "" {
		return nil, errors.New("no state dir")
	}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockDir(o.StateDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := ReadState(o.StateDir)
	if err != nil {
		return nil, err
	}
	trusted := o.BundleKeys
	if st != nil {
		if trusted, err = ReadPublicKeys(filepath.Join(o.StateDir, bundleKeysFile)); err != nil {
			return nil, fmt.Errorf("provisioned device's bundle keys: %w", err)
		}
	}
	noKeys := st == nil && len(trusted) == 0
	if len(trusted) == 0 && (st != nil || !o.TrustFirstBundle) {
		trusted = []ed25519.PublicKey{} // none: NewReader refuses every bundle, naming its key
	}
	res := &Result{DeviceID: o.DeviceID}
	if st != nil && res.DeviceID == "" {
		res.DeviceID = st.DeviceID
	}
	if st != nil {
		res.Commit, res.Release = st.Commit, st.Release
	}
	f, err := os.Open(path)
	if err != nil {
		return res, err
	}
	defer f.Close()
	removeStale(o.StateDir)
	stage, err := os.MkdirTemp(o.StateDir, stagePrefix+"*")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(stage)

	br, err := NewReader(f, trusted)
	if err != nil {
		if res.DeviceID == "" {
			res.DeviceID = o.fallbackID()
		}
		if noKeys && errors.Is(err, ErrSignature) {
			err = fmt.Errorf("%w; this device trusts no bundle key yet: put the operator's bundle public key in the agent config's provision.bundle_keys (or pass --bundle-key), or set provision.trust_first_bundle: true to trust the first bundle's own key", err)
		}
		return res, err
	}
	m := br.Manifest
	res.BundleHash = br.Hash
	if res.DeviceID == "" {
		hw := o.hardwareID()
		res.DeviceID = hw
		if id, ok := m.Hardware[hw]; ok {
			res.DeviceID = id
		}
	}
	if !m.For(res.DeviceID) {
		return res, fmt.Errorf("bundle provisions %s, this is %q: %w", strings.Join(m.Devices, ", "), res.DeviceID, ErrWrongDevice)
	}
	log := o.Logger.With("device", res.DeviceID, "bundle", br.Hash[:12], "commit", short(m.Commit))
	if st != nil {
		switch {
		case st.BundleHash == br.Hash:
			return res, fmt.Errorf("bundle already applied on %s: %w", st.Applied.Format(time.RFC3339), ErrReplay)
		case m.Seq <= st.Seq:
			return res, fmt.Errorf("bundle made %s is not newer than the applied one (seq %d <= %d): %w", m.Created.Format(time.RFC3339), m.Seq, st.Seq, ErrReplay)
		}
	}
	installRelease := false
	if m.Release != nil {
		cur := ""
		if st != nil {
			cur = st.Release
		}
		switch c := spec.CompareVersions(m.Release.Version, cur); {
		case cur != "" && c < 0:
			return res, fmt.Errorf("release %s is older than the installed %s: %w", m.Release.Version, cur, ErrReplay)
		case cur == "" || c > 0:
			if o.InstallRelease == nil {
				return res, fmt.Errorf("bundle carries release %s but this device has no updater configured", m.Release.Version)
			}
			installRelease = true
		}
	}
	files, err := extract(ctx, br, filepath.Join(stage, "m"))
	if err != nil {
		return res, err
	}
	gitMember := m.member(KindGit)
	applied := ""
	if st != nil {
		applied = st.Commit
	}
	if _, err := stageGit(files[gitMember.Name], filepath.Join(stage, "repo"), m.Ref, m.Commit, applied); err != nil {
		return res, err
	}
	log.Debug("bundle verified", "members", len(m.Members))

	// Everything verified: from here on the state dir changes.
	repo := o.Repo
	if repo == nil {
		if repo, err = newSource(o.StateDir, m, o.Logger); err != nil {
			return res, err
		}
	}
	rev, err := repo.ImportBundle(ctx, files[gitMember.Name], applied)
	if err != nil {
		return res, fmt.Errorf("import fleet repo: %w", err)
	}
	res.Commit = rev.Commit
	imgDir := filepath.Join(o.StateDir, "images")
	for _, mem := range m.Members {
		if mem.Kind != KindImage {
			continue
		}
		if o.Images != nil {
			if err := loadImage(ctx, o.Images, files[mem.Name]); err != nil {
				return res, fmt.Errorf("image %s (%s): %w", strings.Join(mem.Refs, ", "), mem.Name, err)
			}
		}
		if err := moveInto(files[mem.Name], filepath.Join(imgDir, mem.SHA256+".tar")); err != nil {
			return res, err
		}
		res.Images = append(res.Images, mem.Refs...)
	}
	if err := writeTrust(o.StateDir, m.Trust); err != nil {
		return res, err
	}
	if st == nil {
		res.First = true
		if err := writeJSON(filepath.Join(o.StateDir, deviceFile), DeviceConfig{
			Version: FormatVersion, DeviceID: res.DeviceID, HubURL: m.HubURL, RepoURL: m.RepoURL, Ref: m.Ref,
		}, 0o644); err != nil {
			return res, err
		}
	}
	if tok := m.Tokens[res.DeviceID]; tok != "" && m.HubURL != "" {
		if err := writeJSON(filepath.Join(o.StateDir, enrolFile), Enrolment{
			Version: FormatVersion, DeviceID: res.DeviceID, HubURL: m.HubURL, HubCA: m.HubCA, Token: tok,
		}, 0o600); err != nil {
			return res, err
		}
	}
	if installRelease {
		rel := *m.Release
		if idx := m.member(KindDeltaIndex); idx != nil {
			// The stick's chunks are the store; a chunk it lacks comes
			// from the release's own image url, if the device reaches it.
			d := *rel.Delta
			d.Index, d.Store = files[idx.Name], filepath.Join(stage, "m", "chunks")
			rel.Delta = &d
		} else {
			rel.URL = "file://" + files[m.member(KindRelease).Name]
		}
		if err := o.InstallRelease(ctx, &rel); err != nil {
			return res, fmt.Errorf("install release %s: %w", rel.Version, err)
		}
		res.Release = rel.Version
	}
	ns := State{
		Version: FormatVersion, DeviceID: res.DeviceID, BundleHash: br.Hash, Seq: m.Seq,
		Commit: res.Commit, Ref: m.Ref, Release: res.Release, Applied: o.Now().UTC(),
	}
	if err := writeJSON(filepath.Join(o.StateDir, stateFile), ns, 0o644); err != nil {
		return res, err
	}
	res.Provisioned = ns
	log.Info("bundle applied", "first", res.First, "images", len(res.Images), "release", res.Release)
	return res, nil
}

// fallbackID names the device in a receipt for a bundle that did not verify.
func (o *ApplyOptions) fallbackID() string {
	if o.DeviceID != "" {
		return o.DeviceID
	}
	return o.hardwareID()
}

func (o *ApplyOptions) hardwareID() string {
	if o.HardwareID != nil {
		return o.HardwareID()
	}
	return HardwareID()
}

func newSource(stateDir string, m *Manifest, log *slog.Logger) (*source.Source, error) {
	url := m.RepoURL
	if url == "" {
		url = "file:///dev/null" // offline only: the source never fetches
	}
	so := source.Options{URL: url, Dir: filepath.Join(stateDir, "repo"), Logger: log}
	switch {
	case strings.HasPrefix(m.Ref, "refs/heads/"):
		so.Branch = strings.TrimPrefix(m.Ref, "refs/heads/")
	case strings.HasPrefix(m.Ref, "refs/tags/"):
		so.Tag = strings.TrimPrefix(m.Ref, "refs/tags/")
	default:
		so.Commit = m.Commit
	}
	s, err := source.New(so)
	if err != nil {
		return nil, fmt.Errorf("fleet repo: %w", err)
	}
	return s, nil
}

func loadImage(ctx context.Context, eng ImageLoader, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	resp, err := eng.ImageLoad(ctx, f, client.ImageLoadWithQuiet(true))
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		if msg.Error != "" {
			return fmt.Errorf("load: %s", msg.Error)
		}
	}
}

func moveInto(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(src, dst); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}

func writeTrust(stateDir string, t TrustRoots) error {
	if err := os.MkdirAll(filepath.Join(stateDir, trustDir), 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name, data string
	}{
		{bundleKeysFile, strings.Join(t.BundleKeys, "")},
		{releaseKeys, t.ReleaseKeys},
		{commitSigners, t.CommitSigners},
	} {
		p := filepath.Join(stateDir, f.name)
		if f.data == "" {
			if err := atomicfile.Remove(p); err != nil {
				return err
			}
			continue
		}
		if err := atomicfile.WriteFile(p, []byte(f.data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// lockDir takes an exclusive flock on the state dir itself, so the agent's
// watcher and a person running apply never interleave; locking the
// directory creates no file in it.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state dir %s: %w", dir, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// removeStale removes temp areas a crash left behind.
func removeStale(stateDir string) {
	ms, _ := filepath.Glob(filepath.Join(stateDir, stagePrefix+"*"))
	for _, m := range ms {
		os.RemoveAll(m)
	}
}

// HardwareID reads a stable hardware identity: the device-tree serial
// number, the DMI product serial, or the machine ID, lowercased into a
// device ID's character set.
func HardwareID() string {
	for _, p := range []string{"/proc/device-tree/serial-number", "/sys/class/dmi/id/product_serial", "/etc/machine-id"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := strings.ToLower(strings.Trim(strings.TrimSpace(string(b)), "\x00"))
		s = strings.Map(func(r rune) rune {
			if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' || r == '.' || r == '_' {
				return r
			}
			return -1
		}, s)
		if s != "" {
			return s
		}
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Bundles lists the bundle files in dir (*.shoal), oldest manifest first
// when they verify, so a stick holding several applies them in order.
func Bundles(dir string) ([]string, error) {
	ms, err := filepath.Glob(filepath.Join(dir, "*.shoal"))
	if err != nil {
		return nil, err
	}
	seq := map[string]uint64{}
	for _, p := range ms {
		if f, err := os.Open(p); err == nil {
			if br, err := NewReader(f, nil); err == nil {
				seq[p] = br.Manifest.Seq
			}
			f.Close()
		}
	}
	sort.SliceStable(ms, func(i, j int) bool { return seq[ms[i]] < seq[ms[j]] })
	return ms, nil
}

// ApplyPath applies the bundle at path, or, when path is a directory (a
// mounted stick), every bundle in it for this device in order. In a
// directory, bundles for other devices and bundles no newer than the applied
// one are skipped without a receipt: a stick keeps old bundles around.
func ApplyPath(ctx context.Context, path string, o ApplyOptions) ([]*Result, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		r, err := Apply(ctx, path, o)
		return []*Result{r}, err
	}
	ps, err := Bundles(path)
	if err != nil {
		return nil, err
	}
	var out []*Result
	var errs []error
	for _, p := range ps {
		if old, err := notNewer(p, o.StateDir); err != nil {
			return out, err
		} else if old {
			continue
		}
		r, err := Apply(ctx, p, o)
		if errors.Is(err, ErrWrongDevice) {
			continue
		}
		out = append(out, r)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// notNewer reports whether the bundle at p is the applied one or older, by
// its manifest alone (its signature is checked when it is applied).
func notNewer(p, stateDir string) (bool, error) {
	st, err := ReadState(stateDir)
	if err != nil || st == nil {
		return false, err
	}
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	br, err := NewReader(f, nil)
	if err != nil {
		return false, nil // Apply reports it, with a receipt
	}
	return br.Hash == st.BundleHash || br.Manifest.Seq <= st.Seq, nil
}
