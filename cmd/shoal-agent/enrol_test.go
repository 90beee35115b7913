package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/gitfs"
	"github.com/shoalfleet/shoal/internal/swtpmtest"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/provision"
)

// attestedFleet is validFleet with attestation PCRs for d1 that the device
// cannot know before its first pass.
func attestedFleet() map[string]string {
	f := validFleet()
	f["groups/web.yaml"] = "selector:\n  match_labels:\n    role: web\nspec:\n  apps:\n    web: {}\n  attestation:\n    pcrs: [0, 7, 14]\n"
	return f
}

// verifierFor is a hub attestation verifier keeping TPM counters in st,
// holding quotes to the fleet at repo's HEAD when fleet is set.
func verifierFor(t *testing.T, st store.Store, repo string, fleet bool) *hub.AttestVerifier {
	t.Helper()
	v, err := hub.NewAttestVerifier(attest.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v.Counters = st
	if fleet {
		fp := &hub.FleetPolicy{Load: func(context.Context) (hub.FleetRevision, error) {
			f, rev, err := gitfs.Open(repo, "HEAD")
			return hub.FleetRevision{FS: f, Revision: rev}, err
		}}
		if err := fp.Refresh(t.Context()); err != nil {
			t.Fatal(err)
		}
		v.Policy = fp.Policy
	}
	return v
}

// tpmConfig writes an agent config for d1 on the fleet repo with the TPM at
// addr (swtpm), containers off and hub_url set; it returns its path and the
// state dir.
func tpmConfig(t *testing.T, repo, addr, hubURL string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	cfg := fmt.Sprintf("device_id: d1\nstate_dir: %s\nrepo:\n  url: file://%s\nmetrics_addr: \"\"\ndocker_root: \"\"\ncontainers:\n  enabled: false\ntrust:\n  tpm: tcp:%s\nhub_url: %s\n",
		state, repo, addr, hubURL)
	p := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, state
}

// runEnrol runs `shoal-agent enrol` in this process and returns what it printed.
func runEnrol(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out := &testenv.Buffer{}
	root := newWiredRootCmd(t.Context())
	root.SetArgs(append([]string{"enrol"}, args...))
	root.SetOut(out)
	root.SetErr(out)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// TestEnrolAttests: `shoal-agent enrol` on a device with a TPM (swtpm)
// attests while enrolling, so the hub's database holds the AK right after
// enrolment, before any pass, also when the hub holds quotes to a fleet
// whose attestation PCRs the device does not know yet. The first pass then
// attests with that AK. A hub with no verifier enrols the device
// unattested, and enrol says so. A refusal fails the enrolment with the
// hub's reason and writes nothing.
func TestEnrolAttests(t *testing.T) {
	f := newFleet(t)
	f.commit(attestedFleet())
	// A fleet whose release for d1 expects a PCR 7 value: a device claiming
	// no release (no A/B slots) passes but for that value, unless its spec
	// requires attestation: then it is refused.
	withRelease, required := newFleet(t), newFleet(t)
	files := attestedFleet()
	files["devices/d1.yaml"] = "labels:\n  role: web\nspec:\n  release: os-1\n"
	files["releases/os-1.yaml"] = "version: 1.0.0\nurl: https://releases.example/os-1.img\nsize: 1024\nsha256: " + strings.Repeat("ab", 32) +
		"\nsignature: c2ln\npcrs:\n  \"7\": " + strings.Repeat("cd", 32) + "\n"
	withRelease.commit(files)
	files["devices/d1.yaml"] += "  attestation:\n    required: true\n"
	required.commit(files)
	cases := []struct {
		name     string
		verifier bool
		fleet    *fleet // nil: the hub checks the claim alone
		token    string // "": a fresh token for d1
		printed  string // enrolled: what enrol prints
		refused  string // refused: what the error names
	}{
		{"hub checks the claim", true, nil, "", "(tpm key, attested, AK bound to EK)", ""},
		{"hub holds quotes to the fleet", true, f, "", "(tpm key, attested, AK bound to EK)", ""},
		{"hub has no verifier", false, nil, "", "(tpm key, not attested: the hub has no attestation verifier)", ""},
		{"fleet release the device does not run", true, withRelease, "", "(tpm key, attested, AK bound to EK)", ""},
		{"fleet release the device does not run and attestation required", true, required, "", "", "403 quote-invalid: enrolment attestation failed: policy-invalid"},
		{"token unknown", true, nil, "shoal_enrol_not-a-real-token", "", "401 token-invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sw := swtpmtest.Start(t, "")
			st, h, hubURL := startHub(t, func(o *hub.Options) {
				if c.verifier {
					repo := ""
					if c.fleet != nil {
						repo = c.fleet.Dir
					}
					o.Verifier = verifierFor(t, o.Store, repo, c.fleet != nil)
				}
			})
			tok, err := hub.CreateEnrolToken(t.Context(), st, "d1", time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if c.token != "" {
				tok.Token = c.token
			}
			cfgPath, state := tpmConfig(t, f.Dir, sw.Addr, hubURL)
			out, err := runEnrol(t, "--config", cfgPath, "--hub", hubURL, "--token", tok.Token, "--ca-fingerprint", h.CAFingerprint())
			if c.refused != "" {
				if err == nil || !strings.Contains(err.Error(), c.refused) {
					t.Fatalf("enrol: %v, want a refusal naming %q\n%s", err, c.refused, out)
				}
				t.Logf("refused: %v", err)
				if _, err := readCertificate(state); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("certificate after a refused enrolment: %v", err)
				}
				if _, err := st.Device(t.Context(), "d1"); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("device after a refused enrolment: %v, want not found", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("enrol: %v\n%s", err, out)
			}
			if !strings.Contains(out, "enrolled as d1 "+c.printed) {
				t.Errorf("enrol printed %q, want %q", out, c.printed)
			}
			d, err := st.Device(t.Context(), "d1")
			if err != nil || d.KeyKind != api.KeyTPM {
				t.Fatalf("device after enrol: %+v, %v", d, err)
			}
			if c.verifier != (len(d.AK) > 0) {
				t.Fatalf("AK registered at enrolment: %d bytes, want one: %v", len(d.AK), c.verifier)
			}
			if _, err := readCertificate(state); err != nil {
				t.Fatalf("certificate in the state dir: %v", err)
			}
			if !c.verifier {
				return
			}
			// The first pass quotes with the AK registered at enrolment.
			if code := run(t.Context(), []string{"--once", "--config", cfgPath}); code != exitOK {
				t.Fatalf("first pass exit %d, want 0 (converged, attested)", code)
			}
			as, err := st.Attestations(t.Context(), "d1", 1)
			if err != nil || len(as) != 1 || !as[0].OK {
				var res string
				if len(as) == 1 {
					res = string(as[0].Result)
				}
				t.Fatalf("first pass attestation: %v %s", err, res)
			}
			if after, err := st.Device(t.Context(), "d1"); err != nil || !bytes.Equal(after.AK, d.AK) {
				t.Fatalf("AK after the first pass differs from the one registered at enrolment (%v)", err)
			}
		})
	}
}

// TestEnrolActivationRefused: a device that sends another TPM's EK with its
// own AK cannot answer the hub's challenge (two swtpms); its enrolment is
// refused and nothing is written: no certificate in the state dir, no
// device at the hub, and the token still enrols the device honestly.
func TestEnrolActivationRefused(t *testing.T) {
	st, h, hubURL := startHub(t, func(o *hub.Options) { o.Verifier = verifierFor(t, o.Store, "", false) })
	dev, other := tpmDevice(t), tpmDevice(t)
	guess := func(context.Context, *api.EnrolChallenge) ([]byte, error) {
		return []byte("0123456789abcdef0123456789abcdef"), nil
	}
	cases := []struct {
		name     string
		activate func(context.Context, *api.EnrolChallenge) ([]byte, error) // nil: the device's own TPM
		reason   string
	}{
		{"answered by the device's TPM", nil, "activate credential"},
		{"answered by the TPM of the EK", other.withAttestation(client.EnrolOptions{}).Activate, "activate credential"},
		{"a guessed secret", guess, api.ReasonActivationFailed},
	}
	tok, err := hub.CreateEnrolToken(t.Context(), st, "d1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := dev.withAttestation(client.EnrolOptions{CAFingerprint: h.CAFingerprint()})
			o.EK = other.withAttestation(o).EK
			if c.activate != nil {
				o.Activate = c.activate
			}
			key, kind := dev.key()
			_, err := enrol(t.Context(), dev.stateDir, hubURL, tok.Token, key, kind, o)
			if err == nil || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("enrol: %v, want a refusal with %q", err, c.reason)
			}
			t.Logf("refused: %v", err)
			if _, err := readCertificate(dev.stateDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("certificate after a refused enrolment: %v", err)
			}
			if _, err := st.Device(t.Context(), "d1"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("device after a refused enrolment: %v, want not found", err)
			}
		})
	}
	// The token was not used by the refusals.
	e, err := enrolDevice(t.Context(), dev, hubURL, tok.Token, client.EnrolOptions{CAFingerprint: h.CAFingerprint()})
	if err != nil || !e.attested {
		t.Fatalf("honest enrolment with the same token: %+v, %v", e, err)
	}
	if d, err := st.Device(t.Context(), "d1"); err != nil || !bytes.Equal(d.AK, dev.attester.Identity().AK) {
		t.Fatalf("device after the honest enrolment: %+v, %v; want its AK registered", d, err)
	}
}

