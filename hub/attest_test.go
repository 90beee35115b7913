package hub

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/internal/pgtest"
	"github.com/shoalfleet/shoal/internal/swtpmtest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

func quoteRequest(q *attest.Quote, nonce []byte, specHash, version string) *api.AttestRequest {
	return &api.AttestRequest{APIVersion: api.Version, Nonce: nonce, AKPublic: q.AK, Quote: q.Attest, Signature: q.Signature, PCRs: q.PCRs,
		SpecHash: specHash, ReleaseVersion: version}
}

// TestRealVerifier runs enrolment with attestation and later quotes through
// the real attest.Attester (software keys) and attest.Verifier.
func TestRealVerifier(t *testing.T) {
	ctx := t.Context()
	v, err := NewAttestVerifier(attest.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	th := startHub(t, openSQLite(t), func(o *Options) { o.Verifier = v })
	at, err := attest.New(ctx, attest.Options{StateDir: t.TempDir(), DevicePath: "/nonexistent/tpm", AllowSoftware: true})
	if err != nil {
		t.Fatal(err)
	}
	defer at.Close()
	const spec, version = "sha256:1111", "2026.11.0"
	if err := at.ExtendApp(ctx, spec, version); err != nil {
		t.Fatal(err)
	}
	cert, err := client.Enrol(ctx, th.URL, th.token(t, "dev-att", time.Hour), at.Signer(), api.KeySoftware, client.EnrolOptions{
		CAFingerprint: th.CAFingerprint(),
		Attest: func(ctx context.Context, nonce []byte) (*api.AttestRequest, error) {
			q, err := at.Quote(ctx, nonce, nil)
			if err != nil {
				return nil, err
			}
			return quoteRequest(q, nonce, spec, version), nil
		},
	})
	if err != nil {
		t.Fatalf("enrol with a real quote: %v", err)
	}
	cl, err := client.New(client.Options{Hub: th.URL, Key: at.Signer(), Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseIdleConnections()
	cases := []struct {
		name, spec, version string
		ok                  bool
		reason              string
	}{
		{"claims what it runs", spec, version, true, ""},
		{"claims another commit", "sha256:2222", version, false, "pcr-mismatch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, err := cl.Nonce(ctx)
			if err != nil {
				t.Fatal(err)
			}
			q, err := at.Quote(ctx, n.Nonce, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := cl.Attest(ctx, quoteRequest(q, n.Nonce, c.spec, c.version))
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != c.ok || (!c.ok && !strings.Contains(strings.Join(res.Reasons, " "), c.reason)) {
				t.Fatalf("result %+v", res)
			}
			// No fleet, so no PCR values to hold the quote to: passed, but
			// never as if the boot PCRs were checked.
			d, err := th.Store.Device(ctx, "dev-att")
			if err != nil || len(res.CheckedPCRs) != 0 || d.AttestPCRs {
				t.Fatalf("checked PCRs %v, stored %v (%v): want none without a PCR policy", res.CheckedPCRs, d.AttestPCRs, err)
			}
		})
	}
	// A quote over one nonce sent with another fresh nonce: the hub consumes
	// the sent nonce, and the verifier refuses the quote.
	n1, _ := cl.Nonce(ctx)
	n2, _ := cl.Nonce(ctx)
	q, err := at.Quote(ctx, n1.Nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cl.Attest(ctx, quoteRequest(q, n2.Nonce, spec, version))
	if err != nil || res.OK {
		t.Fatalf("quote for another nonce: %+v, %v", res, err)
	}
}

// startSwtpm runs `swtpm socket` on loopback for the test and returns a
// connection to it, closed when the test ends.
func startSwtpm(t *testing.T) transport.TPMCloser {
	t.Helper()
	return dialSwtpm(t, swtpmtest.Start(t, ""))
}

// dialSwtpm connects to sw; the connection closes when the test ends.
func dialSwtpm(t *testing.T, sw *swtpmtest.TPM) transport.TPMCloser {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tpm, err := attest.DialTCP(ctx, sw.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

// tpmAttester is an attest.Attester on a fresh swtpm, with AppPCR extended
// for spec and version.
func tpmAttester(t *testing.T, tpm transport.TPM, spec, version string) *attest.Attester {
	t.Helper()
	a, err := attest.New(t.Context(), attest.Options{StateDir: t.TempDir(), TPM: tpm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if a.Identity().Kind != attest.KindTPM {
		t.Fatalf("attester kind %q, want tpm", a.Identity().Kind)
	}
	if err := a.ExtendApp(t.Context(), spec, version); err != nil {
		t.Fatal(err)
	}
	return a
}

func quoteClock(t *testing.T, q *attest.Quote) tpm2.TPMSClockInfo {
	t.Helper()
	a, err := tpm2.Unmarshal[tpm2.TPMSAttest](q.Attest)
	if err != nil {
		t.Fatal(err)
	}
	return a.ClockInfo
}

// TestCountersAcrossHubs: two hubs on one PostgreSQL, a device with a TPM
// (swtpm). The device answers a nonce from hub B, but that quote is held
// back; a later quote is accepted by hub A. Replayed to hub B, the older
// quote (its nonce still fresh and unused) is refused: B reads the counters
// A stored. A third hub started afterwards (a restart) refuses it too.
func TestCountersAcrossHubs(t *testing.T) {
	ctx := t.Context()
	pg := pgtest.New(t)
	dsn := pg.NewDB(t)
	newHub := func() *testHub {
		st := openPostgres(t, dsn)
		v, err := NewAttestVerifier(attest.VerifierOptions{})
		if err != nil {
			t.Fatal(err)
		}
		v.Counters = st
		return startHub(t, st, func(o *Options) { o.Verifier = v })
	}
	a, b := newHub(), newHub()
	const spec, version = "sha256:1111", "2026.11.0"
	at := tpmAttester(t, startSwtpm(t), spec, version)
	attestFn := func(ctx context.Context, nonce []byte) (*api.AttestRequest, error) {
		q, err := at.Quote(ctx, nonce, []int{0, 7})
		if err != nil {
			return nil, err
		}
		return quoteRequest(q, nonce, spec, version), nil
	}
	eo := tpmEnrolOptions(at, at)
	eo.CAFingerprint, eo.Attest = a.CAFingerprint(), attestFn
	cert, err := client.Enrol(ctx, a.URL, a.token(t, "dev-ctr", time.Hour), at.Signer(), api.KeyTPM, eo)
	if err != nil {
		t.Fatalf("enrol with a TPM quote: %v", err)
	}
	clientOf := func(th *testHub) *client.Client {
		cl, err := client.New(client.Options{Hub: th.URL, Key: at.Signer(), Cert: cert})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.CloseIdleConnections)
		return cl
	}
	ca, cb := clientOf(a), clientOf(b)

	nb, err := cb.Nonce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held, err := at.Quote(ctx, nb.Nonce, []int{0, 7})
	if err != nil {
		t.Fatal(err)
	}
	heldClock := quoteClock(t, held)
	// A later quote: the TPM clock (ms) must have moved on.
	var later *attest.Quote
	var na *api.Nonce
	deadline := time.Now().Add(10 * time.Second)
	for later == nil || quoteClock(t, later).Clock <= heldClock.Clock {
		if time.Now().After(deadline) {
			t.Fatal("TPM clock did not advance in 10s")
		}
		if na, err = ca.Nonce(ctx); err != nil {
			t.Fatal(err)
		}
		if later, err = at.Quote(ctx, na.Nonce, []int{0, 7}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := ca.Attest(ctx, quoteRequest(later, na.Nonce, spec, version))
	if err != nil || !res.OK {
		t.Fatalf("later quote on hub A: %+v, %v", res, err)
	}
	stored, err := b.Store.TPMCounters(ctx, "dev-ctr")
	if err != nil {
		t.Fatal(err)
	}
	if lc := quoteClock(t, later); stored.Clock != lc.Clock || stored.ResetCount != lc.ResetCount || stored.RestartCount != lc.RestartCount {
		t.Fatalf("stored counters %+v, want those of the later quote %+v", stored, lc)
	}

	res, err = cb.Attest(ctx, quoteRequest(held, nb.Nonce, spec, version))
	if err != nil {
		t.Fatal(err)
	}
	if res.OK || !strings.Contains(strings.Join(res.Reasons, " "), "counters-backwards") {
		t.Fatalf("older quote replayed to hub B: %+v, want refused as counters-backwards", res)
	}
	after, err := b.Store.TPMCounters(ctx, "dev-ctr")
	if err != nil || after.Clock != stored.Clock {
		t.Fatalf("counters after the refused replay: %+v, %v; want unchanged %+v", after, err, stored)
	}
	as, err := b.Store.Attestations(ctx, "dev-ctr", 1)
	if err != nil || len(as) != 1 || as[0].OK {
		t.Fatalf("latest stored attestation %+v, %v; want the refusal", as, err)
	}

	// A hub started now (or hub B restarted) holds quotes to the same counters.
	c := newHub()
	cc := clientOf(c)
	nc, err := cc.Nonce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	older, err := at.Quote(ctx, nc.Nonce, []int{0, 7})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := cc.Attest(ctx, quoteRequest(older, nc.Nonce, spec, version)); err != nil || !res.OK {
		t.Fatalf("fresh quote on a new hub: %+v, %v", res, err)
	}
}

// writeFleet writes a fleet repo where every device attests PCRs 0 and 7
// and dev-f runs release os-1; os-1 and os-2 expect the given PCR 7 values.
func writeFleet(t *testing.T, dir string, pcr7os1, pcr7os2 []byte) {
	t.Helper()
	files := map[string]string{
		"fleet.yaml":         "spec:\n  attestation:\n    pcrs: [0, 7]\n",
		"devices/dev-f.yaml": "spec:\n  release: os-1\n",
		"devices/dev-g.yaml": "labels:\n  role: spare\n",
		// Devices with no A/B slots (they claim no release) given os-1.
		"devices/dev-n.yaml": "spec:\n  release: os-1\n",
		"devices/dev-r.yaml": "spec:\n  release: os-1\n  attestation:\n    required: true\n",
	}
	for name, pcr7 := range map[string][]byte{"os-1": pcr7os1, "os-2": pcr7os2} {
		version := map[string]string{"os-1": "1.0.0", "os-2": "2.0.0"}[name]
		files["releases/"+name+".yaml"] = fmt.Sprintf("version: %s\nurl: https://releases.example/%s.img\nsize: 1024\nsha256: %x\nsignature: c2ln\npcrs:\n  \"7\": %x\n",
			version, name, sha256.Sum256([]byte(name)), pcr7)
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// extendPCR extends a PCR of the TPM directly, as firmware measuring a boot
// component would.
func extendPCR(t *testing.T, tpm transport.TPM, pcr int, data string) {
	t.Helper()
	d := sha256.Sum256([]byte(data))
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("extend PCR %d: %v", pcr, err)
	}
}

// TestFleetPolicy holds quotes from a TPM (swtpm) to a fleet repo in Git:
// the release a device claims names its expected PCR 7, a differing
// measured value is refused naming PCR 7, the quote must cover the PCRs the
// device's spec lists, and a new commit is picked up after a poke.
func TestFleetPolicy(t *testing.T) {
	ctx := t.Context()
	tpm := startSwtpm(t)
	extendPCR(t, tpm, 7, "secure-boot-db-v1")
	measured := make([]byte, 32)
	{
		d := sha256.Sum256([]byte("secure-boot-db-v1"))
		h := sha256.New()
		h.Write(measured)
		h.Write(d[:])
		measured = h.Sum(nil)
	}
	other := sha256.Sum256([]byte("another boot chain"))

	repo := t.TempDir()
	testenv.Git(t, repo, "init", "-q", "-b", "main")
	writeFleet(t, repo, measured, other[:])
	testenv.GitCommitAll(t, repo, "fleet")
	fp := &FleetPolicy{Load: func(context.Context) (FleetRevision, error) {
		f, rev, err := gitfs.Open(repo, "HEAD")
		return FleetRevision{FS: f, Revision: rev}, err
	}}
	if err := fp.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	st := openSQLite(t)
	v, err := NewAttestVerifier(attest.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v.Counters, v.Policy = st, fp.Policy
	th := startHub(t, st, func(o *Options) { o.Verifier = v })
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); fp.Run(runCtx, st, time.Hour, 50*time.Millisecond) }()
	t.Cleanup(func() { stop(); <-done })

	// The spec hash the agent would apply for dev-f.
	const spec = "sha256:f00d"
	at := tpmAttester(t, tpm, spec, "1.0.0")
	enrolAs := func(id string) *client.Client {
		cert, err := client.Enrol(ctx, th.URL, th.token(t, id, time.Hour), at.Signer(), api.KeyTPM, client.EnrolOptions{CAFingerprint: th.CAFingerprint()})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(client.Options{Hub: th.URL, Key: at.Signer(), Cert: cert})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.CloseIdleConnections)
		return cl
	}
	clF, clX, clN, clR := enrolAs("dev-f"), enrolAs("dev-x"), enrolAs("dev-n"), enrolAs("dev-r")
	attestAs := func(t *testing.T, cl *client.Client, pcrs []int, version string) api.AttestResult {
		t.Helper()
		if err := at.ExtendApp(ctx, spec, version); err != nil {
			t.Fatal(err)
		}
		n, err := cl.Nonce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		q, err := at.Quote(ctx, n.Nonce, pcrs)
		if err != nil {
			t.Fatal(err)
		}
		res, err := cl.Attest(ctx, quoteRequest(q, n.Nonce, spec, version))
		if err != nil {
			t.Fatal(err)
		}
		return *res
	}
	cases := []struct {
		name    string
		cl      *client.Client
		pcrs    []int
		version string
		reasons []string // empty: accepted
		// unchecked: what an accepted verdict must say it did not check.
		unchecked string
	}{
		{"release value matches the measured PCR 7", clF, []int{0, 7}, "1.0.0", nil, ""},
		{"claimed release expects another PCR 7", clF, []int{0, 7}, "2.0.0", []string{"pcr-mismatch", "PCR 7"}, ""},
		{"quote does not cover PCR 7 of the spec", clF, []int{0}, "1.0.0", []string{"pcr-selection", "[0 7 23]"}, ""},
		{"claims a release the fleet does not list", clF, []int{0, 7}, "9.9.9", []string{"policy-invalid", `"9.9.9"`, `"os-1"`}, ""},
		{"device not in the fleet", clX, []int{0, 7}, "1.0.0", []string{"policy-invalid", "dev-x"}, ""},
		// A device with no A/B slots runs no release: its quote passes but
		// for the release's PCR values, which the verdict says it left out.
		{"no release claimed, attestation optional", clN, []int{0, 7}, "", nil, `PCR values of release "os-1" not checked`},
		{"no release claimed, quote misses a spec PCR", clN, []int{0}, "", []string{"pcr-selection"}, ""},
		{"no release claimed, attestation required", clR, []int{0, 7}, "", []string{"policy-invalid", `"os-1"`, "requires attestation"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := attestAs(t, c.cl, c.pcrs, c.version)
			if len(c.reasons) == 0 {
				if !res.OK {
					t.Fatalf("refused: %v", res.Reasons)
				}
				if got := strings.Join(res.Unchecked, "; "); (c.unchecked == "") != (got == "") || !strings.Contains(got, c.unchecked) {
					t.Errorf("unchecked %q, want %q", got, c.unchecked)
				}
				// The release's PCR 7 value was checked, and the hub says
				// so; with no release, none was.
				id, want := map[*client.Client]string{clF: "dev-f", clN: "dev-n"}[c.cl], []int{7}
				if c.unchecked != "" {
					want = nil
				}
				d, err := st.Device(ctx, id)
				if !slices.Equal(res.CheckedPCRs, want) || err != nil || d.AttestPCRs != (want != nil) {
					t.Fatalf("checked PCRs %v, stored %v (%v): want %v", res.CheckedPCRs, d.AttestPCRs, err, want)
				}
				return
			}
			got := strings.Join(res.Reasons, " ")
			t.Logf("reasons: %s", got)
			if res.OK {
				t.Fatal("accepted")
			}
			for _, want := range c.reasons {
				if !strings.Contains(got, want) {
					t.Errorf("reasons %q do not name %q", got, want)
				}
			}
		})
	}
	// The refusal naming PCR 7 is what the hub stored for the status page.
	as, err := st.Attestations(ctx, "dev-x", 1)
	if err != nil || len(as) != 1 || as[0].OK {
		t.Fatalf("stored attestation for dev-x: %+v, %v", as, err)
	}

	// os-2 now expects the measured value: after a commit and a poke (as a
	// Git webhook makes), the hub holds dev-f to the new fleet.
	writeFleet(t, repo, measured, measured)
	testenv.GitCommitAll(t, repo, "os-2 measured")
	want := strings.TrimSpace(testenv.Git(t, repo, "rev-parse", "HEAD"))
	operatorPoke(t, th, api.PokeRequest{APIVersion: api.Version, Reason: "operator"})
	waitFor(t, 10*time.Second, func() bool { return fp.Revision() == want })
	if res := attestAs(t, clF, []int{0, 7}, "2.0.0"); !res.OK {
		t.Fatalf("after the new commit: refused %v", res.Reasons)
	}

	// A commit that does not load is refused; the last good fleet stays.
	if err := os.WriteFile(filepath.Join(repo, "releases/os-2.yaml"), []byte("version: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.GitCommitAll(t, repo, "broken")
	if err := fp.Refresh(ctx); err == nil || !strings.Contains(err.Error(), "releases/os-2.yaml") {
		t.Fatalf("refresh with a broken release: %v, want an error naming the file", err)
	}
	if fp.Revision() != want {
		t.Fatalf("revision %s after a broken commit, want the last good %s", fp.Revision(), want)
	}
	if res := attestAs(t, clF, []int{0, 7}, "2.0.0"); !res.OK {
		t.Fatalf("with the last good fleet: refused %v", res.Reasons)
	}
}

// tpmEnrolOptions sends ekOf's EK and answers the hub's challenge with
// activator's TPM.
func tpmEnrolOptions(ekOf, activator *attest.Attester) client.EnrolOptions {
	id := ekOf.Identity()
	return client.EnrolOptions{
		EK: &api.EndorsementKey{Area: id.EKArea, Public: id.EKPublic, Cert: id.EKCert},
		Activate: func(ctx context.Context, c *api.EnrolChallenge) ([]byte, error) {
			return activator.ActivateCredential(ctx, attest.Credential{IDObject: c.IDObject, EncSecret: c.EncSecret})
		},
	}
}

// TestEnrolActivation: a TPM enrolment with an attestation gets a
// certificate only after the TPM recovers the hub's challenge for its AK
// (two swtpms). A device sending one TPM's EK with another TPM's AK is
// refused whichever TPM tries to answer, and nothing is written: the device
// is not enrolled and its token still works.
func TestEnrolActivation(t *testing.T) {
	ctx := t.Context()
	st := openSQLite(t)
	v, err := NewAttestVerifier(attest.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v.Counters = st
	th := startHub(t, st, func(o *Options) { o.Verifier = v })
	const spec, version = "sha256:1111", "2026.11.0"
	tpmA, tpmB := tpmAttester(t, startSwtpm(t), spec, version), tpmAttester(t, startSwtpm(t), spec, version)
	quoteBy := func(a *attest.Attester) func(context.Context, []byte) (*api.AttestRequest, error) {
		return func(ctx context.Context, nonce []byte) (*api.AttestRequest, error) {
			q, err := a.Quote(ctx, nonce, []int{0, 7})
			if err != nil {
				return nil, err
			}
			return quoteRequest(q, nonce, spec, version), nil
		}
	}
	random := func(context.Context, *api.EnrolChallenge) ([]byte, error) {
		return []byte("0123456789abcdef0123456789abcdef"), nil
	}
	cases := []struct {
		name     string
		signer   *attest.Attester // CSR key and AK
		ekOf     *attest.Attester
		activate func(context.Context, *api.EnrolChallenge) ([]byte, error) // nil: ekOf's TPM
		reason   string                                                     // "" enrols
	}{
		{"AK of TPM B with the EK of TPM A, answered by A", tpmB, tpmA, nil, "activate credential"},
		{"AK of TPM B with the EK of TPM A, answered by B", tpmB, tpmA, tpmEnrolOptions(tpmB, tpmB).Activate, "activate credential"},
		{"AK of TPM B with the EK of TPM A, a guessed secret", tpmB, tpmA, random, api.ReasonActivationFailed},
		{"AK and EK of one TPM", tpmA, tpmA, nil, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := "dev-" + strings.NewReplacer(" ", "-", ",", "").Replace(strings.ToLower(c.name))
			if len(id) > 60 {
				id = id[:60]
			}
			tok := th.token(t, id, time.Hour)
			eo := tpmEnrolOptions(c.ekOf, c.ekOf)
			if c.activate != nil {
				eo.Activate = c.activate
			}
			eo.CAFingerprint, eo.Attest = th.CAFingerprint(), quoteBy(c.signer)
			cert, err := client.Enrol(ctx, th.URL, tok, c.signer.Signer(), api.KeyTPM, eo)
			if c.reason == "" {
				if err != nil {
					t.Fatalf("enrol: %v", err)
				}
				d, err := st.Device(ctx, id)
				if err != nil || string(d.AK) != string(c.signer.Identity().AK) || cert.DeviceID != id {
					t.Fatalf("enrolled device %+v, %v: want its AK registered", d, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("enrol: %v, want a refusal with %q", err, c.reason)
			}
			t.Logf("refused: %v", err)
			if _, err := st.Device(ctx, id); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("device after a refused enrolment: %v, want not found", err)
			}
			if got, err := st.PeekEnrolToken(ctx, hashToken(tok), time.Now()); err != nil || got != id {
				t.Fatalf("token after a refused enrolment: %q, %v; want still usable", got, err)
			}
		})
	}

	// The one-step enrolment (attestation straight to /v1/enrol) is refused for a TPM key.
	tok := th.token(t, "dev-one-step", time.Hour)
	eo := client.EnrolOptions{CAFingerprint: th.CAFingerprint(), Attest: quoteBy(tpmA)}
	if _, err := client.Enrol(ctx, th.URL, tok, tpmA.Signer(), api.KeyTPM, eo); err == nil || !strings.Contains(err.Error(), "EK and Activate") {
		t.Fatalf("client without EK: %v", err)
	}
	hc := th.raw(t, nil)
	code, ae, body := call(t, hc, "POST", th.URL+"/v1/attest/nonce", tok, nil)
	var n api.Nonce
	if code != http.StatusOK || json.Unmarshal(body, &n) != nil {
		t.Fatalf("enrolment nonce: %d %+v", code, ae)
	}
	att, err := quoteBy(tpmA)(ctx, n.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := client.CSR(tpmA.Signer())
	if err != nil {
		t.Fatal(err)
	}
	code, ae, _ = call(t, hc, "POST", th.URL+"/v1/enrol", "", mustJSON(t, &api.EnrolRequest{APIVersion: api.Version, Token: tok, CSR: csr, KeyKind: api.KeyTPM, Attestation: att}))
	if code != http.StatusForbidden || ae.Reason != api.ReasonActivationFailed {
		t.Fatalf("one-step TPM enrolment: %d %+v, want 403 %s", code, ae, api.ReasonActivationFailed)
	}
	if _, err := st.Device(ctx, "dev-one-step"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("device after a refused one-step enrolment: %v", err)
	}
}
