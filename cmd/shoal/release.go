package main

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing/fstest"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

func newReleaseCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Work on OS release files",
	}
	cmd.AddCommand(newReleaseSignCmd(), newReleaseDeltaCmd())
	return cmd
}

var signatureLine = regexp.MustCompile(`(?m)^(\s*signature:\s*).*$`)

func newReleaseSignCmd() *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "sign --key KEY.pem releases/NAME.yaml",
		Short: "Sign a release file in place",
		Long: `sign computes the signature of a release file (version, min_version, size,
sha256, chunks, built and pcrs: what a device trusts) with a private key
(PEM, PKCS #8, ed25519 or ECDSA P-256) and writes it into the file's
signature field. Devices verify it against the release keys in their config
before a byte is written to a slot. The url is not signed: a release may move
to a mirror or a USB stick.

Exit codes: 0 signed, 1 invalid release or key, 2 usage error.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyFile == "" {
				return usageError{errors.New("--key is required")}
			}
			key, err := readSigner(keyFile)
			if err != nil {
				return err
			}
			rel, err := signReleaseFile(cmd, args[0], key)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "signed %s (version %s)\n", args[0], rel.Version)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "private key, PEM (PKCS #8)")
	return cmd
}

// signReleaseFile signs the release file at path in place with key.
func signReleaseFile(cmd *cobra.Command, path string, key crypto.Signer) (*spec.Release, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !signatureLine.Match(data) {
		// The schema requires the field; add a placeholder for the loader.
		data = append(data, []byte("\nsignature: unsigned\n")...)
	}
	rel, err := loadReleaseFile(cmd, path, data)
	if err != nil {
		return nil, err
	}
	sig, err := updater.SignRelease(rel, key)
	if err != nil {
		return nil, err
	}
	out := signatureLine.ReplaceAll(data, []byte("${1}"+sig))
	if err := atomicfile.WriteFile(path, out, 0o644); err != nil {
		return nil, err
	}
	return rel, nil
}

// loadReleaseFile checks a release file's data against the schema, printing
// its errors, and returns the release.
func loadReleaseFile(cmd *cobra.Command, path string, data []byte) (*spec.Release, error) {
	base := filepath.Base(path)
	name := strings.TrimSuffix(base, filepath.Ext(base))
	f, err := spec.Load(fstest.MapFS{"releases/" + base: {Data: data}})
	if err != nil {
		printErrors(cmd.ErrOrStderr(), err)
		return nil, silentError{exitInvalid}
	}
	return f.Release(name), nil
}

// readSigner reads a PKCS #8 PEM private key usable for signing.
func readSigner(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: key of type %T cannot sign", path, k)
	}
	return s, nil
}
