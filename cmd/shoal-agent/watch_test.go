package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/provision"
)

// syncBuffer is a log the agent writes while the test reads it.
type syncBuffer = testenv.Buffer

// TestAgentWatchesStick runs the wired agent daemon (the real device parts,
// a software key) with no reachable fleet repo and a real hub: a bundle
// dropped on the watched stick provisions the device, its queued enrolment
// is sent to the hub, and the first report shows the bundle's commit; a
// later bundle updates the device offline and the next report shows the new
// commit. The receipts left on the stick are signed by the key the hub
// recorded at enrolment. A bundle with a refused token is reported, not
// retried at full speed.
func TestAgentWatchesStick(t *testing.T) {
	f := newFleet(t)
	f.commit(validFleet())
	c1 := f.head()

	st, h, hubURL := startHub(t, nil)
	tok, err := hub.CreateEnrolToken(t.Context(), st, "d1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	key, _ := provision.GenerateKey()
	bundle := func(dst string, tokens map[string]string, devices ...string) {
		t.Helper()
		writeBundle(t, dst, provision.CreateOptions{FleetDir: f.Dir, Devices: devices, Key: key, HubURL: hubURL, HubCA: h.CAFingerprint(), Tokens: tokens})
	}

	stick, dir := t.TempDir(), t.TempDir()
	cfgPath, state := stickConfig(t, dir, stick, "none", "2s", "")
	logs := runDaemon(t, cfgPath)
	latest := func() *api.Status {
		reps, err := st.Reports(t.Context(), "d1", 1)
		if err != nil || len(reps) == 0 {
			return nil
		}
		var s api.Status
		if json.Unmarshal(reps[0].Body, &s) != nil {
			return nil
		}
		return &s
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s\nagent log:\n%s", what, logs.String())
			}
			<-time.After(50 * time.Millisecond)
		}
	}

	// 1. Provisioning: the bundle carries the token; the device enrols and reports.
	bundle(filepath.Join(stick, "1-first.shoal"), map[string]string{"d1": tok.Token}, "d1")
	waitFor("a report with the first bundle's commit", func() bool { s := latest(); return s != nil && s.Commit.Applied == c1 })
	if e, err := provision.ReadEnrolment(state); err != nil || e != nil {
		t.Errorf("queued enrolment still there after enrolling: %+v %v", e, err)
	}
	s := latest()
	if len(s.Stages) == 0 || s.Stages[0].Name != "provision" || !strings.Contains(s.Stages[0].Summary, "applied offline: commit "+c1[:12]) {
		t.Errorf("provision stage in the report: %+v", s.Stages)
	}

	// 2. An offline update: a newer commit on the stick.
	f.commit(map[string]string{"devices/d1.yaml": "labels:\n  role: web\n  floor: \"2\"\n"})
	c2 := f.head()
	bundle(filepath.Join(stick, "2-update.shoal"), nil, "d1")
	waitFor("a report with the second bundle's commit", func() bool { s := latest(); return s != nil && s.Commit.Applied == c2 })

	// The receipts on the stick are signed by the key the hub recorded.
	enrolled, err := st.DeviceKey(t.Context(), "d1")
	if err != nil || enrolled == nil {
		t.Fatalf("hub has no key for d1: %v", err)
	}
	for name, commit := range map[string]string{"1-first.shoal.d1.receipt.json": c1, "2-update.shoal.d1.receipt.json": c2} {
		b, err := os.ReadFile(filepath.Join(stick, name))
		if err != nil {
			t.Fatal(err)
		}
		rc, _, err := api.VerifyReceipt(b)
		if err != nil || rc.Result != api.ReceiptApplied || rc.Commit != commit || !bytes.Equal(rc.PublicKey, enrolled) {
			t.Errorf("%s: %+v %v (signed by the enrolled key: %t)", name, rc, err, rc != nil && bytes.Equal(rc.PublicKey, enrolled))
		}
	}
}

// TestAgentQueuedEnrolmentRefused: a token the hub refuses is reported in
// the provision stage and retried at retry_max, not in a tight loop.
func TestAgentQueuedEnrolmentRefused(t *testing.T) {
	f := newFleet(t)
	f.commit(validFleet())
	_, h, hubURL := startHub(t, nil)

	key, _ := provision.GenerateKey()
	stick, dir := t.TempDir(), t.TempDir()
	writeBundle(t, filepath.Join(stick, "b.shoal"), provision.CreateOptions{FleetDir: f.Dir, Devices: []string{"d1"}, Key: key,
		HubURL: hubURL, HubCA: h.CAFingerprint(), Tokens: map[string]string{"d1": "shoal_enrol_not-a-real-token"}})
	cfgPath, state := stickConfig(t, dir, stick, "none", "1h", "")

	logs := runDaemon(t, cfgPath)
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, err := agent.ReadState(state)
		if err == nil && s.LastPass != nil {
			if sr, ok := s.LastPass.Stages["provision"]; ok && strings.Contains(sr.Summary, "queued enrolment refused") && strings.Contains(sr.Summary, "token-invalid") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusal not reported in the provision stage\n%s", logs.String())
		}
		<-time.After(50 * time.Millisecond)
	}
	// With retry_max 1h the token is not tried again while the test runs.
	<-time.After(time.Second)
	if n := strings.Count(logs.String(), "queued enrolment refused"); n != 1 {
		t.Errorf("refused enrolment tried %d times in a second, want once\n%s", n, logs.String())
	}
	if e, _ := provision.ReadEnrolment(state); e == nil {
		t.Error("the refused enrolment was dropped; it stays queued for a look by a person")
	}
}

