package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// The shipped wiring, end to end: shoal-agent --once with the real container
// and trust stages converges a device on a fleet repo commit, through the
// real Docker Engine, and writes what it did into state and status.
func TestAgentWiredConvergesContainers(t *testing.T) {
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	tag := "shoal-wire-test:" + label
	dockertest.Image(t, cli, tag, label, nil)

	// The fleet repo ships the image as a tar with its sha256: no registry.
	repo := t.TempDir()
	files := webFleet(t, cli, tag, label)
	files["fleet.cue"] = "spec: network: \"" + "net-" + label + "\"\n"
	writeFiles(t, repo, files)
	testenv.GitCommitAll(t, repo, "one web app")

	// A real hub (SQLite, mutual TLS) the device enrols with through the CLI.
	verifier, err := hub.NewAttestVerifier(attest.VerifierOptions{Counters: &attest.MemCounterStore{}})
	if err != nil {
		t.Fatal(err)
	}
	st, h, hubURL := startHub(t, func(o *hub.Options) { o.Verifier = verifier })
	tok, err := hub.CreateEnrolToken(t.Context(), st, "d1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	state := t.TempDir()
	prefix := "wire-" + label + "-"
	t.Cleanup(func() { removeByPrefix(t, prefix, "net-"+label) })
	cfgPath := filepath.Join(t.TempDir(), "agent.yaml")
	cfg := fmt.Sprintf("device_id: d1\nstate_dir: %s\nrepo:\n  url: file://%s\nmetrics_addr: \"\"\ncontainers:\n  prefix: %s\ntrust:\n  tpm: none\nhub_url: %s\n", state, repo, prefix, hubURL)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run(context.Background(), []string{"enrol", "--config", cfgPath, "--hub", hubURL, "--token", tok.Token, "--ca-fingerprint", h.CAFingerprint()}); code != exitOK {
		t.Fatalf("shoal-agent enrol exit %d", code)
	}
	if code := run(context.Background(), []string{"enrol", "--config", cfgPath, "--hub", hubURL, "--token", tok.Token, "--ca-fingerprint", h.CAFingerprint()}); code != exitFailed {
		t.Fatalf("enrol with a used token: exit %d, want %d", code, exitFailed)
	}
	if code := run(context.Background(), []string{"--once", "--config", cfgPath}); code != exitOK {
		t.Fatalf("shoal-agent --once exit %d, want 0 (converged)", code)
	}
	list, err := cli.ContainerList(context.Background(), container.ListOptions{Filters: filters.NewArgs(filters.Arg("name", prefix+"web"))})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].State != "running" {
		t.Fatalf("containers named %sweb: %+v", prefix, list)
	}
	st0, err := agent.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	if st0.Applied.Commit == "" || st0.Applied.SpecHash == "" {
		t.Fatalf("state has no applied commit: %+v", st0.Applied)
	}
	// The report reached the hub over mutual TLS, with the app in it.
	reps, err := st.Reports(t.Context(), "d1", 10)
	if err != nil || len(reps) == 0 {
		t.Fatalf("no report at the hub: %v", err)
	}
	body := string(reps[0].Body)
	if !strings.Contains(body, `"web"`) || !strings.Contains(body, st0.Applied.Commit) {
		t.Errorf("report at the hub lacks the app or commit: %s", body)
	}
	// The trust stage quoted with the device's (software) key over a hub
	// nonce, and the hub's verifier accepted it; the weaker key is flagged.
	var rep api.Status
	if err := json.Unmarshal(reps[0].Body, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Attest == nil || !rep.Attest.OK || !rep.Attest.Weak {
		t.Errorf("attestation in the report: %+v", rep.Attest)
	}
	// Each stage's result and the device's resources travel with the report.
	// The update stage runs too: with no A/B slots it says there are no updates.
	if len(rep.Stages) != 3 || rep.Stages[0].Name != "containers" || !rep.Stages[0].Converged || rep.Stages[1].Name != "trust" ||
		rep.Stages[2].Name != "update" || rep.Stages[2].Summary != "no A/B updates configured" {
		t.Errorf("stages in the report: %+v", rep.Stages)
	}
	if r := rep.Resources; r == nil || r.CPUs < 1 || r.MemTotal == 0 || r.StateDiskTotal == 0 {
		t.Errorf("resources in the report: %+v", rep.Resources)
	}
	// A second pass finds nothing to do and stays converged.
	if code := run(context.Background(), []string{"--once", "--config", cfgPath}); code != exitOK {
		t.Fatalf("second pass exit %d", code)
	}
}

// webFleet is a fleet repo's files for device d1 running one app, web, from
// the image tag saved as images/web.tar with its sha256 (no registry).
func webFleet(t *testing.T, cli *client.Client, tag, label string) map[string]string {
	t.Helper()
	rc, err := cli.ImageSave(context.Background(), []string{tag})
	if err != nil {
		t.Fatal(err)
	}
	tarBytes, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(tarBytes)
	return map[string]string{
		"groups/all.yaml": "spec:\n  apps:\n    web: {}\n",
		"devices/d1.yaml": "labels:\n  role: test\n",
		"apps/web.yaml": fmt.Sprintf("image:\n  ref: %s\n  source:\n    path: images/web.tar\n    sha256: %s\ncommand: [\"-listen\", \":8080\"]\nenv:\n  VERSION: \"1\"\nlabels:\n  %s: %s\n",
			tag, hex.EncodeToString(sum[:]), dockertest.LabelKey, label),
		"images/web.tar": string(tarBytes),
	}
}

// writeFiles writes files (path: content) under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// removeByPrefix removes the containers and the network the agent under test created.
func removeByPrefix(t *testing.T, prefix, network string) {
	cli := dockertest.Client(t)
	ctx := context.Background()
	list, _ := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", prefix))})
	for _, c := range list {
		for _, n := range c.Names {
			if strings.HasPrefix(strings.TrimPrefix(n, "/"), prefix) {
				cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
			}
		}
	}
	cli.NetworkRemove(ctx, network)
}
