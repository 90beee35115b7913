package attest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoalfleet/shoal/spec"
)

func TestTPMIdentity(t *testing.T) {
	sw := startSwtpm(t, "")
	ctx := context.Background()
	state := t.TempDir()
	a, err := New(ctx, Options{StateDir: state, TPM: sw.Open(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	id := a.Identity()
	if id.Kind != KindTPM || id.Weak {
		t.Errorf("kind %q weak %v, want a TPM key", id.Kind, id.Weak)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](id.AK)
	if err != nil {
		t.Fatal(err)
	}
	attr := pub.ObjectAttributes
	if pub.Type != tpm2.TPMAlgECC || !attr.Restricted || !attr.SignEncrypt || !attr.FixedTPM || !attr.FixedParent {
		t.Errorf("AK is not a restricted TPM-resident ECC signing key: %+v", attr)
	}
	ek, err := x509.ParsePKIXPublicKey(id.EKPublic)
	if err != nil {
		t.Fatalf("EK public: %v", err)
	}
	if _, ok := ek.(*ecdsa.PublicKey); !ok {
		t.Errorf("EK is %T, want the ECC EK", ek)
	}
	if len(id.EKCert) != 0 {
		t.Errorf("swtpm without swtpm_setup has no EK certificate, got %d bytes", len(id.EKCert))
	}

	// The device key signs a CSR the hub can check (api.ParseCSR does CheckSignature).
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-a"}}, a.Signer())
	if err != nil {
		t.Fatalf("CSR with the TPM device key: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature: %v", err)
	}
	devKey, _ := x509.MarshalPKIXPublicKey(csr.PublicKey)
	if !bytes.Equal(devKey, id.DeviceKey) {
		t.Error("CSR key is not Identity.DeviceKey")
	}

	// Keys are TPM-wrapped blobs in the state dir, private to the device.
	fi, err := os.Stat(filepath.Join(state, tpmKeysFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestTPMRestart power-cycles the swtpm: the keys load again from the state
// dir, the application PCR starts empty and must be extended again, and the
// reset counter moves forward so the hub accepts the new quote after the old.
func TestTPMRestart(t *testing.T) {
	tpmState, state := t.TempDir(), t.TempDir()
	ctx := context.Background()
	v := NewVerifier(VerifierOptions{Nonces: &MemNonceStore{}})

	boot := func(t *testing.T) (*swtpm, *Attester) {
		sw := startSwtpm(t, tpmState)
		a, err := New(ctx, Options{StateDir: state, TPM: sw.Open(t)})
		if err != nil {
			t.Fatal(err)
		}
		return sw, a
	}
	attest := func(t *testing.T, a *Attester, last *Counters) (*Result, error) {
		n, err := v.Issue(ctx, "dev-a")
		if err != nil {
			t.Fatal(err)
		}
		q, err := a.Quote(ctx, n, bootPCRs)
		if err != nil {
			t.Fatal(err)
		}
		pol := Policy{PCRs: append([]int{AppPCR}, bootPCRs...), Expected: map[int][]byte{AppPCR: AppPCRValue("h", "1")}}
		return v.Verify(ctx, Request{DeviceID: "dev-a", Quote: q, AK: a.Identity().AK, Policy: pol, Last: last})
	}

	sw, a := boot(t)
	ak := a.Identity().AK
	if err := a.ExtendApp(ctx, "h", "1"); err != nil {
		t.Fatal(err)
	}
	first, err := attest(t, a, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	sw.Stop()

	sw, a = boot(t)
	defer a.Close()
	if !bytes.Equal(a.Identity().AK, ak) {
		t.Fatal("AK changed across a TPM restart")
	}
	if _, err := attest(t, a, &first.Counters); !errors.Is(err, ErrPCRMismatch) {
		t.Fatalf("before ExtendApp after reboot: %v, want a PCR mismatch", err)
	}
	if err := a.ExtendApp(ctx, "h", "1"); err != nil {
		t.Fatal(err)
	}
	second, err := attest(t, a, &first.Counters)
	if err != nil {
		t.Fatalf("after reboot: %v", err)
	}
	if second.Counters.ResetCount == first.Counters.ResetCount {
		t.Errorf("reset counter did not move across a TPM reset: %+v -> %+v", first.Counters, second.Counters)
	}
	// The pre-reboot counters presented after the post-reboot ones are refused.
	if _, err := attest(t, a, &Counters{ResetCount: second.Counters.ResetCount + 1}); !errors.Is(err, ErrCountersBackwards) {
		t.Fatalf("counters backwards: %v", err)
	}
	_ = sw
}

// TestTPMReplaced: key blobs from one TPM do not load in another (a cleared
// or swapped TPM); the device must enrol again rather than run with new keys.
func TestTPMReplaced(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	a, err := New(ctx, Options{StateDir: state, TPM: startSwtpm(t, "").Open(t)})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	_, err = New(ctx, Options{StateDir: state, TPM: startSwtpm(t, "").Open(t)})
	if !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("New on another TPM = %v, want ErrKeyMismatch", err)
	}
}

// TestPolicyForSwtpm: the policy the hub derives from the rendered device
// accepts the quote of a device that applied that spec on that release, and
// names the PCR when the device runs something else.
func TestPolicyForSwtpm(t *testing.T) {
	sw := startSwtpm(t, "")
	ctx := context.Background()
	a, err := New(ctx, Options{StateDir: t.TempDir(), TPM: sw.Open(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	boot, err := readPCRs(a.b.(*tpmBackend).t, []int{0, 7})
	if err != nil {
		t.Fatal(err)
	}
	hexOf := func(b []byte) string { return bytesHex(b) }
	d := &spec.Device{
		APIVersion:  spec.APIVersion,
		ID:          "dev-a",
		Release:     &spec.Release{Name: "os-1.4", Version: "1.4.0", PCRs: map[string]string{"0": hexOf(boot[0]), "7": hexOf(boot[7]), "9": hexOf(make([]byte, 32))}},
		Attestation: spec.AttestationPolicy{Required: true, PCRs: []int{0, 7}},
	}
	pol, err := PolicyFor(d)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 7, AppPCR}; !equalInts(pol.PCRs, want) {
		t.Fatalf("policy PCRs %v, want %v", pol.PCRs, want)
	}
	if _, ok := pol.Expected[9]; ok {
		t.Error("policy constrains PCR 9 which the device does not quote")
	}

	v := NewVerifier(VerifierOptions{Nonces: &MemNonceStore{}})
	try := func(specHash, version string) error {
		if err := a.ExtendApp(ctx, specHash, version); err != nil {
			t.Fatal(err)
		}
		n, _ := v.Issue(ctx, "dev-a")
		q, err := a.Quote(ctx, n, d.Attestation.PCRs)
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify(ctx, Request{DeviceID: "dev-a", Quote: q, AK: a.Identity().AK, Policy: pol})
		return err
	}
	if err := try(d.Hash(), "1.4.0"); err != nil {
		t.Fatalf("device on the spec and release: %v", err)
	}
	// The hub can also check a device's claim of an older commit it still runs.
	if err := a.ExtendApp(ctx, "older-spec", "1.4.0"); err != nil {
		t.Fatal(err)
	}
	n, _ := v.Issue(ctx, "dev-a")
	q, err := a.Quote(ctx, n, d.Attestation.PCRs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, Request{DeviceID: "dev-a", Quote: q, AK: a.Identity().AK, Policy: pol.WithApp("older-spec", "1.4.0")}); err != nil {
		t.Fatalf("claimed older spec: %v", err)
	}
	var m *PCRMismatchError
	if err := try(d.Hash(), "1.3.9"); !errors.As(err, &m) || m.PCR != AppPCR {
		t.Fatalf("device on an older release: %v, want a mismatch on PCR %d", err, AppPCR)
	}
	if err := try("0000", "1.4.0"); !errors.As(err, &m) || m.PCR != AppPCR {
		t.Fatalf("device on another spec: %v, want a mismatch on PCR %d", err, AppPCR)
	}
}

func TestPolicyForInvalid(t *testing.T) {
	tests := []struct {
		name string
		pcrs map[string]string
		sel  []int
	}{
		{"non-numeric PCR", map[string]string{"boot": "00"}, nil},
		{"PCR out of range", map[string]string{"24": bytesHex(make([]byte, 32))}, nil},
		{"short digest", map[string]string{"0": "abcd"}, []int{0}},
		{"selection out of range", nil, []int{31}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &spec.Device{ID: "d", Release: &spec.Release{Name: "r", Version: "1", PCRs: tc.pcrs},
				Attestation: spec.AttestationPolicy{PCRs: tc.sel}}
			if _, err := PolicyFor(d); !errors.Is(err, ErrPolicy) {
				t.Fatalf("PolicyFor = %v, want ErrPolicy", err)
			}
		})
	}
}

// TestSoftwareKey: without a TPM the device falls back to software keys only
// when allowed; its quotes verify, flagged weaker, and only the application
// PCR is held to the policy.
func TestSoftwareKey(t *testing.T) {
	ctx := context.Background()
	noTPM := filepath.Join(t.TempDir(), "tpmrm0")
	if _, err := New(ctx, Options{StateDir: t.TempDir(), DevicePath: noTPM}); !errors.Is(err, ErrNoTPM) {
		t.Fatalf("no TPM, software not allowed: %v, want ErrNoTPM", err)
	}
	state := t.TempDir()
	a, err := New(ctx, Options{StateDir: state, DevicePath: noTPM, AllowSoftware: true})
	if err != nil {
		t.Fatal(err)
	}
	id := a.Identity()
	if id.Kind != KindSoftware || !id.Weak {
		t.Fatalf("identity %+v, want a weak software key", id)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(a.Collectors()...)
	if got := metricValue(t, reg, "shoal_attest_software_key", "", ""); got != 1 {
		t.Errorf("shoal_attest_software_key = %v, want 1", got)
	}
	if err := a.ExtendApp(ctx, "h", "1"); err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(VerifierOptions{Nonces: &MemNonceStore{}})
	pol := Policy{PCRs: []int{0, AppPCR}, Expected: map[int][]byte{0: bytes.Repeat([]byte{1}, 32), AppPCR: AppPCRValue("h", "1")}}
	quote := func() *Quote {
		n, _ := v.Issue(ctx, "dev-s")
		q, err := a.Quote(ctx, n, []int{0})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	res, err := v.Verify(ctx, Request{DeviceID: "dev-s", Quote: quote(), AK: id.AK, Software: true, Policy: pol})
	if err != nil {
		t.Fatalf("software quote: %v", err)
	}
	if !res.Software || !equalInts(res.Unchecked, []int{0}) {
		t.Fatalf("result %+v: want Software and PCR 0 unchecked", res)
	}
	// Registered as software, it cannot pass as a TPM key.
	if _, err := v.Verify(ctx, Request{DeviceID: "dev-s", Quote: quote(), AK: id.AK, Policy: pol}); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("software key verified as TPM: %v, want ErrUnknownKey", err)
	}
	// The application PCR still binds the spec.
	pol.Expected[AppPCR] = AppPCRValue("other", "1")
	if _, err := v.Verify(ctx, Request{DeviceID: "dev-s", Quote: quote(), AK: id.AK, Software: true, Policy: pol}); !errors.Is(err, ErrPCRMismatch) {
		t.Fatalf("software quote of another spec: %v", err)
	}
	first := res.Counters
	a.Close()

	// The keys persist; the boot count stands in for the reset counter.
	a, err = New(ctx, Options{StateDir: state, DevicePath: noTPM, AllowSoftware: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if !bytes.Equal(a.Identity().AK, id.AK) {
		t.Fatal("software AK changed across restarts")
	}
	pol.Expected[AppPCR] = AppPCRValue("h", "1")
	if err := a.ExtendApp(ctx, "h", "1"); err != nil {
		t.Fatal(err)
	}
	res, err = v.Verify(ctx, Request{DeviceID: "dev-s", Quote: quote(), AK: id.AK, Software: true, Policy: pol, Last: &first})
	if err != nil {
		t.Fatal(err)
	}
	if res.Counters.ResetCount != first.ResetCount+1 {
		t.Errorf("boot count %d after %d", res.Counters.ResetCount, first.ResetCount)
	}
	// The device key signs like the TPM one.
	if _, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, a.Signer()); err != nil {
		t.Fatal(err)
	}
}

// TestAttesterContext: a cancelled context stops work before the TPM is touched.
func TestAttesterContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	a, err := New(ctx, Options{StateDir: t.TempDir(), DevicePath: filepath.Join(t.TempDir(), "none"), AllowSoftware: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cancel()
	if _, err := a.Quote(ctx, make([]byte, 32), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Quote on a cancelled context: %v", err)
	}
	if err := a.ExtendApp(ctx, "h", "1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("ExtendApp on a cancelled context: %v", err)
	}
	if _, err := a.Quote(context.Background(), make([]byte, 8), nil); !errors.Is(err, ErrShortNonce) {
		t.Fatalf("Quote with an 8-byte nonce: %v", err)
	}
}

// TestOpenDeviceNotATPM: a path that exists but is not a TPM device is an
// error, never a silent fall-back to a software key.
func TestOpenDeviceNotATPM(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tpmrm0")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDevice(f); err == nil {
		t.Fatal("OpenDevice accepted a regular file")
	}
	if _, err := New(context.Background(), Options{StateDir: t.TempDir(), DevicePath: f, AllowSoftware: true}); err == nil {
		t.Fatal("New fell back to software with a TPM path present")
	}
}
