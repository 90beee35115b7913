package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"strings"
	"time"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// DefaultConfigPath is where shoal-agent looks for its config file.
const DefaultConfigPath = "/etc/shoal/agent.yaml"

// Config is the agent config file (agent.yaml). Every field is documented in
// DefaultsYAML, which `shoal-agent config --defaults` prints.
type Config struct {
	DeviceID     string     `json:"device_id"`
	StateDir     string     `json:"state_dir"`
	Repo         RepoConfig `json:"repo"`
	BundleDir    string     `json:"bundle_dir"`
	PollInterval Duration   `json:"poll_interval"`
	PollJitter   float64    `json:"poll_jitter"`
	RetryMin     Duration   `json:"retry_min"`
	RetryMax     Duration   `json:"retry_max"`
	OutboxMax    int        `json:"outbox_max"`
	MetricsAddr  string     `json:"metrics_addr"`
	Pprof        bool       `json:"pprof"`
	LogFormat    string     `json:"log_format"`
	LogLevel     string     `json:"log_level"`
	DockerRoot   string     `json:"docker_root"`
	HubURL       string     `json:"hub_url"`
	Relays       []string   `json:"relays"`

	Containers ContainersConfig `json:"containers"`
	Update     updater.Config   `json:"update"`
	Trust      TrustConfig      `json:"trust"`
	Provision  ProvisionConfig  `json:"provision"`
}

// ProvisionConfig configures offline bundles from a USB stick.
type ProvisionConfig struct {
	// Watch is the stick's mount path, looked at every Interval for *.shoal
	// bundles for this device. Empty: off.
	Watch    string   `json:"watch"`
	Interval Duration `json:"interval"`
	// BundleKeys is a PEM file of bundle public keys trusted for the first
	// provisioning (baked into the OS image).
	BundleKeys string `json:"bundle_keys"`
	// TrustFirstBundle trusts, with no BundleKeys, the first bundle's own
	// keys (trust on first use). Off: such a device refuses every bundle.
	TrustFirstBundle bool `json:"trust_first_bundle"`
	// NoReceipt writes no receipt next to a bundle (a read-only stick).
	NoReceipt bool `json:"no_receipt"`
}

// ContainersConfig configures the container stage.
type ContainersConfig struct {
	// Enabled runs the container stage (the Docker Engine from DOCKER_HOST, or its socket).
	Enabled bool `json:"enabled"`
	// Prefix starts the name of every container and named volume the agent creates.
	Prefix string `json:"prefix"`
	// Parallel bounds the independent container actions run at once.
	Parallel int `json:"parallel"`
}

// TrustConfig configures the device identity and the clock check.
type TrustConfig struct {
	// TPM is the TPM to use: a device path (/dev/tpmrm0), tcp:HOST:PORT for a
	// swtpm, none for a software key, or simulator[:SEED] for the in-process
	// TPM simulator (demos and tests; only in an agent built with cgo and
	// -tags tpmsim).
	TPM string `json:"tpm"`
	// AllowSoftware falls back to a software key (flagged as weaker) when
	// the TPM path does not exist.
	AllowSoftware bool `json:"allow_software"`
}

// RepoConfig says where the fleet repo is and how to trust it.
type RepoConfig struct {
	URL          string        `json:"url"`
	Branch       string        `json:"branch"`
	Tag          string        `json:"tag"`
	Commit       string        `json:"commit"`
	Depth        int           `json:"depth"`
	SSHKey       string        `json:"ssh_key"`
	KnownHosts   string        `json:"known_hosts"`
	TokenFile    string        `json:"token_file"`
	TokenUser    string        `json:"token_user"`
	CAFile       string        `json:"ca_file"`
	AllowRewrite bool          `json:"allow_rewrite"`
	FetchTimeout Duration      `json:"fetch_timeout"`
	Signers      SignersConfig `json:"signers"`
}

// SignersConfig names the files holding the keys trusted to sign fleet commits.
type SignersConfig struct {
	OpenPGPKeyring string `json:"openpgp_keyring"`
	SSHKeys        string `json:"ssh_keys"`
}

// Duration is a time.Duration written as "30s", "5m" in the config file.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// DefaultConfig returns the config used for every field the file leaves out.
func DefaultConfig() Config {
	return Config{
		StateDir:     "/var/lib/shoal",
		Repo:         RepoConfig{Depth: 1, KnownHosts: "/etc/shoal/known_hosts", TokenUser: "git", FetchTimeout: Duration(2 * time.Minute)},
		PollInterval: Duration(5 * time.Minute),
		PollJitter:   0.2,
		RetryMin:     Duration(5 * time.Second),
		RetryMax:     Duration(5 * time.Minute),
		OutboxMax:    200,
		MetricsAddr:  "127.0.0.1:9742",
		LogFormat:    "text",
		LogLevel:     "info",
		DockerRoot:   "/var/lib/docker",
		Relays:       []string{},
		Containers:   ContainersConfig{Enabled: true, Prefix: "shoal-", Parallel: 8},
		Trust:        TrustConfig{TPM: "/dev/tpmrm0", AllowSoftware: true},
		Provision:    ProvisionConfig{Interval: Duration(5 * time.Second)},
	}
}

