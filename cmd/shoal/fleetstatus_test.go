package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/hub/web"
)

// TestFleetStatus runs `shoal fleet status` and `shoal fleet device` against
// a real hub with the status page mounted; the device reports over mutual TLS.
func TestFleetStatus(t *testing.T) {
	ctx := t.Context()
	st, h, hubURL := startWebHub(t)

	// One device per state: press-1 converged, press-2 stalled, then one
	// for each other state of api.States.
	states := map[string]api.State{"press-1": api.StateConverged, "press-2": api.StateStalled}
	ids := []string{"press-1", "press-2"}
	rolledBack := time.Now().Add(-30 * time.Second).Truncate(time.Second)
	for _, st := range api.States {
		if st != api.StateConverged && st != api.StateStalled {
			id := "other-" + string(st)
			states[id] = st
			ids = append(ids, id)
		}
	}
	for i, id := range ids {
		tr, err := hub.CreateEnrolToken(ctx, st, id, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c, err := client.Enrol(ctx, hubURL, tr.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: h.CAFingerprint()})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(client.Options{Hub: hubURL, Key: key, Cert: c})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.CloseIdleConnections()
		s := &api.Status{APIVersion: api.Version, DeviceID: id, Seq: 1, Time: time.Now(), State: api.StateConverged, Groups: []string{"line-a"},
			Commit: api.CommitStatus{Attempted: "abcdef0123456789", Applied: "abcdef0123456789"},
			Apps:   []api.AppStatus{{Name: "plc-bridge", State: "running", Health: "healthy"}},
			Update: &api.UpdateStatus{State: "committed", Slot: "a", Version: "2.0.1"}}
		s.State = states[id]
		if s.State == api.StateWaiting {
			s.Problem = &api.Problem{Kind: "waiting", Reason: "fetch-failed", Message: "dial tcp: refused"}
		}
		if i > 1 {
			s.Groups = []string{"line-c"}
		}
		if i == 1 {
			s.Apps[0].Rollback = &api.Rollback{Check: "health-failed", ExitCode: 2, LogTail: []string{"panic: boom"}, Message: "exited with code 2",
				Time: rolledBack}
			s.State, s.Groups = api.StateStalled, []string{"line-b"}
			s.Commit.Attempted = "ffff000011112222"
			s.Problem = &api.Problem{Kind: "stalled", Reason: "spec-invalid", Message: "apps/plc.yaml:4:3: image: missing"}
		}
		if _, err := cl.Send(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	op, err := hub.CreateOperatorToken(ctx, st, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, h.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SHOAL_HUB", hubURL)
	t.Setenv("SHOAL_HUB_CA", caFile)
	t.Setenv("SHOAL_OPERATOR_TOKEN", op)

	cases := []struct {
		name    string
		args    []string
		want    []string
		notWant []string
	}{
		{"all", []string{"status"}, []string{"all 5", "converged 1", "stalled 1", "degraded 1", "press-1", "press-2", "abcdef01", "2.0.1@a", "1/1"}, nil},
		{"group", []string{"status", "--group", "line-b"}, []string{"all 1", "press-2", "stalled"}, []string{"press-1 "}},
		{"state", []string{"status", "--state", "stalled"}, []string{"press-2"}, []string{"press-1 "}},
		{"json", []string{"status", "--json", "--group", "line-a"}, []string{`"id": "press-1"`, `"appliedCommit": "abcdef0123456789"`}, []string{"press-2"}},
		{"device", []string{"device", "press-2"}, []string{"applied    abcdef0123456789", "attempted  ffff000011112222", "spec-invalid: apps/plc.yaml:4:3: image: missing", "plc-bridge", "committed, running 2.0.1 on slot a",
			"rollback of plc-bridge " + rolledBack.UTC().Format(time.RFC3339) + " (", "s ago): health-failed (exit 2): exited with code 2", "  | panic: boom"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := newFleetCmd()
			var out, errb bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&errb)
			cmd.SetArgs(c.args)
			if err := cmd.ExecuteContext(ctx); err != nil {
				t.Fatalf("%v: %v (%s)", c.args, err, errb.String())
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range c.notWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q:\n%s", w, out.String())
				}
			}
		})
	}
	// Every state of the vocabulary is a filter, and lists the devices the
	// table shows in that state.
	for _, st := range api.States {
		t.Run("state "+string(st), func(t *testing.T) {
			cmd := newFleetCmd()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&bytes.Buffer{})
			cmd.SetArgs([]string{"status", "--state", string(st), "--json"})
			if err := cmd.ExecuteContext(ctx); err != nil {
				t.Fatalf("--state %s: %v", st, err)
			}
			var f web.Fleet
			if err := json.Unmarshal(out.Bytes(), &f); err != nil {
				t.Fatal(err)
			}
			if len(f.Devices) != 1 || f.Devices[0].State != string(st) || states[f.Devices[0].ID] != st || f.Counts[string(st)] != 1 {
				t.Errorf("--state %s: %+v", st, f)
			}
		})
	}
	cmd := newFleetCmd()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"status", "--state", "bogus"})
	if err := cmd.ExecuteContext(ctx); err == nil {
		t.Error("--state bogus accepted")
	}
	cmd.SetArgs([]string{"device", "nope"})
	if err := cmd.ExecuteContext(ctx); err == nil {
		t.Error("unknown device: no error")
	}
}

// startWebHub runs a hub on SQLite with the status page mounted on a
// loopback port until the test ends.
func startWebHub(t *testing.T) (store.Store, *hub.Hub, string) {
	t.Helper()
	ctx := t.Context()
	st, err := store.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "hub.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	wh, err := web.New(web.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	h, err := hub.New(ctx, hub.Options{Store: st, Web: wh})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- h.Run(rctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return st, h, "https://" + l.Addr().String()
}

// TestPrintDeviceAttestation: shoal fleet device says "PCRs not checked"
// for a verdict that held no PCR values, never "passed".
func TestPrintDeviceAttestation(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		dd      web.DeviceDetail
		want    string
		mustNot string
	}{
		{web.DeviceDetail{Device: web.Device{ID: "a", Attestation: web.AttestPCRsNotChecked}, Verdicts: []web.Verdict{{Time: at, OK: true}}},
			"attest     PCRs not checked (2025-01-02T03:04:05Z: the quote is fresh and signed, but the hub had no PCR values", "passed"},
		{web.DeviceDetail{Device: web.Device{ID: "b", Attestation: web.AttestOK}, Verdicts: []web.Verdict{{Time: at, OK: true, CheckedPCRs: []int{0, 7}}}},
			"attest     passed (PCRs 0 7 held to the release's values", "not checked"},
	} {
		var b bytes.Buffer
		printDevice(&b, c.dd)
		if !strings.Contains(b.String(), c.want) || strings.Contains(b.String(), c.mustNot) {
			t.Errorf("device %s:\n%s\nwant %q, not %q", c.dd.Device.ID, b.String(), c.want, c.mustNot)
		}
	}
}
