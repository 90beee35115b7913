package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/internal/version"
	"github.com/shoalfleet/shoal/provision"
	"github.com/shoalfleet/shoal/relay"
)

// newRelayCmd is `shoal relay enrol|run|import`: the site tier.
func newRelayCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run a site relay: fleet repo mirror, artifact cache, report store-and-forward, MQTT",
		Long: `A site relay is a small server at a site that the site's devices talk to as
they would to the hub (the same API and mutual TLS) and that talks to the hub
for them: it mirrors the fleet repo, caches artifacts by sha256, holds
status reports on disk and forwards them in order, passes pokes on, and
publishes devices' status to the site's MQTT broker.

  shoal token create --relay site-a --host relay-a.site.example   (on the hub's side)
  shoal relay enrol --hub URL --token T --ca-fingerprint FP --state /var/lib/shoal-relay
  shoal relay run --hub URL --state /var/lib/shoal-relay --fleet REPO-URL

Devices name the relay in their config (relays: [https://relay-a.site.example:8443]).`,
	}
	cmd.AddCommand(newRelayEnrolCmd(), newRelayRunCmd(), newRelayImportCmd())
	return cmd
}

func newRelayEnrolCmd() *cobra.Command {
	var hubURL, token, tokenFile, fp, state string
	cmd := &cobra.Command{
		Use:   "enrol --hub URL --token T --ca-fingerprint FP --state DIR",
		Short: "Enrol this relay with the hub, once, with a relay token",
		Long: `Enrol this relay with the hub with a one-time relay token (shoal token create
--relay ID --host NAME). The relay's key is made in DIR/identity (kept when
one exists) and its certificate, issued by the hub for the token's hosts,
is kept beside it. The hub is trusted by its CA's fingerprint, which the
token response gives.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if hubURL == "" || state == "" || fp == "" {
				return usageError{errors.New("--hub, --ca-fingerprint and --state are required")}
			}
			if (token == "") == (tokenFile == "") {
				return usageError{errors.New("give one of --token and --token-file")}
			}
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("--token-file: %w", err)
				}
				token = string(trimSpace(b))
			}
			id, err := relay.Enrol(cmd.Context(), state, relay.EnrolOptions{Hub: hubURL, Token: token, CAFingerprint: fp})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "relay %s enrolled; its certificate is in %s\n", id, filepath.Join(state, "identity"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&hubURL, "hub", "", "the hub's base URL (https://host:port)")
	f.StringVar(&token, "token", "", "the relay token")
	f.StringVar(&tokenFile, "token-file", "", "a file holding the relay token (instead of --token)")
	f.StringVar(&fp, "ca-fingerprint", "", "hex sha256 of the hub CA certificate (from shoal token create)")
	f.StringVar(&state, "state", "", "the relay's state directory")
	return cmd
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func newRelayRunCmd() *cobra.Command {
	var (
		hubURL, state, listen, metricsAddr, logLevel string
		fleet, branch                                string
		fleetAuth                                    fleetAuthFlags
		interval, statusEvery, pollWait, scrub       time.Duration
		cacheSize                                    string
		mq                                           relay.MQTTOptions
	)
	cmd := &cobra.Command{
		Use:   "run --hub URL --state DIR [--fleet URL]",
		Short: "Serve the site's devices and forward to the hub",
		Long: `Serve the site's devices on --listen (mutual TLS with the certificate the
hub issued at enrolment; devices' certificates are checked against the hub
CA) and talk to the hub for them:

- status reports are written to DIR/outbox before the device is answered,
  and forwarded to the hub in order, with the devices' own sequence
  numbers, once it is reachable (shoal_relay_backlog_reports);
- every other device request (enrolment, attestation, renewal, whatever the
  hub adds) is forwarded with the device's certificate; while the hub is
  unreachable the device is told to retry (503 upstream-unavailable), and
  nonces always come from the hub;
- with --fleet, the fleet repo is mirrored (at start, every
  --fleet-interval and on each hub poke) and served read-only at
  https://RELAY/git/fleet.git; devices check commit signatures themselves;
- artifacts the mirrored fleet repo names (releases, image tars by URL) are
  fetched once, stored by sha256 in DIR/cache, verified, and served with
  Range requests at /v1/artifacts; --cache-size bounds the cache (least
  recently used go first, never one being fetched or served);
- the hub's pokes reach the relay's devices once the mirror has the new commit;
- with --mqtt, each device's status is published retained (QoS 1) to
  TOPIC/devices/ID/status and its changes to TOPIC/devices/ID/events.

/healthz and /metrics are served on --listen, and on --metrics-addr (plain HTTP,
those two alone) when set.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if hubURL == "" || state == "" {
				return usageError{errors.New("--hub and --state are required")}
			}
			limit, err := parseSize(cacheSize)
			if err != nil {
				return usageError{fmt.Errorf("--cache-size: %w", err)}
			}
			if fleetAuth.set() && fleet == "" {
				return usageError{errors.New("--fleet-ssh-key, --fleet-token-file and the like go with --fleet")}
			}
			if (fleetAuth.knownHosts == "") != (fleetAuth.sshKey == "") {
				return usageError{errors.New("--fleet-ssh-key and --fleet-known-hosts go together: the server's host key is always checked")}
			}
			log, err := hubLogger(cmd.ErrOrStderr(), logLevel)
			if err != nil {
				return usageError{err}
			}
			r, err := relay.New(relay.Options{
				StateDir: state, Hub: hubURL,
				Mirror: relay.MirrorOptions{URL: fleet, Branch: branch, Interval: interval,
					SSHKey: fleetAuth.sshKey, KnownHosts: fleetAuth.knownHosts, TokenFile: fleetAuth.tokenFile, TokenUser: fleetAuth.tokenUser},
				CacheLimit: limit, ScrubInterval: scrub, StatusInterval: statusEvery, PollWait: pollWait,
				MQTT: mq, Version: version.String(), Logger: log,
			})
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				r.Close()
				return fmt.Errorf("--listen: %w", err)
			}
			if metricsAddr != "" {
				ml, err := net.Listen("tcp", metricsAddr)
				if err != nil {
					r.Close()
					return fmt.Errorf("--metrics-addr: %w", err)
				}
				msrv := &http.Server{Handler: r.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
				go msrv.Serve(ml)
				defer msrv.Close()
			}
			return r.Run(cmd.Context(), l)
		},
	}
	f := cmd.Flags()
	f.StringVar(&hubURL, "hub", "", "the hub's base URL (https://host:port)")
	f.StringVar(&state, "state", "", "the relay's state directory (as given to shoal relay enrol)")
	f.StringVar(&listen, "listen", ":8443", "address devices connect to (mutual TLS)")
	f.StringVar(&metricsAddr, "metrics-addr", "", "also serve /metrics and /healthz over plain HTTP here (e.g. 127.0.0.1:9743)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error (JSON logs on stderr)")
	f.StringVar(&fleet, "fleet", "", "the fleet repo to mirror for the site's devices (any URL git understands)")
	f.StringVar(&branch, "fleet-branch", "main", "the branch devices follow (shown in the relay's status)")
	fleetAuth.flags(cmd)
	f.DurationVar(&interval, "fleet-interval", 5*time.Minute, "time between fetches of --fleet when no poke comes")
	f.StringVar(&cacheSize, "cache-size", "20GiB", "artifact cache limit (bytes, or with KiB, MiB, GiB, TiB)")
	f.DurationVar(&scrub, "scrub-interval", 24*time.Hour, "how often every cached artifact is hashed again")
	f.DurationVar(&statusEvery, "status-interval", 30*time.Second, "how often the relay reports its health to the hub")
	f.DurationVar(&pollWait, "poll-wait", 55*time.Second, "longest long poll, the devices' and the relay's own")
	f.StringVar(&mq.Broker, "mqtt", "", "publish devices' status and events to this MQTT broker (tcp://host:1883, ssl://…)")
	f.StringVar(&mq.Topic, "mqtt-topic", "shoal", "MQTT topic prefix")
	f.StringVar(&mq.Username, "mqtt-user", "", "MQTT user name")
	f.StringVar(&mq.PasswordFile, "mqtt-password-file", "", "a file holding the MQTT password")
	return cmd
}

