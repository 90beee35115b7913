package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/web"
	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/internal/pprofhttp"
	"github.com/shoalfleet/shoal/source"
)

const defaultHubDB = "sqlite:///var/lib/shoal-hub/hub.db"

// newHubCmd is `shoal hub` (run the hub) with `shoal hub token create`
// (an operator token, written straight to the hub's database).
func newHubCmd() *cobra.Command {
	var (
		listen, db, caCert, caKey, tlsCert, tlsKey, logLevel string
		fleet, fleetBranch, ekRoots                          string
		fleetAuth                                            fleetAuthFlags
		hosts                                                []string
		certTTL, retention, pollWait, offlineAfter           time.Duration
		fleetRefresh                                         time.Duration
		pprofAddr                                            string
		openAccess                                           bool
	)
	cmd := &cobra.Command{
		Use:   "hub",
		Short: "Run the Shoal hub: enrolment, device status, attestation, pokes",
		Long: `shoal hub serves the device API (mutual TLS 1.3) and the operator API.

The fleet status page is served at / (sign in with an operator token from
"shoal hub token create"; --open-access skips that for loopback clients when
the hub listens on loopback only).

The database is SQLite by default (one hub) or PostgreSQL (several hubs on
one database; pokes reach devices polling any of them). Migrations run at
start. The hub CA is taken from --ca-cert/--ca-key, or from the database,
where it is created on first start. Each device's TPM counters are kept in
the database, so a quote replayed to another hub is refused.

With --fleet (a directory or a Git URL) the hub holds attestation quotes to
the fleet repo: each device's quote must cover the PCRs its rendered spec
lists under attestation.pcrs, with the values the release it claims to run
lists for them. That includes the quote a TPM device sends when it enrols,
so add the device to the fleet repo before it enrols; a device the fleet
cannot render is refused with the fleet's error. The fleet is read again
every --fleet-refresh and soon after
a poke (a Git webhook or shoal poke, on any hub of the database); a fleet
with errors is refused and the last good one kept. Without --fleet, quotes
are held only to the spec hash and release the device claims. A private
fleet repo takes the same credentials as the agent's repo config: over ssh://
--fleet-ssh-key with --fleet-known-hosts (host keys are always checked), over
https:// --fleet-token-file (the token is never taken on the command line)
and --fleet-ca for a server under a private CA. A directory must be a Git
repository (a work tree or a bare one): the hub reads its committed HEAD (or
--fleet-branch when given), never uncommitted files. The hub stops at start
if the first fetch fails.

The fleet's commits set the PCR values devices are held to, so the hub
checks their signatures with the policy devices use (repo.signers in the
agent's config): --fleet-signers-ssh and --fleet-signers-openpgp name the
same key files. A commit signed by no trusted key is refused and the last
good fleet kept. Without them the hub checks no signature, and says so in its
log at start and on the status page.

One hub serves a SQLite database: a second hub on the same file is refused
(a lock file beside it names the process holding it). Run several hubs on
PostgreSQL.

With --ek-roots (a PEM file, or a directory of PEM or DER files, holding
the CA certificates TPM makers publish: the self-signed ones are roots, the
others intermediates) a TPM enrolment must send an EK certificate that
chains to one of those roots, carries the TCG EK usage (2.23.133.8.1) and
certifies the EK the device sent, and must prove through the credential
challenge that its attestation key is in that TPM; otherwise it is refused (403 ek-untrusted,
counted in shoal_hub_enrolments_total{result="ek-untrusted"}) and the
token stays usable. Certificates padded to their NV index's size, and the
critical SAN with only a directoryName that TPM makers write, are accepted;
other encodings Go's x509 rejects are refused, naming the fault. Without
--ek-roots any TPM (or emulator) can enrol as "tpm"; each TPM enrolment logs
whether its EK had a certificate and its issuer.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := hubLogger(cmd.ErrOrStderr(), logLevel)
			if err != nil {
				return usageError{err}
			}
			if pprofAddr != "" && !pprofhttp.Loopback(pprofAddr) {
				return usageError{fmt.Errorf("--pprof %q: the profiler is served on a loopback address only (127.0.0.1:PORT or [::1]:PORT); reach it from elsewhere through ssh -L", pprofAddr)}
			}
			ctx := cmd.Context()
			o := hub.Options{Hosts: hosts, CertTTL: certTTL, Retention: retention, PollWait: pollWait, Logger: log}
			if (caCert == "") != (caKey == "") {
				return usageError{errors.New("--ca-cert and --ca-key go together")}
			}
			if caCert != "" {
				if o.CACert, err = os.ReadFile(caCert); err != nil {
					return err
				}
				if o.CAKey, err = os.ReadFile(caKey); err != nil {
					return err
				}
			}
			if (tlsCert == "") != (tlsKey == "") {
				return usageError{errors.New("--tls-cert and --tls-key go together")}
			}
			if tlsCert != "" {
				tc, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
				if err != nil {
					return fmt.Errorf("server certificate: %w", err)
				}
				o.TLSCert = &tc
			}
			unlock, err := store.HubLock(db)
			if err != nil {
				return err
			}
			defer unlock()
			st, err := store.Open(ctx, db)
			if err != nil {
				return err
			}
			defer st.Close()
			o.Store = st
			av, err := hub.NewAttestVerifier(attest.VerifierOptions{Logger: log})
			if err != nil {
				return err
			}
			av.Counters = st
			o.Verifier = av
			if ekRoots != "" {
				if o.EKRoots, err = attest.LoadEKRoots(ekRoots); err != nil {
					return fmt.Errorf("--ek-roots: %w", err)
				}
				nr, ni := o.EKRoots.Counts()
				log.Info("EK certificates checked against TPM makers' CAs", "path", ekRoots, "roots", nr, "intermediates", ni)
			}
			if fleet == "" && (fleetAuth.set() || fleetAuth.signed()) {
				return usageError{errors.New("--fleet-ssh-key, --fleet-known-hosts, --fleet-ssh-user, --fleet-token-*, --fleet-ca and --fleet-signers-* go with --fleet")}
			}
			var notices []string
			if fleet != "" {
				branch := ""
				if cmd.Flags().Changed("fleet-branch") {
					branch = fleetBranch
				}
				fp, cleanup, err := fleetPolicy(fleet, branch, fleetAuth, log)
				if err != nil {
					return err
				}
				defer cleanup()
				if !fleetAuth.signed() {
					msg := "The hub does not check the signatures of the fleet repo's commits (--fleet " + redactURL(fleet) + "): whoever can push to it sets the PCR values devices are held to. Give the hub the keys devices trust with --fleet-signers-ssh or --fleet-signers-openpgp."
					log.Warn("fleet commit signatures not checked", "fleet", redactURL(fleet), "fix", "--fleet-signers-ssh or --fleet-signers-openpgp (the files of the agent's repo.signers)")
					notices = append(notices, msg)
				}
				if err := fp.Refresh(ctx); err != nil {
					if errors.Is(err, source.ErrAuth) {
						return fmt.Errorf("%w (check --fleet-ssh-key, --fleet-known-hosts, --fleet-ssh-user or --fleet-token-file)", err)
					}
					return err
				}
				av.Policy = fp.Policy
				o.KnownDevice = fp.KnownDevice
				o.Fleet = fp
				fctx, stop := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() { defer close(done); fp.Run(fctx, st, fleetRefresh, 2*time.Second) }()
				defer func() { stop(); <-done }()
			}
			if openAccess && !pprofhttp.Loopback(listen) {
				return usageError{fmt.Errorf("--open-access needs --listen on a loopback address (127.0.0.1:PORT or [::1]:PORT), not %q", listen)}
			}
			wo := web.Options{Store: st, OpenAccess: openAccess, OfflineAfter: offlineAfter, Logger: log, Notices: notices}
			rollouts := &hubRollouts{}
			if o.Fleet != nil {
				wo.Rollouts = rollouts
			}
			if o.Web, err = web.New(wo); err != nil {
				return err
			}
			h, err := hub.New(ctx, o)
			if err != nil {
				return err
			}
			rollouts.h = h
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			if pprofAddr != "" {
				pl, err := net.Listen("tcp", pprofAddr)
				if err != nil {
					l.Close()
					return fmt.Errorf("--pprof: %w", err)
				}
				log.Warn("Go profiler served on loopback", "addr", "http://"+pl.Addr().String()+"/debug/pprof/")
				pctx, stop := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() {
					defer close(done)
					if err := pprofhttp.Serve(pctx, pl); err != nil {
						log.Error("pprof server stopped", "err", err)
					}
				}()
				defer func() { stop(); <-done }()
			}
			return h.Run(ctx, l)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", ":8443", "address to serve HTTPS on")
	f.StringVar(&db, "db", defaultHubDB, "database: sqlite:///path, or postgres://user@host/db (postgres:///db?host=/run/postgresql: a server on this host, over its Unix socket)")
	f.StringVar(&caCert, "ca-cert", "", "hub CA certificate (PEM); default: the CA in the database")
	f.StringVar(&caKey, "ca-key", "", "hub CA private key (PEM)")
	f.StringVar(&tlsCert, "tls-cert", "", "server certificate (PEM); default: issued by the hub CA for --host")
	f.StringVar(&tlsKey, "tls-key", "", "server certificate key (PEM)")
	f.StringSliceVar(&hosts, "host", nil, "names and IPs for the server certificate (default localhost, loopback and the host name)")
	f.DurationVar(&certTTL, "cert-ttl", 7*24*time.Hour, "device certificate lifetime (devices renew after two thirds)")
	f.DurationVar(&retention, "retention", 30*24*time.Hour, "keep status reports this long (each device's latest is kept)")
	f.DurationVar(&pollWait, "poll-wait", 60*time.Second, "longest long poll")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&openAccess, "open-access", false, "serve the status page to loopback clients without the operator token (only with a loopback --listen)")
	f.DurationVar(&offlineAfter, "offline-after", time.Hour, "a device that has not reported for this long shows as offline")
	f.StringVar(&fleet, "fleet", "", "fleet repo (a directory or a Git URL) whose attestation PCRs and release PCR values quotes are held to")
	f.StringVar(&fleetBranch, "fleet-branch", "main", "branch of a --fleet Git URL to follow (of a --fleet directory: its HEAD unless given)")
	f.DurationVar(&fleetRefresh, "fleet-refresh", 5*time.Minute, "read --fleet again this often (and after every poke)")
	fleetAuth.flags(cmd)
	fleetAuth.trustFlags(cmd)
	f.StringVar(&pprofAddr, "pprof", "", "serve Go's profiler (/debug/pprof/) over plain HTTP on this loopback address, e.g. 127.0.0.1:6060")
	f.StringVar(&ekRoots, "ek-roots", "", "TPM makers' CA certificates (a PEM file or a directory of PEM/DER files): a TPM enrolment needs an EK certificate chaining to them")

	tok := &cobra.Command{Use: "token", Short: "Operator tokens for the hub's operator API"}
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an operator token (printed once; only its hash is stored)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := store.Open(cmd.Context(), db)
			if err != nil {
				return err
			}
			defer st.Close()
			t, err := hub.CreateOperatorToken(cmd.Context(), st, ttl, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t)
			return nil
		},
	}
	create.Flags().StringVar(&db, "db", defaultHubDB, "the hub's database")
	create.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (0: until revoked)")
	revoke := &cobra.Command{
		Use:   "revoke TOKEN",
		Short: "Revoke an operator or enrolment token in the hub's database",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := store.Open(cmd.Context(), db)
			if err != nil {
				return err
			}
			defer st.Close()
			res, err := hub.RevokeToken(cmd.Context(), st, args[0])
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("no such token in %s: nothing revoked", redactDB(db))
			}
			if err != nil {
				return err
			}
			printRevokedToken(cmd.OutOrStdout(), res)
			return nil
		},
	}
	revoke.Flags().StringVar(&db, "db", defaultHubDB, "the hub's database")
	tok.AddCommand(create, revoke)

	dev := &cobra.Command{Use: "device", Short: "Devices enrolled with a hub (operator API)"}
	var oc opConn
	revokeDev := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a device: its certificate is refused at once",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := oc.do(cmd.Context(), "POST", "/v1/admin/devices/"+url.PathEscape(args[0])+"/revoke", nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "device %s revoked: the hub refuses its certificates from now on (to let it back, create a token and enrol it again)\n", args[0])
			return nil
		},
	}
	oc.flags(revokeDev)
	var oc2 opConn
	list := &cobra.Command{
		Use:   "list",
		Short: "List devices with their latest state",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ds []api.Device
			if err := oc2.do(cmd.Context(), "GET", "/v1/admin/devices", nil, &ds); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%-24s %-10s %-8s %-8s %s\n", "DEVICE", "STATE", "SEQ", "KEY", "LAST SEEN")
			for _, d := range ds {
				state := string(d.State)
				if d.Revoked {
					state = "revoked"
				}
				seen := "-"
				if !d.LastSeen.IsZero() {
					seen = d.LastSeen.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%-24s %-10s %-8d %-8s %s\n", d.ID, dash(state), d.LatestSeq, d.KeyKind, seen)
			}
			return nil
		},
	}
	oc2.flags(list)
	dev.AddCommand(revokeDev, list)
	cmd.AddCommand(tok, dev, newHubCACmd())
	return cmd
}

// fleetAuthFlags are the credentials and trust for a --fleet Git URL, and
// the signers of its commits, as in the agent's repo config.
type fleetAuthFlags struct {
	sshKey, knownHosts, sshUser, tokenFile, tokenUser string
	caFile                                            string
	signersSSH, signersOpenPGP                        string
}

// signed reports whether a commit signature policy is given.
func (a *fleetAuthFlags) signed() bool { return a.signersSSH != "" || a.signersOpenPGP != "" }

// trustFlags binds the hub's --fleet-ca and --fleet-signers-* flags.
func (a *fleetAuthFlags) trustFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&a.caFile, "fleet-ca", "", "CA certificates (PEM) trusted for an https:// --fleet server besides the system's (the agent's repo.ca_file)")
	f.StringVar(&a.signersSSH, "fleet-signers-ssh", "", "SSH public keys (authorized_keys format) trusted to sign --fleet commits (the agent's repo.signers.ssh_keys)")
	f.StringVar(&a.signersOpenPGP, "fleet-signers-openpgp", "", "armored OpenPGP keyring trusted to sign --fleet commits (the agent's repo.signers.openpgp_keyring)")
}

func (a *fleetAuthFlags) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&a.sshKey, "fleet-ssh-key", "", "private key for an ssh:// --fleet (needs --fleet-known-hosts)")
	f.StringVar(&a.knownHosts, "fleet-known-hosts", "", "known_hosts file the ssh:// --fleet server's host key is checked against")
	f.StringVar(&a.sshUser, "fleet-ssh-user", "", "ssh user for --fleet (default: the URL's user, else git)")
	f.StringVar(&a.tokenFile, "fleet-token-file", "", "file holding an access token for an https:// --fleet, sent as the basic-auth password")
	f.StringVar(&a.tokenUser, "fleet-token-user", "", "basic-auth user for --fleet-token-file (default git)")
}

// set reports whether a flag only a Git URL takes is given.
func (a *fleetAuthFlags) set() bool {
	return a.sshKey != "" || a.knownHosts != "" || a.sshUser != "" || a.tokenFile != "" || a.tokenUser != "" || a.caFile != ""
}

// auth reads the token file now, so a missing or empty one fails at start.
func (a *fleetAuthFlags) auth() (source.Auth, error) {
	if (a.knownHosts == "") != (a.sshKey == "") {
		return source.Auth{}, usageError{errors.New("--fleet-ssh-key and --fleet-known-hosts go together: the server's host key is always checked")}
	}
	if a.tokenUser != "" && a.tokenFile == "" {
		return source.Auth{}, usageError{errors.New("--fleet-token-user goes with --fleet-token-file")}
	}
	au := source.Auth{SSHKeyFile: a.sshKey, KnownHostsFile: a.knownHosts, SSHUser: a.sshUser, TokenUser: a.tokenUser}
	if a.tokenFile != "" {
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return source.Auth{}, fmt.Errorf("--fleet-token-file: %w", err)
		}
		if au.Token = strings.TrimSpace(string(b)); au.Token == "" {
			return source.Auth{}, fmt.Errorf("--fleet-token-file %s: empty", a.tokenFile)
		}
	}
	return au, nil
}

// fleetPolicy returns the attestation policy over the fleet at loc: the
// committed HEAD (or branch, when not "") of a Git directory, read afresh on
// each refresh, or a Git URL fetched (shallow, one branch, "main" when
// branch is "") with the credentials of af into a temporary directory that
// cleanup removes. Either way a commit must pass af's signature policy.
func fleetPolicy(loc, branch string, af fleetAuthFlags, log *slog.Logger) (*hub.FleetPolicy, func(), error) {
	sig, err := source.LoadSignaturePolicy(af.signersOpenPGP, af.signersSSH)
	if err != nil {
		return nil, nil, fmt.Errorf("--fleet-signers-*: %w", err)
	}
	if fi, err := os.Stat(loc); err == nil && fi.IsDir() {
		if af.set() {
			return nil, nil, usageError{fmt.Errorf("--fleet %s is a directory: the --fleet-ssh-*, --fleet-known-hosts, --fleet-token-* and --fleet-ca flags are for a Git URL", loc)}
		}
		rev := "HEAD"
		if branch != "" {
			rev = branch
		}
		if _, _, err := gitfs.Open(loc, rev); err != nil {
			return nil, nil, usageError{fmt.Errorf("--fleet %s: %v: a fleet directory must be a Git repository with a commit; the hub reads its committed %s, never uncommitted files", loc, err, rev)}
		}
		load := func(context.Context) (hub.FleetRevision, error) {
			fsys, hash, err := gitfs.Open(loc, rev)
			if err != nil {
				return hub.FleetRevision{}, err
			}
			if _, err := sig.Verify(fsys.Commit()); err != nil {
				return hub.FleetRevision{}, fmt.Errorf("%s of %s: %w", rev, loc, err)
			}
			return hub.FleetRevision{FS: fsys, Revision: hash, Message: fsys.Commit().Message}, nil
		}
		return &hub.FleetPolicy{Logger: log, Load: load}, func() {}, nil
	}
	if !strings.Contains(loc, "://") && !strings.Contains(loc, "@") {
		return nil, nil, usageError{fmt.Errorf("--fleet %q: not a directory or a Git URL", loc)}
	}
	auth, err := af.auth()
	if err != nil {
		return nil, nil, err
	}
	var caBundle []byte
	if af.caFile != "" {
		if caBundle, err = os.ReadFile(af.caFile); err != nil {
			return nil, nil, fmt.Errorf("--fleet-ca: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(caBundle) {
			return nil, nil, fmt.Errorf("--fleet-ca %s: no PEM certificate in it", af.caFile)
		}
	}
	if branch == "" {
		branch = "main"
	}
	dir, err := os.MkdirTemp("", "shoal-hub-fleet-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	src, err := source.New(source.Options{URL: loc, Dir: filepath.Join(dir, "repo"), Branch: branch, Auth: auth, CABundle: caBundle,
		Signatures: sig, Logger: log})
	if err != nil {
		cleanup()
		return nil, nil, usageError{fmt.Errorf("--fleet: %w", err)}
	}
	var mu sync.Mutex // a Source is not safe for concurrent use
	load := func(ctx context.Context) (hub.FleetRevision, error) {
		mu.Lock()
		defer mu.Unlock()
		rev, err := src.Fetch(ctx, "")
		if err != nil {
			return hub.FleetRevision{}, err
		}
		return hub.FleetRevision{FS: rev.FS, Revision: rev.Commit, Message: rev.Message}, nil
	}
	return &hub.FleetPolicy{Logger: log, Load: load}, cleanup, nil
}

// redactURL is a --fleet location without credentials, for logs and the page.
func redactURL(loc string) string {
	if u, err := url.Parse(loc); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return loc
}

func hubLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// newTokenCmd is `shoal token create --device ID [--ttl 24h]` (or `--relay
// ID --host NAME…`): a one-time enrolment token from the hub's operator API.
func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Enrolment tokens for devices"}
	var (
		oc      opConn
		device  string
		relayID string
		hosts   []string
		ttl     time.Duration
		asJSON  bool
	)
	create := &cobra.Command{
		Use:   "create --device ID | --relay ID --host NAME...",
		Short: "Create a one-time enrolment token for a device or a site relay",
		Long: `Create a one-time enrolment token for a device. Give the token and the CA
fingerprint to the device (provisioning does):

  shoal-agent enrol --hub URL --token TOKEN --ca-fingerprint FP

With --relay, the token enrols a site relay (shoal relay) instead, never a
device; its server certificate names each --host (the DNS names or IPs its
devices dial):

  shoal relay enrol --hub URL --token TOKEN --ca-fingerprint FP --state DIR`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, flag := device, "--device"
			if relayID != "" {
				id, flag = relayID, "--relay"
			}
			if (device == "") == (relayID == "") {
				return usageError{errors.New("--device is required (or --relay for a site relay), not both")}
			}
			if !api.ValidDeviceID(id) {
				return usageError{fmt.Errorf("%s %q: lowercase letters, digits, '.', '_', '-'; at most 64", flag, id)}
			}
			req := &api.TokenRequest{APIVersion: api.Version, DeviceID: id, TTL: ttl, Relay: relayID != "", Hosts: hosts}
			if err := req.Validate(); err != nil {
				return usageError{fmt.Errorf("--host: %w", err)}
			}
			var tr api.TokenResponse
			if err := oc.do(cmd.Context(), "POST", "/v1/admin/tokens", req, &tr); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(w).Encode(&tr)
			}
			fmt.Fprintf(w, "token:          %s\nexpires:        %s\nca-fingerprint: %s\n", tr.Token, tr.Expires.Format(time.RFC3339), tr.CAFingerprint)
			return nil
		},
	}
	oc.flags(create)
	create.Flags().StringVar(&device, "device", "", "device ID the token enrols")
	create.Flags().StringVar(&relayID, "relay", "", "site relay ID the token enrols (instead of a device)")
	create.Flags().StringSliceVar(&hosts, "host", nil, "with --relay: a DNS name or IP its server certificate names (repeatable)")
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token stays usable")
	create.Flags().BoolVar(&asJSON, "json", false, "print the token response as JSON")
	var oc2 opConn
	revoke := &cobra.Command{
		Use:   "revoke TOKEN",
		Short: "Revoke an unused enrolment token",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res api.TokenRevokeResult
			if err := oc2.do(cmd.Context(), "POST", "/v1/admin/tokens/revoke", &api.TokenRevokeRequest{APIVersion: api.Version, Token: args[0]}, &res); err != nil {
				return err
			}
			printRevokedToken(cmd.OutOrStdout(), res)
			return nil
		},
	}
	oc2.flags(revoke)
	cmd.AddCommand(create, revoke)
	return cmd
}

