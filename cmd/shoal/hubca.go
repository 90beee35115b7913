package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// newHubCACmd is `shoal hub ca`: the hub CA certificate and its sha256
// fingerprint, the two things an operator's CLI and a device need to trust
// the hub. Read offline from the hub's database (or its --ca-cert file), or
// fetched from a running hub and checked against a fingerprint.
func newHubCACmd() *cobra.Command {
	var db, caCert, hubURL, fingerprint, out string
	var fpOnly bool
	cmd := &cobra.Command{
		Use:   "ca [--db DB | --ca-cert FILE | --hub URL --ca-fingerprint SHA256]",
		Short: "Print the hub's CA certificate (PEM) and its sha256 fingerprint",
		Long: `shoal hub ca prints the hub CA certificate (PEM) on stdout, or into --out, and
its sha256 fingerprint on stderr. The operator's CLI trusts the hub with
--ca FILE (env SHOAL_HUB_CA) or --ca-fingerprint SHA256 (env
SHOAL_HUB_CA_FINGERPRINT); a device enrols with the fingerprint
(shoal-agent enrol --ca-fingerprint, or a provisioning bundle).

Where the CA comes from:
  --db DB          the hub's database, offline (the default: the hub makes its CA
                   there on first start); run it on the hub's host
  --ca-cert FILE   the CA file a hub started with --ca-cert uses
  --hub URL        a running hub, over TLS; --ca-fingerprint is required and the
                   CA the hub presents must have that fingerprint, so a
                   fingerprint read from the hub's log ("ca" in its "hub
                   listening" line) or from a colleague is enough to fetch it

With --fingerprint only the fingerprint is printed, on stdout.

Exit codes: 0 ok, 1 no CA or a fingerprint mismatch, 2 usage error.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var (
				certPEM []byte
				err     error
			)
			switch {
			case hubURL != "" && caCert != "", hubURL != "" && cmd.Flags().Changed("db"), caCert != "" && cmd.Flags().Changed("db"):
				return usageError{errors.New("give one of --db, --ca-cert and --hub")}
			case hubURL != "":
				if fingerprint == "" {
					return usageError{errors.New("--hub needs --ca-fingerprint: a CA fetched over the network is only as good as the fingerprint it is checked against (the hub logs it at start; shoal hub ca --db DB prints it on the hub's host)")}
				}
				certPEM, err = fetchHubCA(ctx, hubURL, fingerprint)
			case caCert != "":
				certPEM, err = os.ReadFile(caCert)
			default:
				certPEM, err = storedCA(ctx, db)
			}
			if err != nil {
				return err
			}
			cert, err := parseCACert(certPEM)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(cert.Raw)
			fp := hex.EncodeToString(sum[:])
			if fingerprint != "" && hubURL == "" {
				want, err := client.ParseFingerprint(fingerprint)
				if err != nil {
					return usageError{fmt.Errorf("--ca-fingerprint: want %w", err)}
				}
				if hex.EncodeToString(want) != fp {
					return fmt.Errorf("the CA's sha256 fingerprint is %s, not %s", fp, hex.EncodeToString(want))
				}
			}
			pemOut := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
			if fpOnly {
				fmt.Fprintln(cmd.OutOrStdout(), fp)
				return nil
			}
			if out != "" {
				if err := atomicfile.WriteFile(out, pemOut, 0o644); err != nil {
					return fmt.Errorf("--out: %w", err)
				}
			} else if _, err := cmd.OutOrStdout().Write(pemOut); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "hub CA %q, valid until %s\nsha256 fingerprint: %s\n", cert.Subject.CommonName, cert.NotAfter.UTC().Format(time.DateOnly), fp)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&db, "db", defaultHubDB, "the hub's database (sqlite:///path or postgres://…)")
	f.StringVar(&caCert, "ca-cert", "", "the CA certificate file of a hub started with --ca-cert")
	f.StringVar(&hubURL, "hub", "", "fetch the CA from this running hub (https://host:port); needs --ca-fingerprint")
	f.StringVar(&fingerprint, "ca-fingerprint", os.Getenv("SHOAL_HUB_CA_FINGERPRINT"), "sha256 the CA must have (env SHOAL_HUB_CA_FINGERPRINT)")
	f.StringVar(&out, "out", "", "write the PEM to this file (atomically) instead of stdout")
	f.BoolVar(&fpOnly, "fingerprint", false, "print only the sha256 fingerprint")
	return cmd
}

// storedCA reads the CA from the hub's database without creating one: a
// SQLite file that does not exist is not made.
func storedCA(ctx context.Context, db string) ([]byte, error) {
	if path, ok := strings.CutPrefix(db, "sqlite://"); ok {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("--db %s: no such database: start the hub once (it makes its CA there), or give the hub's --db", db)
		}
	}
	st, err := store.Open(ctx, db)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ca, err := st.CA(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("no hub CA in %s yet: start the hub once (it makes its CA there), or read a --ca-cert file", redactDB(db))
	}
	if err != nil {
		return nil, err
	}
	return ca.CertPEM, nil
}

func parseCACert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("hub CA: no PEM certificate")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("hub CA: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("hub CA: the certificate is not a CA")
	}
	return cert, nil
}

// fetchHubCA connects to the hub and returns the CA certificate in its TLS
// chain whose sha256 is fingerprint; the hub's own certificate must verify
// against it.
func fetchHubCA(ctx context.Context, hubURL, fingerprint string) ([]byte, error) {
	u, err := url.Parse(strings.TrimRight(hubURL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, usageError{fmt.Errorf("--hub %q: want https://host[:port]", hubURL)}
	}
	tc, err := client.PinnedTLS(u.Hostname(), fingerprint, nil)
	if err != nil {
		return nil, usageError{fmt.Errorf("--ca-fingerprint: want %w", err)}
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{Config: tc}).DialContext(dctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("hub %s: %w", u.Host, err)
	}
	defer conn.Close()
	want, _ := client.ParseFingerprint(fingerprint)
	for _, c := range conn.(*tls.Conn).ConnectionState().PeerCertificates[1:] {
		if sum := sha256.Sum256(c.Raw); string(sum[:]) == string(want) {
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), nil
		}
	}
	return nil, fmt.Errorf("hub %s: %w", u.Host, client.ErrPinnedCA)
}
