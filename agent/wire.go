package agent

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/shoalfleet/shoal/source"
)

// SourceFromConfig builds the fleet repo source the config describes, with
// the repo kept in the state dir's repo/. Secret and key files are read now,
// so a missing one fails at start.
func SourceFromConfig(cfg *Config, log *slog.Logger) (*source.Source, error) {
	rc := cfg.Repo
	o := source.Options{
		URL: rc.URL, Dir: filepath.Join(cfg.StateDir, "repo"),
		Branch: rc.Branch, Tag: rc.Tag, Commit: rc.Commit, Depth: rc.Depth,
		AllowRewrite: rc.AllowRewrite, Timeout: rc.FetchTimeout.D(), Logger: log,
		Auth: source.Auth{SSHKeyFile: rc.SSHKey, KnownHostsFile: rc.KnownHosts, TokenUser: rc.TokenUser},
	}
	if rc.SSHKey == "" {
		o.Auth.KnownHostsFile = ""
	}
	for _, r := range cfg.Relays {
		o.Mirrors = append(o.Mirrors, strings.TrimRight(r, "/")+"/git/fleet.git")
	}
	if rc.TokenFile != "" {
		b, err := os.ReadFile(rc.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("repo.token_file: %w", err)
		}
		o.Auth.Token = strings.TrimSpace(string(b))
	}
	if rc.CAFile != "" {
		b, err := os.ReadFile(rc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("repo.ca_file: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("repo.ca_file %s: no PEM certificate in it", rc.CAFile)
		}
		o.CABundle = b
	}
	sig, err := source.LoadSignaturePolicy(rc.Signers.OpenPGPKeyring, rc.Signers.SSHKeys)
	if err != nil {
		return nil, fmt.Errorf("repo.signers: %w", err)
	}
	o.Signatures = sig
	return source.New(o)
}