// newPokeCmd is `shoal poke [--group G] [--device ID]… [--commit C]`: tell
// devices to fetch now.
func newPokeCmd() *cobra.Command {
	var (
		oc      opConn
		group   string
		devices []string
		commit  string
	)
	cmd := &cobra.Command{
		Use:   "poke",
		Short: "Tell devices (all, a group, or some) to fetch the fleet repo now",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &api.PokeRequest{APIVersion: api.Version, Group: group, Devices: devices, Commit: commit, Reason: "operator"}
			if err := req.Validate(); err != nil {
				return usageError{err}
			}
			var res api.PokeResult
			if err := oc.do(cmd.Context(), "POST", "/v1/admin/pokes", req, &res); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "poke %d sent to %d device(s)\n", res.ID, res.Devices)
			return nil
		},
	}
	oc.flags(cmd)
	cmd.Flags().StringVar(&group, "group", "", "only devices in this fleet group")
	cmd.Flags().StringSliceVar(&devices, "device", nil, "only these devices (repeatable)")
	cmd.Flags().StringVar(&commit, "commit", "", "the commit to announce")
	return cmd
}

// printRevokedToken confirms a token revocation: which token it was and
// what revoking it did.
func printRevokedToken(w io.Writer, r api.TokenRevokeResult) {
	switch {
	case r.Kind == "operator":
		fmt.Fprintln(w, "operator token revoked: the hub refuses it from now on")
	case !r.Used.IsZero():
		fmt.Fprintf(w, "%s token for %s revoked; it had already been used at %s, so %s stays enrolled (revoke it with shoal hub device revoke %s)\n",
			r.Kind, r.DeviceID, r.Used.UTC().Format(time.RFC3339), r.DeviceID, r.DeviceID)
	default:
		fmt.Fprintf(w, "%s token for %s revoked: unused, it can no longer enrol (it would have expired %s)\n", r.Kind, r.DeviceID, r.Expires.UTC().Format(time.RFC3339))
	}
}