// tpmDevice is a device on a fresh swtpm with its own state dir.
func tpmDevice(t *testing.T) *device {
	t.Helper()
	sw := swtpmtest.Start(t, "")
	tpm, err := attest.DialTCP(t.Context(), sw.Addr)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	a, err := attest.New(t.Context(), attest.Options{StateDir: filepath.Join(state, "attest"), TPM: tpm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); tpm.Close() })
	return &device{attester: a, stateDir: state}
}

// TestEnrolQuote: the enrolment quote claims the spec hash the state dir
// last applied ("" before the first pass) and the release the device runs,
// PCR 23 holds that claim, it covers all 24 PCRs, and the request the
// challenge step sends stays well under the hub's limit. A state dir that
// does not read fails the quote, naming the file.
func TestEnrolQuote(t *testing.T) {
	dev := tpmDevice(t)
	dev.version = func() string { return "2026.11.0" }
	nonce := bytes.Repeat([]byte{7}, 32)
	state := func(body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dev.stateDir, "state.json"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	applied, _ := json.Marshal(&agent.State{Version: agent.StateVersion, Applied: agent.Applied{Commit: strings.Repeat("1", 40), SpecHash: "sha256:5eed"}})
	cases := []struct {
		name  string
		state string // "": none yet
		spec  string
		err   string
	}{
		{"before the first pass", "", "", ""},
		{"after a pass", string(applied), "sha256:5eed", ""},
		{"state unreadable", "{", "", "state.json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.state != "" {
				state(c.state)
			}
			att, err := dev.quote(t.Context(), nonce)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("quote: %v, want an error naming %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if att.SpecHash != c.spec || att.ReleaseVersion != "2026.11.0" {
				t.Errorf("claims spec %q release %q, want %q and 2026.11.0", att.SpecHash, att.ReleaseVersion, c.spec)
			}
			if !bytes.Equal(att.PCRs[attest.AppPCR], attest.AppPCRValue(c.spec, "2026.11.0")) {
				t.Errorf("PCR 23 does not hold the claim")
			}
			if len(att.PCRs) != 24 {
				t.Errorf("quote covers %d PCRs, want 24", len(att.PCRs))
			}
			csr, err := client.CSR(dev.attester.Signer())
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(&api.EnrolRequest{APIVersion: api.Version, Token: strings.Repeat("t", 64), CSR: csr, KeyKind: api.KeyTPM,
				Attestation: att, EK: dev.withAttestation(client.EnrolOptions{}).EK})
			t.Logf("challenge request: %d bytes (hub limit %d)", len(b), api.MaxEnrolBytes)
			if len(b) > api.MaxEnrolBytes/4 {
				t.Errorf("challenge request of %d bytes, want at most a quarter of the hub's %d", len(b), api.MaxEnrolBytes)
			}
		})
	}
}