// writeBundle writes the bundle o describes to dst, whole or not at all, as
// a copy to a stick finishes.
func writeBundle(t *testing.T, dst string, o provision.CreateOptions) {
	t.Helper()
	out, err := os.Create(dst + ".part")
	if err != nil {
		t.Fatal(err)
	}
	o.TempDir = t.TempDir()
	if _, err := provision.Create(t.Context(), out, o); err != nil {
		t.Fatal(err)
	}
	out.Close()
	if err := os.Rename(dst+".part", dst); err != nil {
		t.Fatal(err)
	}
}

// runDaemon runs the wired agent daemon on cfgPath until the test ends; it
// must then stop cleanly within 20 s. The returned log is what it wrote.
func runDaemon(t *testing.T, cfgPath string) *syncBuffer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		root := newWiredRootCmd(ctx)
		root.SetArgs([]string{"--config", cfgPath})
		root.SetOut(logs)
		root.SetErr(logs)
		done <- root.ExecuteContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent: %v\n%s", err, logs.String())
			}
		case <-time.After(20 * time.Second):
			t.Errorf("agent did not stop\n%s", logs.String())
		}
	})
	return logs
}

// startHub runs a hub on SQLite over mutual TLS on loopback until the test
// ends; edit adjusts its options.
func startHub(t *testing.T, edit func(*hub.Options)) (store.Store, *hub.Hub, string) {
	t.Helper()
	st, err := store.Open(t.Context(), "sqlite://"+filepath.Join(t.TempDir(), "hub.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	o := hub.Options{Store: st}
	if edit != nil {
		edit(&o)
	}
	h, err := hub.New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hctx, stopHub := context.WithCancel(context.WithoutCancel(t.Context()))
	hubDone := make(chan error, 1)
	go func() { hubDone <- h.Run(hctx, l) }()
	t.Cleanup(func() { stopHub(); <-hubDone })
	return st, h, "https://" + l.Addr().String()
}

// stickConfig writes an agent config in dir for device d1 with no reachable
// fleet repo, containers off, trust.tpm tpm ("none": a software key) and
// provision.watch on stick (looked at every 100 ms), plus extra YAML; it
// returns the config's path and the state dir.
func stickConfig(t *testing.T, dir, stick, tpm, retryMax, extra string) (string, string) {
	t.Helper()
	state := filepath.Join(dir, "state")
	cfg := fmt.Sprintf(`device_id: d1
state_dir: %s
repo:
  url: file://%s/offline
metrics_addr: ""
docker_root: ""
poll_interval: 1h
retry_min: 50ms
retry_max: %s
containers:
  enabled: false
trust:
  tpm: %s
provision:
  watch: %s
  interval: 100ms
  # Each test makes a fresh bundle key: trust the first bundle's own.
  trust_first_bundle: true
`, state, dir, retryMax, tpm, stick) + extra
	p := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, state
}

// TestAgentRenewsAfterQueuedEnrolment: a device that enrols from a stick
// while the daemon runs renews its certificate before it expires, without a
// restart, keeps the new one in its state dir, and reports go on being
// stored after the first certificate has expired.
func TestAgentRenewsAfterQueuedEnrolment(t *testing.T) {
	f := newFleet(t)
	f.commit(validFleet())
	const ttl = 6 * time.Second // renewal is due after two thirds
	st, h, hubURL := startHub(t, func(o *hub.Options) { o.CertTTL = ttl })
	tok, err := hub.CreateEnrolToken(t.Context(), st, "d1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := provision.GenerateKey()
	stick, dir := t.TempDir(), t.TempDir()
	writeBundle(t, filepath.Join(stick, "b.shoal"), provision.CreateOptions{FleetDir: f.Dir, Devices: []string{"d1"}, Key: key,
		HubURL: hubURL, HubCA: h.CAFingerprint(), Tokens: map[string]string{"d1": tok.Token}})
	cfgPath, state := stickConfig(t, dir, stick, "none", "2s", "")
	logs := runDaemon(t, cfgPath)
	var first store.Device
	waitUntil(t, "d1 enrolled", func() bool { first, err = st.Device(t.Context(), "d1"); return err == nil })
	waitUntil(t, "the certificate renewed", func() bool {
		d, err := st.Device(t.Context(), "d1")
		return err == nil && d.CertSerial != first.CertSerial
	})
	waitUntil(t, "the renewed certificate in the state dir", func() bool {
		var kept api.Certificate
		b, err := os.ReadFile(certificatePath(state))
		return err == nil && json.Unmarshal(b, &kept) == nil && kept.NotAfter.After(first.CertNotAfter)
	})
	// Past the first certificate's expiry, a poke still reaches the device
	// and its report is stored.
	time.Sleep(time.Until(first.CertNotAfter))
	reps, _ := st.Reports(t.Context(), "d1", 1)
	var last uint64
	if len(reps) > 0 {
		last = reps[0].Seq
	}
	if _, err := h.Poke(t.Context(), store.Poke{Devices: []string{"d1"}, Reason: "operator", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	waitUntil(t, "a report after the first certificate expired", func() bool {
		reps, err := st.Reports(t.Context(), "d1", 1)
		return err == nil && len(reps) == 1 && reps[0].Seq > last
	})
	if !strings.Contains(logs.String(), "device certificate renewed") {
		t.Errorf("no renewal logged:\n%s", logs.String())
	}
}
