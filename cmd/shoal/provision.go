package main

import (
	"bufio"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/docker/client"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shoalfleet/shoal/provision"
	"github.com/shoalfleet/shoal/updater/delta"
)

// newProvisionCmd is `shoal provision`: make and inspect offline bundles.
func newProvisionCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "provision",
		Short: "Make and inspect offline bundles for USB provisioning and air-gapped updates",
		Long: `provision makes one file that provisions a device, or updates one, with no
network: a signed manifest, a git bundle of the fleet repo at one commit, the
image tars the device's apps need, and optionally the OS release image. The
device applies it with ` + "`shoal-agent provision apply`" + `.`,
	}
	cmd.AddCommand(newProvisionCreateCmd(), newProvisionInspectCmd())
	return cmd
}

func newProvisionCreateCmd() *cobra.Command {
	var (
		o                                             provision.CreateOptions
		out, keyFile, releaseKeys, signers, tokenFile string
		hardwareFile                                  string
		token                                         string
		deltaFrom                                     []string
		extraKeys                                     []string
		noDocker                                      bool
	)
	cmd := &cobra.Command{
		Use:   "create --device ID|--group G --out FILE",
		Short: "Write a signed bundle for one device or a group",
		Long: `create writes a bundle for --device (repeatable) or every device of --group,
at --rev of the fleet repo checkout --fleet, signed with the bundle key --key
(make one with ` + "`shoal keys create`" + `).

Images: tars of apps whose image has a url source come from --image-dir
(<sha256>.tar); images pinned by digest are saved from the local Docker
Engine. --release adds the devices' OS release image; with --delta-index it
adds the release's delta instead: its chunk index and, from --delta-store,
only the chunks the devices lack (those not in the --delta-from indexes of
the releases they run), which the device rebuilds the image from with its
running slot.

The bundle carries enrolment tokens in the clear (it is signed, not
encrypted): keep the stick like a password.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{errors.New("--out is required")}
			}
			if len(o.Devices) == 0 && o.Group == "" {
				return usageError{errors.New("give --device or --group")}
			}
			var err error
			if o.Key, err = provision.ReadPrivateKey(keyFile); err != nil {
				return err
			}
			for _, f := range extraKeys {
				ks, err := provision.ReadPublicKeys(f)
				if err != nil {
					return err
				}
				o.BundleKeys = append(o.BundleKeys, ks...)
			}
			if o.ReleaseKeys, err = readOptional(releaseKeys); err != nil {
				return err
			}
			if o.CommitSigners, err = readOptional(signers); err != nil {
				return err
			}
			if o.Tokens, err = readTokens(tokenFile); err != nil {
				return err
			}
			if o.Hardware, err = readPairs(hardwareFile, "hardware-id device-id"); err != nil {
				return err
			}
			if token != "" {
				if len(o.Devices) != 1 {
					return usageError{errors.New("--token needs exactly one --device; use --tokens FILE for more")}
				}
				o.Tokens[o.Devices[0]] = token
			}
			if !noDocker {
				cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
				if err != nil {
					return fmt.Errorf("docker: %w", err)
				}
				defer cli.Close()
				o.Images = cli
			}
			if term.IsTerminal(int(os.Stderr.Fd())) {
				var bar *progressbar.ProgressBar
				o.Progress = func(done, total int64) {
					if bar == nil {
						bar = progressbar.DefaultBytes(total, "writing bundle")
					}
					bar.Set64(done)
				}
			}
			if o.DeltaIndex != "" {
				if !o.Release || o.DeltaStore == "" {
					return usageError{errors.New("--delta-index needs --release and --delta-store")}
				}
				if o.DeltaChunks, err = lackingChunks(o.DeltaIndex, deltaFrom); err != nil {
					return err
				}
			}
			o.TempDir = filepath.Dir(out)
			return writeBundle(cmd, out, o)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Devices, "device", nil, "device ID to provision (repeatable)")
	f.StringVar(&o.Group, "group", "", "provision every device of this fleet group")
	f.StringVar(&o.FleetDir, "fleet", ".", "fleet repo checkout")
	f.StringVar(&o.Rev, "rev", "HEAD", "commit, branch or tag to carry")
	f.StringVar(&o.Ref, "ref", "refs/heads/main", "ref the device follows")
	f.StringVar(&out, "out", "", "bundle file to write")
	f.StringVar(&keyFile, "key", os.Getenv("SHOAL_BUNDLE_KEY"), "bundle signing key (env SHOAL_BUNDLE_KEY)")
	f.StringSliceVar(&extraKeys, "bundle-key", nil, "further bundle public key (PEM) the devices will trust, for key rotation (repeatable)")
	f.StringVar(&releaseKeys, "release-keys", "", "PEM public keys OS releases must be signed by (trust root)")
	f.StringVar(&signers, "commit-signers", "", "authorized_keys file of keys fleet commits must be signed by (trust root)")
	f.StringVar(&o.HubURL, "hub", os.Getenv("SHOAL_HUB"), "hub URL the devices enrol with (env SHOAL_HUB)")
	f.StringVar(&o.HubCA, "hub-ca-fingerprint", "", "hex sha256 of the hub CA certificate (printed by shoal token create): devices pin the hub by it when they enrol")
	f.StringVar(&o.RepoURL, "repo-url", "", "fleet repo URL the devices fetch from when online")
	f.StringVar(&token, "token", "", "enrolment token for the one --device")
	f.StringVar(&tokenFile, "tokens", "", "file of `device-id token` lines")
	f.StringVar(&hardwareFile, "hardware", "", "file of `hardware-id device-id` lines: how each device of a group bundle finds its ID")
	f.BoolVar(&o.Release, "release", false, "add the devices' OS release image")
	f.StringVar(&o.ReleaseFile, "release-file", "", "the release image, when its url is not a file")
	f.StringVar(&o.DeltaIndex, "delta-index", "", "with --release: carry the release's delta, this chunk index (its sha256 is the release's), instead of the image")
	f.StringVar(&o.DeltaStore, "delta-store", "", "the chunk store directory holding the release's chunks")
	f.StringSliceVar(&deltaFrom, "delta-from", nil, "chunk index of a release the devices run: its chunks are left out (repeatable)")
	f.StringVar(&o.ImageDir, "image-dir", "", "directory of <sha256>.tar image tars for url-sourced images")
	f.BoolVar(&noDocker, "no-docker", false, "do not save images from the local Docker Engine")
	return cmd
}

// writeBundle writes to a temp file beside out and renames it, so a stick
// pulled out mid-write never holds a bundle that looks whole.
func writeBundle(cmd *cobra.Command, out string, o provision.CreateOptions) error {
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriterSize(tmp, 1<<20)
	m, err := provision.Create(cmd.Context(), w, o)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %d members, commit %s, devices %s\n", out, len(m.Members), m.Commit, strings.Join(m.Devices, ", "))
	return nil
}

func readOptional(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	b, err := os.ReadFile(p)
	return string(b), err
}

func readTokens(p string) (map[string]string, error) { return readPairs(p, "device-id token") }

// readPairs reads `key value` lines; blank lines and # comments are skipped.
func readPairs(p, what string) (map[string]string, error) {
	out := map[string]string{}
	if p == "" {
		return out, nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	for i, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		id, tok, ok := strings.Cut(l, " ")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want `%s`", p, i+1, what)
		}
		out[id] = strings.TrimSpace(tok)
	}
	return out, nil
}

func newProvisionInspectCmd() *cobra.Command {
	var keys []string
	cmd := &cobra.Command{
		Use:   "inspect PATH",
		Short: "Print what a bundle holds and whether it verifies, without applying it",
		Long: `inspect reads the whole bundle, checking the manifest signature (against
--key public keys when given, else against the keys the bundle installs) and
every member's size and sha256. Exit code 1 when it does not verify.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{errors.New("inspect takes one bundle file")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var trusted []ed25519.PublicKey
			for _, k := range keys {
				ks, err := provision.ReadPublicKeys(k)
				if err != nil {
					return err
				}
				trusted = append(trusted, ks...)
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			br, err := provision.Verify(cmd.Context(), bufio.NewReaderSize(f, 1<<20), trusted)
			if br != nil {
				printManifest(cmd.OutOrStdout(), br)
			}
			if err != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "verify: FAILED (%s): %v\n", provision.Reason(err), err)
				return silentError{exitInvalid}
			}
			fmt.Fprintln(cmd.OutOrStdout(), "verify: ok (signature and every member)")
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&keys, "key", nil, "bundle public key (PEM) to trust (repeatable)")
	return cmd
}