// redactDB is a --db URL without its password, for messages.
func redactDB(db string) string {
	u, err := url.Parse(db)
	if err != nil {
		return "the database"
	}
	return u.Redacted()
}

// opConn is the operator's connection to a hub: URL, token, and how to trust it.
type opConn struct {
	hubURL, tokenFile, caFile, caFingerprint string
}

func (o *opConn) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.hubURL, "hub", os.Getenv("SHOAL_HUB"), "hub URL, e.g. https://hub:8443 (env SHOAL_HUB)")
	f.StringVar(&o.tokenFile, "token-file", os.Getenv("SHOAL_OPERATOR_TOKEN_FILE"), "file holding the operator token (env SHOAL_OPERATOR_TOKEN_FILE; or set SHOAL_OPERATOR_TOKEN)")
	f.StringVar(&o.caFile, "ca", os.Getenv("SHOAL_HUB_CA"), "hub CA certificate (PEM) to trust (env SHOAL_HUB_CA)")
	f.StringVar(&o.caFingerprint, "ca-fingerprint", os.Getenv("SHOAL_HUB_CA_FINGERPRINT"), "sha256 of the hub CA to trust instead of --ca (env SHOAL_HUB_CA_FINGERPRINT)")
}

func (o *opConn) client() (*http.Client, *url.URL, string, error) {
	if o.hubURL == "" {
		return nil, nil, "", usageError{errors.New("--hub (or SHOAL_HUB) is required")}
	}
	u, err := url.Parse(strings.TrimRight(o.hubURL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, nil, "", usageError{fmt.Errorf("--hub %q: want https://host[:port]", o.hubURL)}
	}
	tok := os.Getenv("SHOAL_OPERATOR_TOKEN")
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, nil, "", fmt.Errorf("operator token: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return nil, nil, "", usageError{errors.New("an operator token is required: --token-file or SHOAL_OPERATOR_TOKEN (make one with `shoal hub token create`)")}
	}
	tc, err := o.tlsConfig(u.Hostname())
	if err != nil {
		return nil, nil, "", err
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment}}
	return hc, u, tok, nil
}

