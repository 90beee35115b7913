package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// hubRoot is the root command with the hub commands, whether or not main
// registers them yet.
func hubRoot() *cobra.Command {
	root := newRootCmd()
	have := map[string]bool{}
	for _, c := range root.Commands() {
		have[c.Name()] = true
	}
	for _, c := range []*cobra.Command{newHubCmd(), newTokenCmd(), newPokeCmd()} {
		if !have[c.Name()] {
			root.AddCommand(c)
		}
	}
	return root
}

// cli runs one shoal command: in-process, or through the built binary.
type cli interface {
	run(t *testing.T, env []string, args ...string) (code int, stdout, stderr string)
	// serve starts `shoal hub …` and returns a function that stops it
	// (SIGTERM or cancel) and returns its exit code.
	serve(t *testing.T, args ...string) func() int
}

type inProcess struct{}

func (inProcess) run(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	root := hubRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	code := 0
	if err := root.ExecuteContext(t.Context()); err != nil {
		errb.WriteString(err.Error())
		code = exitInvalid
		if _, ok := err.(usageError); ok {
			code = exitUsage
		}
	}
	return code, out.String(), errb.String()
}

func (inProcess) serve(t *testing.T, args ...string) func() int {
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() {
		root := hubRoot()
		root.SetArgs(args)
		root.SetErr(&bytes.Buffer{})
		done <- root.ExecuteContext(ctx)
	}()
	return func() int {
		cancel()
		if err := <-done; err != nil {
			t.Logf("hub: %v", err)
			return 1
		}
		return 0
	}
}

type binary struct{ path string }

func (b binary) run(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), b.path, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func (b binary) serve(t *testing.T, args ...string) func() int {
	cmd := exec.Command(b.path, args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	var code int
	go func() {
		cmd.Wait()
		code = cmd.ProcessState.ExitCode()
		close(done)
	}()
	return func() int {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("hub did not stop within 30s of SIGTERM; log:\n%s", errb.String())
			cmd.Process.Kill()
			<-done
		}
		if code != 0 {
			t.Logf("hub log:\n%s", errb.String())
		}
		return code
	}
}

func freeAddr(t *testing.T) string { return testenv.FreeAddr(t) }

