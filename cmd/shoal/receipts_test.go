package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/provision"
)

// TestReceiptsImport carries a stick's receipts to a real hub with
// `shoal receipts import`: the hub accepts the one signed by the device's
// enrolled key, refuses the others with their reasons, reports a second
// import as duplicates, and `shoal fleet device` then shows the receipt.
func TestReceiptsImport(t *testing.T) {
	ctx := t.Context()
	st, h, hubURL := startWebHub(t)

	keys := map[string]*ecdsa.PrivateKey{}
	for _, id := range []string{"dev-1", "dev-2"} {
		tr, err := hub.CreateEnrolToken(ctx, st, id, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		keys[id], _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c, err := client.Enrol(ctx, hubURL, tr.Token, keys[id], api.KeySoftware, client.EnrolOptions{CAFingerprint: h.CAFingerprint()})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(client.Options{Hub: hubURL, Key: keys[id], Cert: c})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.CloseIdleConnections()
		s := &api.Status{APIVersion: api.Version, DeviceID: id, Seq: 1, Time: time.Now().Add(-time.Hour), State: api.StateConverged,
			Commit: api.CommitStatus{Attempted: strings.Repeat("a", 40), Applied: strings.Repeat("a", 40)}}
		if _, err := cl.Send(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stick := t.TempDir()
	commit := strings.Repeat("b", 40)
	mk := func(name, dev string, key *ecdsa.PrivateKey) {
		r := &api.Receipt{APIVersion: api.ReceiptVersion, DeviceID: dev, BundleHash: strings.Repeat("c", 64),
			Commit: commit, Release: "3.0.0", Result: api.ReceiptApplied, Time: time.Now().UTC(), Errors: []string{"tpm quote: no TPM"}}
		if err := provision.WriteReceipt(filepath.Join(stick, name), r, key); err != nil {
			t.Fatal(err)
		}
	}
	mk("x.dev-1.receipt.json", "dev-1", keys["dev-1"])
	mk("x.dev-2.receipt.json", "dev-2", stranger) // signed, but not by dev-2's enrolled key
	mk("x.dev-9.receipt.json", "dev-9", stranger) // no such device
	os.WriteFile(filepath.Join(stick, "y.dev-1.receipt.json"), []byte(`{"apiVersion":"shoal.receipt/v1","deviceID":"dev-1","result":"applied"}`), 0o644)

	op, err := hub.CreateOperatorToken(ctx, st, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, h.CAPEM(), 0o644)
	tok := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tok, []byte(op+"\n"), 0o600)

	code, out := runShoal(t, "receipts", "import", "--hub", hubURL, "--ca", ca, "--token-file", tok, stick)
	if code != exitInvalid {
		t.Fatalf("exit %d, want 1 (three bad receipts)\n%s", code, out)
	}
	for _, want := range []string{"accepted dev-1 applied cccccccccccc", "refused  dev-2", "receipt-key-mismatch", "refused  dev-9", "device-unknown", "y.dev-1.receipt.json", "not signed"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for id, n := range map[string]int{"dev-1": 1, "dev-2": 0} {
		if rs, err := st.Receipts(ctx, id, 10); err != nil || len(rs) != n {
			t.Errorf("%s: %d receipts stored, want %d (%v)", id, len(rs), n, err)
		}
	}

	// The same stick again: the good one is a duplicate, nothing new is written.
	os.Remove(filepath.Join(stick, "x.dev-2.receipt.json"))
	os.Remove(filepath.Join(stick, "x.dev-9.receipt.json"))
	os.Remove(filepath.Join(stick, "y.dev-1.receipt.json"))
	code, out = runShoal(t, "receipts", "import", "--hub", hubURL, "--ca", ca, "--token-file", tok, stick)
	if code != 0 || !strings.Contains(out, "accepted dev-1 applied cccccccccccc (already recorded)") {
		t.Fatalf("second import: exit %d\n%s", code, out)
	}
	if rs, _ := st.Receipts(ctx, "dev-1", 10); len(rs) != 1 {
		t.Errorf("second import stored %d receipts", len(rs))
	}

	// shoal fleet device shows the offline work and the receipt.
	t.Setenv("SHOAL_HUB", hubURL)
	t.Setenv("SHOAL_HUB_CA", ca)
	t.Setenv("SHOAL_OPERATOR_TOKEN", op)
	cmd := newFleetCmd()
	var buf, errb bytes.Buffer
	cmd.SetOut(&buf)
	cmd.SetErr(&errb)
	cmd.SetArgs([]string{"device", "dev-1"})
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("fleet device: %v (%s)", err, errb.String())
	}
	for _, want := range []string{"offline    bundle applied", "commit " + commit, "release 3.0.0", "RECEIPTS", "cccccccccccc", "tpm quote: no TPM"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("fleet device output lacks %q:\n%s", want, buf.String())
		}
	}
}