// TestAgentQueuedEnrolmentAttests: the daemon sends a queued enrolment from
// a bundle on the stick as `shoal-agent enrol` does: a device with a TPM
// (swtpm) attests, the hub holds its AK right after enrolment, and the
// running daemon then attests with that AK; a hub with no verifier enrols it
// unattested, and the log says so.
func TestAgentQueuedEnrolmentAttests(t *testing.T) {
	f := newFleet(t)
	f.commit(attestedFleet())
	cases := []struct {
		name         string
		verifier     bool
		logged, with string // a log line with both
	}{
		{"hub verifies", true, `level=INFO msg="enrolled with the hub from the queued enrolment"`, `how="tpm key, attested, AK bound to EK"`},
		{"hub has no verifier", false, `level=WARN msg="enrolled with the hub from the queued enrolment"`, `how="tpm key, not attested: the hub has no attestation verifier"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sw := swtpmtest.Start(t, "")
			st, h, hubURL := startHub(t, func(o *hub.Options) {
				if c.verifier {
					o.Verifier = verifierFor(t, o.Store, "", false)
				}
			})
			tok, err := hub.CreateEnrolToken(t.Context(), st, "d1", time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			key, _ := provision.GenerateKey()
			stick, dir := t.TempDir(), t.TempDir()
			writeBundle(t, filepath.Join(stick, "b.shoal"), provision.CreateOptions{FleetDir: f.Dir, Devices: []string{"d1"}, Key: key,
				HubURL: hubURL, HubCA: h.CAFingerprint(), Tokens: map[string]string{"d1": tok.Token}})
			cfgPath, _ := stickConfig(t, dir, stick, "tcp:"+sw.Addr, "2s", "")
			logs := runDaemon(t, cfgPath)
			var d store.Device
			waitUntil(t, "d1 enrolled", func() bool { d, err = st.Device(t.Context(), "d1"); return err == nil })
			if d.KeyKind != api.KeyTPM || c.verifier != (len(d.AK) > 0) {
				t.Fatalf("enrolled with key %s and a %d-byte AK; want a tpm key and an AK: %v", d.KeyKind, len(d.AK), c.verifier)
			}
			if c.verifier {
				// The running daemon attests after enrolling, with the AK registered then.
				waitUntil(t, "an attestation after the queued enrolment", func() bool {
					as, err := st.Attestations(t.Context(), "d1", 1)
					return err == nil && len(as) == 1
				})
				as, _ := st.Attestations(t.Context(), "d1", 1)
				if after, err := st.Device(t.Context(), "d1"); !as[0].OK || err != nil || !bytes.Equal(after.AK, d.AK) {
					t.Fatalf("attestation after the queued enrolment: ok %v %s; AK kept: %v (%v)", as[0].OK, as[0].Result, bytes.Equal(after.AK, d.AK), err)
				}
			}
			waitUntil(t, "the enrolment logged", func() bool {
				for _, l := range strings.Split(logs.String(), "\n") {
					if strings.Contains(l, c.logged) && strings.Contains(l, c.with) {
						return true
					}
				}
				return false
			})
		})
	}
}

// TestDeviceClock: before the first pass of a boot, the device's clock is
// held at or after the commit it applied last, whatever the system clock
// says; with no applied commit it is the system's.
func TestDeviceClock(t *testing.T) {
	later := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name  string
		state *agent.State // nil: no state.json
		least time.Time
	}{
		{"no state", nil, time.Now()},
		{"applied commit from the future", &agent.State{Version: agent.StateVersion, Applied: agent.Applied{Commit: strings.Repeat("a", 40), CommitTime: later}}, later},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.state != nil {
				b, err := json.Marshal(tc.state)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			now := deviceClock(&agent.Config{StateDir: dir}, slog.New(slog.DiscardHandler)).Now()
			if now.Before(tc.least) {
				t.Fatalf("device clock %v, want at least %v", now, tc.least)
			}
		})
	}
}