// hubFlow drives the operator's and a device's whole story through c.
func hubFlow(t *testing.T, c cli) {
	ctx := t.Context()
	dir := t.TempDir()
	db := "sqlite://" + filepath.Join(dir, "hub.db")
	code, out, errs := c.run(t, nil, "hub", "token", "create", "--db", db)
	if code != 0 {
		t.Fatalf("hub token create: %d %s", code, errs)
	}
	op := strings.TrimSpace(out)
	if !strings.HasPrefix(op, "shoal_op_") {
		t.Fatalf("operator token %q", op)
	}
	addr := freeAddr(t)
	hubURL := "https://" + addr
	pprofAddr := freeAddr(t)
	stop := c.serve(t, "hub", "--listen", addr, "--db", db, "--host", "127.0.0.1", "--pprof", pprofAddr)

	// The CA is in the database once the hub has started.
	var ca store.CA
	st, err := store.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pool := x509.NewCertPool()
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if ca, err = st.CA(ctx); err == nil {
			pool.AppendCertsFromPEM(ca.CertPEM)
			hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}
			if resp, err := hc.Get(hubURL + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("hub not healthy within 60s")
		}
		<-tick.C // another process: no event to wait on, so poll the condition
	}
	// The profiler, on its own loopback listener.
	if resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/cmdline"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("--pprof %s: %v %v", pprofAddr, resp, err)
	} else {
		resp.Body.Close()
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"SHOAL_OPERATOR_TOKEN=" + op, "SHOAL_HUB=" + hubURL, "SHOAL_HUB_CA=" + caFile}

	// The CA and its fingerprint: offline from the database, and fetched
	// from the hub with the fingerprint to check it.
	code, out, errs = c.run(t, nil, "hub", "ca", "--db", db)
	caFP := regexp.MustCompile(`sha256 fingerprint: ([0-9a-f]{64})`).FindStringSubmatch(errs)
	if code != 0 || out != string(ca.CertPEM) || caFP == nil {
		t.Fatalf("hub ca --db: exit %d\nstdout %q\nstderr %q", code, out, errs)
	}
	if code, out, _ = c.run(t, nil, "hub", "ca", "--db", db, "--fingerprint"); code != 0 || strings.TrimSpace(out) != caFP[1] {
		t.Fatalf("hub ca --fingerprint: %d %q, want %s", code, out, caFP[1])
	}
	fetched := filepath.Join(dir, "fetched-ca.pem")
	if code, _, errs = c.run(t, nil, "hub", "ca", "--hub", hubURL, "--ca-fingerprint", caFP[1], "--out", fetched); code != 0 {
		t.Fatalf("hub ca --hub: %d %s", code, errs)
	}
	if b, err := os.ReadFile(fetched); err != nil || string(b) != string(ca.CertPEM) {
		t.Fatalf("hub ca --hub wrote %q (%v), want the CA", b, err)
	}
	otherCA, _, err := hub.NewCA("another hub", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(dir, "other-ca.pem")
	if err := os.WriteFile(otherFile, otherCA, 0o600); err != nil {
		t.Fatal(err)
	}
	wrongFP := strings.Repeat("ab", 32)
	noTrust := []string{"SHOAL_OPERATOR_TOKEN=" + op, "SHOAL_HUB=" + hubURL, "SHOAL_HUB_CA=", "SHOAL_HUB_CA_FINGERPRINT="}
	trust := []struct {
		name string
		env  []string
		args []string
		code int
		want []string
	}{
		{"hub ca --hub without a fingerprint", nil, []string{"hub", "ca", "--hub", hubURL}, exitUsage, []string{"--ca-fingerprint"}},
		{"hub ca --hub, wrong fingerprint", nil, []string{"hub", "ca", "--hub", hubURL, "--ca-fingerprint", wrongFP}, exitInvalid, []string{"pinned CA", caFP[1]}},
		{"CA not trusted", noTrust, []string{"token", "create", "--device", "dev-x"}, exitInvalid,
			[]string{"unknown authority", "--ca FILE", "SHOAL_HUB_CA", "--ca-fingerprint", "shoal hub ca --db DB"}},
		{"another CA", append(noTrust, "SHOAL_HUB_CA="+otherFile), []string{"token", "create", "--device", "dev-x"}, exitInvalid,
			[]string{"does not chain to --ca " + otherFile, "shoal hub ca"}},
		{"wrong fingerprint", append(noTrust, "SHOAL_HUB_CA_FINGERPRINT="+wrongFP), []string{"token", "create", "--device", "dev-x"}, exitInvalid,
			[]string{"not the one --ca-fingerprint pins", caFP[1]}},
		{"pinned fingerprint", append(noTrust, "SHOAL_HUB_CA_FINGERPRINT="+caFP[1]), []string{"token", "create", "--device", "dev-y"}, 0, nil},
	}
	for _, tc := range trust {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := c.run(t, tc.env, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
		})
	}

	cases := []struct {
		name string
		env  []string
		args []string
		code int
		err  string
	}{
		{"no device", env, []string{"token", "create"}, exitUsage, "--device is required"},
		{"bad device", env, []string{"token", "create", "--device", "Bad ID"}, exitUsage, "--device"},
		{"no operator token", []string{"SHOAL_OPERATOR_TOKEN=", "SHOAL_HUB=" + hubURL, "SHOAL_HUB_CA=" + caFile}, []string{"poke"}, exitUsage, "operator token is required"},
		{"wrong operator token", []string{"SHOAL_OPERATOR_TOKEN=shoal_op_nope", "SHOAL_HUB=" + hubURL, "SHOAL_HUB_CA=" + caFile}, []string{"poke"}, exitInvalid, "unauthorized"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := c.run(t, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.err) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errs, tc.code, tc.err)
			}
		})
	}

	code, out, errs = c.run(t, env, "token", "create", "--device", "dev-cli", "--ttl", "1h")
	if code != 0 {
		t.Fatalf("token create: %d %s", code, errs)
	}
	tok := regexp.MustCompile(`token:\s+(\S+)`).FindStringSubmatch(out)
	fp := regexp.MustCompile(`ca-fingerprint:\s+([0-9a-f]{64})`).FindStringSubmatch(out)
	if tok == nil || fp == nil {
		t.Fatalf("token create printed %q", out)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, err := client.Enrol(ctx, hubURL, tok[1], key, api.KeySoftware, client.EnrolOptions{CAFingerprint: fp[1]})
	if err != nil {
		t.Fatalf("enrol with the printed token and fingerprint: %v", err)
	}
	cl, err := client.New(client.Options{Hub: hubURL, Key: key, Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseIdleConnections()
	if err := cl.Report(ctx, api.Status{APIVersion: api.Version, Seq: 1, Time: time.Now(), State: api.StateConverged, Groups: []string{"edge"}}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *api.Poke, 1)
	go func() {
		p, _, err := cl.Poll(ctx, 0, 30*time.Second)
		if err != nil {
			t.Errorf("poll: %v", err)
		}
		got <- p
	}()
	code, out, errs = c.run(t, env, "poke", "--group", "edge", "--commit", "abc")
	if code != 0 || !strings.Contains(out, "sent to 1 device(s)") {
		t.Fatalf("poke: %d %q %q", code, out, errs)
	}
	if p := <-got; p == nil || p.Commit != "abc" {
		t.Fatalf("device got %+v", p)
	}
	code, out, _ = c.run(t, env, "hub", "device", "list")
	if code != 0 || !regexp.MustCompile(`dev-cli\s+converged\s+1`).MatchString(out) {
		t.Fatalf("device list: %d %q", code, out)
	}
	if code, out, errs = c.run(t, env, "hub", "device", "revoke", "dev-cli"); code != 0 || !strings.Contains(out, "device dev-cli revoked") {
		t.Fatalf("device revoke: %d %q %s", code, out, errs)
	}
	// Revoking tokens says which token it was and what that did.
	if code, out, errs = c.run(t, env, "token", "revoke", tok[1]); code != 0 || !strings.Contains(out, "enrol token for dev-cli revoked") ||
		!strings.Contains(out, "already been used") || !strings.Contains(out, "shoal hub device revoke dev-cli") {
		t.Fatalf("revoke a used token: %d %q %s", code, out, errs)
	}
	code, out, _ = c.run(t, env, "token", "create", "--device", "dev-later")
	unused := regexp.MustCompile(`token:\s+(\S+)`).FindStringSubmatch(out)
	if code != 0 || unused == nil {
		t.Fatalf("token create: %d %q", code, out)
	}
	if code, out, errs = c.run(t, env, "token", "revoke", unused[1]); code != 0 || !strings.Contains(out, "enrol token for dev-later revoked: unused") {
		t.Fatalf("revoke an unused token: %d %q %s", code, out, errs)
	}
	if code, _, errs = c.run(t, env, "token", "revoke", unused[1]+"x"); code != exitInvalid || !strings.Contains(errs, "not-found") {
		t.Fatalf("revoke an unknown token: %d %s", code, errs)
	}
	cl.CloseIdleConnections()
	if err := cl.Report(ctx, api.Status{APIVersion: api.Version, Seq: 2, Time: time.Now(), State: api.StateConverged}); err == nil {
		t.Fatal("revoked device still reporting")
	}
	// The live /metrics, after enrolment, reports, a poke and refusals, is
	// lint-clean for Prometheus.
	if resp, err := hc.Get(hubURL + "/metrics"); err != nil {
		t.Fatal(err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		testenv.CheckMetrics(t, "the hub's /metrics", b)
	}
	if code := stop(); code != 0 {
		t.Fatalf("hub exited %d on shutdown", code)
	}
	// With the hub stopped, its operator token is revoked in the database.
	if code, out, errs = c.run(t, nil, "hub", "token", "revoke", "--db", db, op); code != 0 || !strings.Contains(out, "operator token revoked") {
		t.Fatalf("hub token revoke: %d %q %s", code, out, errs)
	}
}

func TestHubCommands(t *testing.T) { hubFlow(t, inProcess{}) }

// TestHubBinary runs the same story through the built binary, with SIGTERM
// for the graceful stop. Until main.go registers the hub commands, the
// binary is built with a go build -overlay that adds them.
func TestHubBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "shoal")
	args := []string{"build", "-o", bin}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), "newHubCmd()") {
		patched := strings.Replace(string(src), "root.AddCommand(\n", "root.AddCommand(\n\t\tnewHubCmd(), newTokenCmd(), newPokeCmd(),\n", 1)
		if patched == string(src) {
			t.Fatal("main.go registers no hub commands and has no root.AddCommand( to add them to")
		}
		abs, _ := filepath.Abs("main.go")
		over := filepath.Join(dir, "main.go")
		ov := filepath.Join(dir, "overlay.json")
		if err := os.WriteFile(over, []byte(patched), 0o600); err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(map[string]map[string]string{"Replace": {abs: over}})
		if err := os.WriteFile(ov, js, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-overlay", ov)
	}
	build := exec.CommandContext(t.Context(), "go", append(args, ".")...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	hubFlow(t, binary{bin})
}