func printManifest(w io.Writer, br *provision.Reader) {
	m := br.Manifest
	fmt.Fprintf(w, "bundle   %s\nsigned   by key %s\ncreated  %s (seq %d)\ndevices  %s\n", br.Hash, provision.KeyID(br.Key), m.Created.Format("2006-01-02T15:04:05Z"), m.Seq, strings.Join(m.Devices, ", "))
	if m.Group != "" {
		fmt.Fprintf(w, "group    %s\n", m.Group)
	}
	fmt.Fprintf(w, "commit   %s (%s)\n", m.Commit, m.Ref)
	if m.HubURL != "" {
		fmt.Fprintf(w, "hub      %s (%d enrolment tokens)\n", m.HubURL, len(m.Tokens))
	}
	if m.Release != nil {
		fmt.Fprintf(w, "release  %s %s\n", m.Release.Name, m.Release.Version)
	}
	fmt.Fprintf(w, "trust    %d bundle keys, release keys: %t, commit signers: %t\n", len(m.Trust.BundleKeys), m.Trust.ReleaseKeys != "", m.Trust.CommitSigners != "")
	fmt.Fprintln(w, "members:")
	for _, mem := range m.Members {
		fmt.Fprintf(w, "  %-8s %12d  %s  %s", mem.Kind, mem.Size, mem.SHA256[:16], mem.Name)
		if len(mem.Refs) > 0 {
			fmt.Fprintf(w, "  (%s)", strings.Join(mem.Refs, ", "))
		}
		fmt.Fprintln(w)
	}
}

