package swtpmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// EKCA is a test TPM maker: Debian's swtpm_localca, run by swtpm_setup,
// with its own state directory. On first use it makes a self-signed root CA
// and an intermediate signed by it, and the intermediate signs the EK
// certificates of every TPM the CA manufactures: the shape of a real TPM
// maker's hierarchy.
type EKCA struct {
	dir string // config files; the CA's state is in dir/ca
}

// NewEKCA writes swtpm_setup.conf and swtpm-localca.conf/.options for a new
// CA in a temp dir. Without swtpm_setup or certtool it skips or fails the
// test as testenv.Missing says.
func NewEKCA(t testing.TB) *EKCA {
	t.Helper()
	testenv.LookPath(t, "swtpm_setup", "swtpm-tools")
	testenv.LookPath(t, "certtool", "gnutls-bin") // swtpm_localca makes its CA with it
	ca := &EKCA{dir: t.TempDir()}
	state := filepath.Join(ca.dir, "ca")
	files := map[string]string{
		"swtpm_setup.conf": fmt.Sprintf(`create_certs_tool = /usr/share/swtpm/swtpm-localca
create_certs_tool_config = %[1]s/swtpm-localca.conf
create_certs_tool_options = %[1]s/swtpm-localca.options
active_pcr_banks = sha256
`, ca.dir),
		"swtpm-localca.conf": fmt.Sprintf(`statedir = %[1]s
signingkey = %[1]s/signkey.pem
issuercert = %[1]s/issuercert.pem
certserial = %[1]s/certserial
`, state),
		"swtpm-localca.options": "--platform-manufacturer Shoal\n--platform-version 1.0\n--platform-model test\n",
	}
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(ca.dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca
}

// Root is the CA's self-signed root certificate (PEM), made with the first
// TPM the CA manufactures.
func (ca *EKCA) Root() string { return filepath.Join(ca.dir, "ca", "swtpm-localca-rootca-cert.pem") }

// Intermediate is the certificate (PEM) of the CA's key that signs EK
// certificates, issued by Root and made with it.
func (ca *EKCA) Intermediate() string { return filepath.Join(ca.dir, "ca", "issuercert.pem") }

// Manufacture prepares a new TPM state in stateDir as its maker would: an
// RSA 2048 EK (the TCG default template) with a certificate in NV index
// 0x01c00002, and an ECC P-384 EK with one in 0x01c00016, the indexes
// write-locked. It returns the DER of the RSA EK certificate.
func (ca *EKCA) Manufacture(t testing.TB, stateDir string) []byte {
	t.Helper()
	bin := testenv.LookPath(t, "swtpm_setup", "swtpm-tools")
	certs := t.TempDir()
	cmd := exec.Command(bin, "--tpm2", "--tpmstate", stateDir, "--config", filepath.Join(ca.dir, "swtpm_setup.conf"),
		"--create-ek-cert", "--lock-nvram", "--write-ek-cert-files", certs)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	der, err := os.ReadFile(filepath.Join(certs, "ek-rsa2048.crt"))
	if err != nil {
		t.Fatalf("swtpm_setup wrote no RSA EK certificate: %v", err)
	}
	return der
}

// StartCertified manufactures a TPM whose EK certificate ca issues, in a
// fresh state dir, and starts it as Start does.
func StartCertified(t testing.TB, ca *EKCA) *TPM {
	t.Helper()
	dir := t.TempDir()
	ca.Manufacture(t, dir)
	return Start(t, dir)
}

// CopyCerts copies the CA's root and intermediate (PEM) into dir, as an
// operator gathers the certificates TPM makers publish for
// `shoal hub --ek-roots`. Several CAs may share one dir.
func (ca *EKCA) CopyCerts(t testing.TB, dir string) {
	t.Helper()
	for _, f := range []string{ca.Root(), ca.Intermediate()} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("EK CA certificate (made with the first TPM the CA manufactures): %v", err)
		}
		name := filepath.Base(ca.dir) + "-" + filepath.Base(f)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