// DefaultsYAML is the documented default config, printed by `shoal-agent config --defaults`.
const DefaultsYAML = `# /etc/shoal/agent.yaml: the Shoal device agent's config. Every field is
# optional except repo.url; the values below are the defaults.

# This device's ID: the name of its devices/<id>.yaml in the fleet repo.
# Empty: the host name. 1-64 of a-z 0-9 . _ -
device_id: ""
# Where the agent keeps its state: repo/ (the fleet repo, bare), state.json,
# outbox/ (status reports not yet delivered), images/.
state_dir: /var/lib/shoal

repo:
  # The fleet repo: file:///path, git://host/path, ssh://user@host[:port]/path
  # or https://host/path. Credentials never go in the URL. file:// runs
  # git-upload-pack from the git package; without git on the device, use
  # bundle_dir for local copies.
  url: ""
  # Follow one of branch, tag or commit (full 40-hex id); none set: branch main.
  branch: ""
  tag: ""
  commit: ""
  # Commits fetched by the first clone; later fetches bring only what is new.
  depth: 1
  # ssh:// only: the private key, and the known_hosts file the server's host
  # key is checked against (always checked).
  ssh_key: ""
  known_hosts: /etc/shoal/known_hosts
  # https:// only: a file holding an access token, sent as the basic-auth
  # password for token_user. Never logged.
  token_file: ""
  token_user: git
  # https:// only: a PEM file of CA certificates trusted besides the
  # system's, for a fleet repo served under a private CA. The server's
  # certificate is checked by the agent's clock (NTP, and at least the
  # time of the commit applied last), not only the system clock.
  ca_file: ""
  # When the followed ref is force-pushed so that it no longer descends from
  # the applied commit: true follows it, false refuses it, keeps the applied
  # commit and reports history-rewritten.
  allow_rewrite: false
  # Limit for one fetch.
  fetch_timeout: 2m0s
  # Commit signature policy. When either file is set, only commits signed by
  # one of its keys are applied; others are refused and the last good commit
  # kept. The keys come from here, never from the fleet repo.
  signers:
    # An armored OpenPGP public keyring (gpg --armor --export KEYID).
    openpgp_keyring: ""
    # SSH public keys in authorized_keys format, one a line.
    ssh_keys: ""

# A directory watched for *.bundle files (git bundle create): each new one is
# imported as if fetched, for USB and air-gapped updates. Empty: off.
bundle_dir: ""

# Time between passes, shortened at random by up to poll_jitter of itself so
# a fleet does not fetch in lockstep. A hub poke, SIGHUP or a new bundle start
# a pass at once.
poll_interval: 5m0s
poll_jitter: 0.2
# Backoff after a failed fetch or delivery: from retry_min, doubling, up to retry_max.
retry_min: 5s
retry_max: 5m0s

# Status reports kept on disk while the hub is unreachable; past this,
# routine reports that a newer one supersedes are dropped first (counted).
outbox_max: 200

# /metrics (Prometheus), /healthz and, with pprof: true, /debug/pprof/.
# Empty: no HTTP listener. pprof is only served on a loopback address.
metrics_addr: 127.0.0.1:9742
pprof: false

# Logs to stderr: text or json; level debug, info, warn or error.
log_format: text
log_level: info

# Docker's data root, whose disk use is reported with the state dir's.
docker_root: /var/lib/docker

# The hub's base URL; empty: no hub (reports stay queued in the outbox).
# Enrol once with shoal-agent enrol --hub URL --token T.
hub_url: ""
# Site relays (shoal relay) to use before the hub, in order, as
# https://host:port. API calls go to the first that answers (back to the
# first every 5 minutes after a failover), then hub_url; the fleet repo is
# fetched from the first relay that serves it (RELAY/git/fleet.git), then
# repo.url; artifacts (releases, image tars fetched by URL) come through the
# relays' caches, else from their origin. Relays present the hub CA's
# certificates: nothing else to trust. Commit and release signatures are
# checked on the device as always.
relays: []

# Containers, through the Docker Engine (DOCKER_HOST, or /var/run/docker.sock).
containers:
  enabled: true
  # Every container the agent creates is named prefix + app name, every named
  # volume prefix + its source, so devices sharing one Engine share nothing.
  prefix: shoal-
  # Independent container actions run at once.
  parallel: 8

# A/B OS updates. Off until slot_a, slot_b and bootloader are set.
update:
  # The two slots: block devices (or files).
  slot_a: ""
  slot_b: ""
  # uboot (reads fw_env_config) or grub (reads grub_env).
  bootloader: ""
  # PEM public keys (ed25519 or ECDSA P-256) a release must be signed by.
  # From the device's provisioning, never from the fleet repo.
  trust_roots: ""
  # Also: fw_env_config (uboot, default /etc/fw_env.config), grub_env
  # (grub, default /boot/grub/grubenv), running_version (default VERSION_ID
  # of /etc/os-release), and for simulated devices reboot_command (argv run
  # instead of systemctl reboot), booted_slot_file and boot_id_file (read
  # instead of the kernel's shoal.slot= and boot_id).
  # And chunk_stores: casync chunk stores (directories, http(s) URLs) tried
  # for a delta release's chunks before the release's own store.

# Identity and time.
trust:
  # /dev/tpmrm0, tcp:HOST:PORT (swtpm), none (a software key), or
  # simulator[:SEED] (the in-process TPM simulator, for demos and tests: only
  # in an agent built with CGO_ENABLED=1 -tags tpmsim; its keys follow from
  # the seed, kept in the state dir when not given).
  tpm: /dev/tpmrm0
  # With no TPM at that path, use a software key (reported as weaker).
  allow_software: true

# Offline bundles (shoal provision create) from a USB stick.
provision:
  # The stick's mount path: every interval, each *.shoal bundle there for
  # this device and newer than the applied one is verified and applied
  # (fleet repo, images, device config, trust roots), a signed receipt is
  # written next to it for shoal receipts import, and a pass starts. A
  # queued enrolment from a bundle is sent once the hub is reachable.
  # Empty: off (shoal-agent provision apply still works).
  watch: ""
  interval: 5s
  # PEM bundle public keys (the public half of shoal keys create) trusted for the
  # first provisioning. Later bundles must be signed by the device's
  # provisioned bundle keys. With none, every bundle is refused and nothing
  # written, unless trust_first_bundle trusts the first bundle's own key.
  bundle_keys: ""
  trust_first_bundle: false
  # Write no receipt next to a bundle (a read-only stick).
  no_receipt: false
`