// newKeysCmd is `shoal keys`: the operator's bundle signing keys.
func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Bundle signing keys"}
	cmd.AddCommand(&cobra.Command{
		Use:   "create FILE",
		Short: "Make an ed25519 bundle key: FILE (private, 0600) and FILE.pub",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{errors.New("keys create takes one FILE")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := provision.GenerateKey()
			if err != nil {
				return err
			}
			if err := provision.WriteKeyPair(args[0], k); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "bundle key %s written to %s and %s.pub\n", provision.KeyID(k.Public().(ed25519.PublicKey)), args[0], args[0])
			return nil
		},
	})
	return cmd
}

// lackingChunks lists the chunk files (store paths) of the index at path
// that none of the indexes in from has.
func lackingChunks(path string, from []string) ([]string, error) {
	read := func(p string) (*delta.Index, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		x, err := delta.ParseIndex(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return x, nil
	}
	x, err := read(path)
	if err != nil {
		return nil, err
	}
	have := map[delta.ID]bool{}
	for _, p := range from {
		fx, err := read(p)
		if err != nil {
			return nil, err
		}
		if fx.Digest() != x.Digest() {
			return nil, fmt.Errorf("%s: %s chunk IDs, %s has %s ones", p, fx.Digest(), path, x.Digest())
		}
		for _, c := range fx.Chunks {
			have[c.ID] = true
		}
	}
	var out []string
	for _, c := range x.Chunks {
		if !have[c.ID] {
			have[c.ID] = true
			out = append(out, delta.ChunkPath(c.ID))
		}
	}
	return out, nil
}