// tlsConfig trusts the hub by --ca, by --ca-fingerprint, or else by the
// system's roots (a hub behind a certificate from a public CA).
func (o *opConn) tlsConfig(serverName string) (*tls.Config, error) {
	switch {
	case o.caFile != "":
		b, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		tc := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: serverName, RootCAs: x509.NewCertPool()}
		if !tc.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate", o.caFile)
		}
		return tc, nil
	case o.caFingerprint != "":
		tc, err := client.PinnedTLS(serverName, o.caFingerprint, nil)
		if err != nil {
			return nil, usageError{fmt.Errorf("--ca-fingerprint: want %w", err)}
		}
		return tc, nil
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, ServerName: serverName}, nil
}

// trustHint explains a failed TLS check of the hub's certificate: how to
// trust the hub's CA, or which name to give the hub. Other errors pass.
func (o *opConn) trustHint(err error) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		verify   *tls.CertificateVerificationError
	)
	how := `Trust the hub's CA with --ca FILE (env SHOAL_HUB_CA) or --ca-fingerprint SHA256 (env
SHOAL_HUB_CA_FINGERPRINT). On the hub's host, "shoal hub ca --db DB" prints the CA (PEM, on
stdout) and its sha256 fingerprint; the hub also logs the fingerprint at start ("ca" in its
"hub listening" line). With the fingerprint alone, "shoal hub ca --hub URL --ca-fingerprint
SHA256 --out hub-ca.pem" fetches the CA from the hub and checks it.`
	switch {
	case errors.As(err, &hostname):
		return fmt.Errorf("%w\nThe hub's certificate does not name %q: start the hub with --host %s (its server certificate names each --host), or use a --hub URL with a name it has", err, hostname.Host, hostname.Host)
	case errors.Is(err, client.ErrPinnedCA):
		return fmt.Errorf("%w\nThe hub's CA is not the one --ca-fingerprint pins: check the fingerprint against \"shoal hub ca --db DB --fingerprint\" on the hub's host", err)
	case errors.As(err, &unknown), errors.As(err, &verify) && o.caFile != "":
		if o.caFile != "" {
			return fmt.Errorf("%w\nThe hub's certificate does not chain to --ca %s: is that this hub's CA?\n%s", err, o.caFile, how)
		}
		return fmt.Errorf("%w\nThis machine does not trust the hub's CA (a hub makes its own CA on first start).\n%s", err, how)
	}
	return err
}

func (o *opConn) do(ctx context.Context, method, path string, in, out any) error {
	hc, u, tok, err := o.client()
	if err != nil {
		return err
	}
	defer hc.CloseIdleConnections()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String()+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return o.trustHint(fmt.Errorf("hub: %w", err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if resp.StatusCode >= 400 {
		var ae api.Error
		if json.Unmarshal(b, &ae) == nil && ae.Reason != "" {
			return &ae
		}
		return fmt.Errorf("hub: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("hub: decode response: %w", err)
		}
	}
	return nil
}

// hubRollouts hands the status page, built before the hub, the hub's rollouts.
type hubRollouts struct{ h *hub.Hub }

func (r *hubRollouts) RolloutView(ctx context.Context, commit string, devices bool) (api.RolloutView, error) {
	return r.h.RolloutView(ctx, commit, devices)
}

func (r *hubRollouts) RolloutAct(ctx context.Context, a api.RolloutAction) (api.RolloutView, error) {
	return r.h.RolloutAct(ctx, a)
}