// parseSize reads 123, 10GiB, 512MiB, 4KiB or 1TiB.
func parseSize(s string) (int64, error) {
	var n int64
	var unit string
	if _, err := fmt.Sscanf(s, "%d%s", &n, &unit); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return 0, fmt.Errorf("%q: want a number of bytes, or with KiB, MiB, GiB or TiB", s)
	}
	mult := map[string]int64{"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[unit]
	if mult == 0 || n <= 0 {
		return 0, fmt.Errorf("%q: want a positive number of bytes, or with KiB, MiB, GiB or TiB", s)
	}
	return n * mult, nil
}

func newRelayImportCmd() *cobra.Command {
	var state, keys, fleet, branch string
	cmd := &cobra.Command{
		Use:   "import BUNDLE --state DIR --bundle-keys FILE",
		Short: "Update a site from a USB bundle: the fleet repo and artifacts, for every device",
		Long: `Import a bundle (shoal provision create) into the relay at DIR: the bundle's
signature is checked against --bundle-keys, its git bundle is fetched into
the relay's fleet repo mirror and its images and release into the artifact
cache (each checked against its sha256). A running relay notices within
seconds and pokes all its devices, which fetch the new commit and its
artifacts from it: a site with no uplink is updated from one stick.
Devices still check commit signatures and release signatures themselves.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if state == "" || keys == "" {
				return usageError{errors.New("--state and --bundle-keys are required")}
			}
			trusted, err := provision.ReadPublicKeys(keys)
			if err != nil {
				return usageError{fmt.Errorf("--bundle-keys: %w", err)}
			}
			return importBundle(cmd, args[0], state, fleet, branch, trusted)
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "the relay's state directory")
	f.StringVar(&keys, "bundle-keys", "", "PEM file of the bundle public keys trusted to sign bundles")
	f.StringVar(&fleet, "fleet", "", "the relay's --fleet URL (for a mirror the import creates)")
	f.StringVar(&branch, "fleet-branch", "main", "the relay's --fleet-branch")
	return cmd
}

func importBundle(cmd *cobra.Command, path, state, fleet, branch string, trusted []ed25519.PublicKey) error {
	ctx := cmd.Context()
	im, err := relay.NewImporter(state, fleet, branch)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br, err := provision.NewReader(f, trusted)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", path, err)
	}
	tmp, err := os.MkdirTemp(state, ".import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	arts := 0
	for {
		m, mr, err := br.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("bundle %s: %w", path, err)
		}
		switch m.Kind {
		case provision.KindGit:
			gb := filepath.Join(tmp, "fleet.bundle")
			if err := writeAll(gb, mr); err != nil {
				return fmt.Errorf("bundle %s: %s: %w", path, m.Name, err)
			}
			if err := im.Git(ctx, gb); err != nil {
				return err
			}
		case provision.KindImage, provision.KindRelease:
			if err := im.Artifact(mr, m.SHA256); err != nil {
				return fmt.Errorf("bundle %s: %s: %w", path, m.Name, err)
			}
			arts++
		}
	}
	commit, err := im.Done()
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "imported bundle %s: fleet commit %s, %d artifact(s)\n", br.Hash[:12], commit, arts)
	return nil
}

func writeAll(p string, r io.Reader) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