// LoadConfig reads the YAML config at path over the defaults and checks it.
// Every unknown or invalid field is reported, each with file:line:col.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(path, data)
}

// ErrConfigFile is the error LoadConfig and ParseConfig return for a config
// file with problems (as ConfigErrors), checked with errors.Is.
var ErrConfigFile = errors.New("invalid agent config")

// ConfigErrors is every problem found in one config file, in file order:
// unknown fields, values of the wrong type, values out of range.
type ConfigErrors []error

func (es ConfigErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Is makes ConfigErrors match ErrConfigFile.
func (es ConfigErrors) Is(target error) bool { return target == ErrConfigFile }

// Unwrap returns the problems, one by one.
func (es ConfigErrors) Unwrap() []error { return es }

// ParseConfig parses YAML config data (named name in errors) over the defaults and checks it.
func ParseConfig(name string, data []byte) (*Config, error) {
	cfg := DefaultConfig()
	f, err := spec.ExtractYAML(name, data)
	if err != nil {
		var es spec.Errors
		if errors.As(err, &es) {
			out := make(ConfigErrors, len(es))
			for i, e := range es {
				out[i] = e
			}
			return nil, out
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	v := cuecontext.New().BuildFile(f)
	if err := v.Err(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if k := v.IncompleteKind(); v.Exists() && k != cue.NullKind && k != cue.StructKind {
		return nil, ConfigErrors{fmt.Errorf("%s: want a mapping of fields at the top, found %v", name, k)}
	}
	var errs ConfigErrors
	checkFields(v, reflect.TypeOf(cfg), "", &errs)
	if len(errs) > 0 {
		return nil, errs
	}
	if v.Exists() && v.IncompleteKind() != cue.NullKind {
		b, err := v.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", name, err)
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, fmt.Errorf("config %s: %w", name, err)
		}
	}
	for _, e := range cfg.check() {
		// At the field's place in the file when the file sets it.
		where := name
		if fv := v.LookupPath(cue.ParsePath(e.field)); e.field != "" && fv.Exists() && fv.Pos().IsValid() {
			where = fv.Pos().String()
		}
		errs = append(errs, fmt.Errorf("%s: %w", where, e))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return &cfg, nil
}

// checkFields adds every field of v that t has no json tag for, and every
// value whose kind t's field cannot take, each with its position.
func checkFields(v cue.Value, t reflect.Type, prefix string, errs *ConfigErrors) {
	if v.IncompleteKind() != cue.StructKind || t.Kind() != reflect.Struct {
		return
	}
	known := map[string]reflect.Type{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		known[name] = t.Field(i).Type
	}
	it, err := v.Fields()
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s: %s: %w", v.Pos(), strings.TrimSuffix(prefix, "."), err))
		return
	}
	for it.Next() {
		sel := it.Selector().Unquoted()
		fv := it.Value()
		ft, ok := known[sel]
		if !ok {
			*errs = append(*errs, fmt.Errorf("%s: unknown field %s%s%s", fv.Pos(), prefix, sel, suggest(sel, known)))
			continue
		}
		if want := kindFor(ft); want != "" && fv.IncompleteKind() != cue.NullKind && !kindOK(fv, ft) {
			*errs = append(*errs, fmt.Errorf("%s: %s%s: want %s, found %v", fv.Pos(), prefix, sel, want, fv.IncompleteKind()))
			continue
		}
		checkFields(fv, ft, prefix+sel+".", errs)
	}
}

// kindFor names what a config field of type t takes, for messages.
func kindFor(t reflect.Type) string {
	if t == reflect.TypeOf(Duration(0)) {
		return `a duration like "30s" or "5m"`
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint64:
		return "a whole number"
	case reflect.Float64:
		return "a number"
	case reflect.Struct, reflect.Map:
		return "a mapping of fields"
	case reflect.Slice:
		return "a list"
	}
	return ""
}

func kindOK(v cue.Value, t reflect.Type) bool {
	k := v.IncompleteKind()
	if t == reflect.TypeOf(Duration(0)) {
		s, err := v.String()
		if err != nil {
			return false
		}
		_, err = time.ParseDuration(s)
		return err == nil
	}
	switch t.Kind() {
	case reflect.String:
		return k == cue.StringKind
	case reflect.Bool:
		return k == cue.BoolKind
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint64:
		return k == cue.IntKind
	case reflect.Float64:
		return k&^cue.NumberKind == 0
	case reflect.Struct, reflect.Map:
		return k == cue.StructKind
	case reflect.Slice:
		return k == cue.ListKind
	}
	return true
}

// suggest names a known field that differs from name by one or two edits.
func suggest(name string, known map[string]reflect.Type) string {
	best, bestD := "", 3
	for k := range known {
		if d := editDistance(name, k); d < bestD || (d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// fieldError is a problem with one field's value, named by its path.
type fieldError struct {
	field string
	msg   string
}

func (e *fieldError) Error() string {
	if e.field == "" {
		return e.msg
	}
	return e.field + ": " + e.msg
}

// Check validates a config and fills in the device ID from the host name.
func (c *Config) Check() error {
	var errs []error
	for _, e := range c.check() {
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

func (c *Config) check() []*fieldError {
	var errs []*fieldError
	bad := func(field, format string, args ...any) {
		errs = append(errs, &fieldError{field, fmt.Sprintf(format, args...)})
	}
	if c.DeviceID == "" {
		h, err := os.Hostname()
		if err != nil {
			bad("device_id", "empty and no host name: %v", err)
			return errs
		}
		c.DeviceID = strings.ToLower(h)
	}
	if !api.ValidDeviceID(c.DeviceID) {
		bad("device_id", "%q: want 1-64 of a-z 0-9 . _ -", c.DeviceID)
	}
	if c.StateDir == "" {
		bad("state_dir", "empty")
	}
	if c.Repo.URL == "" {
		bad("repo.url", "required (the fleet repo the device follows)")
	}
	if c.PollInterval.D() < time.Second {
		bad("poll_interval", "%v: at least 1s", c.PollInterval.D())
	}
	if c.PollJitter < 0 || c.PollJitter > 1 {
		bad("poll_jitter", "%v: want 0..1", c.PollJitter)
	}
	if c.RetryMin.D() <= 0 || c.RetryMax.D() < c.RetryMin.D() {
		bad("retry_min", "%v and retry_max %v: want 0 < retry_min <= retry_max", c.RetryMin.D(), c.RetryMax.D())
	}
	if c.Provision.Watch != "" && c.Provision.Interval.D() < 100*time.Millisecond {
		bad("provision.interval", "%v: at least 100ms", c.Provision.Interval.D())
	}
	for i, r := range c.Relays {
		u, err := url.Parse(r)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			bad("relays", "[%d] %q: want https://host[:port]", i, r)
		}
	}
	if c.OutboxMax < 1 {
		bad("outbox_max", "%d: at least 1", c.OutboxMax)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log_format", "%q: want text or json", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.Update.Bootloader {
	case "", "uboot", "grub":
	default:
		bad("update.bootloader", "%q: want uboot or grub", c.Update.Bootloader)
	}
	return errs
}
