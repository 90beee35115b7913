package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestAgentWiredFirstDay: a device as a newcomer first runs one, against a
// fleet like the example's and a hub with --fleet: its time servers do not
// answer (a factory network), it has no A/B slots, and its group carries a
// release with expected PCR values. Its containers converge and so does the
// device: the clock is reported unknown, not skewed; the update stage says
// the release cannot be installed; the hub passes its quote but for the
// release's PCR values, and says so. Where the spec requires attestation
// the hub refuses instead, naming the release, and the device says why.
func TestAgentWiredFirstDay(t *testing.T) {
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	tag := "shoal-firstday-test:" + label
	dockertest.Image(t, cli, tag, label, nil)
	files := webFleet(t, cli, tag, label)

	// Nobody answers NTP on this port.
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadNTP := c.LocalAddr().String()
	c.Close()

	cases := []struct {
		name     string
		required bool
	}{
		{"attestation optional", false},
		{"attestation required", true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			net := fmt.Sprintf("net-%s-%d", label, i)
			f := map[string]string{}
			for k, v := range files {
				f[k] = v
			}
			f["fleet.cue"] = fmt.Sprintf("defaults: time: servers: [%q]\nspec: network: %q\nspec: attestation: pcrs: [0, 7]\n", deadNTP, net)
			f["groups/canary.yaml"] = fmt.Sprintf("selector:\n  devices: [d1]\npriority: 10\ndefaults:\n  release: os-2\nspec:\n  attestation:\n    required: %v\n", tc.required)
			f["releases/os-2.yaml"] = "version: 2.0.0\nurl: https://releases.example/os-2.img\nsize: 1024\nsha256: " + strings.Repeat("ab", 32) +
				"\nsignature: c2ln\nbuilt: \"2026-11-02T08:00:00Z\"\npcrs:\n  \"7\": " + strings.Repeat("cd", 32) + "\n"
			repo := t.TempDir()
			writeFiles(t, repo, f)
			testenv.GitCommitAll(t, repo, "fleet with a canary release")

			// A real hub holding quotes to the fleet at HEAD, as shoal hub --fleet does.
			st, h, hubURL := startHub(t, func(o *hub.Options) { o.Verifier = verifierFor(t, o.Store, repo, true) })
			tok, err := hub.CreateEnrolToken(t.Context(), st, "d1", time.Hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			prefix := fmt.Sprintf("firstday-%s-%d-", label, i)
			t.Cleanup(func() { removeByPrefix(t, prefix, net) })
			state := t.TempDir()
			cfgPath := filepath.Join(t.TempDir(), "agent.yaml")
			cfg := fmt.Sprintf("device_id: d1\nstate_dir: %s\nrepo:\n  url: file://%s\nmetrics_addr: \"\"\ncontainers:\n  prefix: %s\ntrust:\n  tpm: none\nhub_url: %s\n",
				state, repo, prefix, hubURL)
			if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := runEnrol(t, "--config", cfgPath, "--hub", hubURL, "--token", tok.Token, "--ca-fingerprint", h.CAFingerprint()); err != nil {
				t.Fatalf("enrol: %v\n%s", err, out)
			}
			want := exitOK
			if tc.required {
				want = exitUnready
			}
			if code := run(t.Context(), []string{"--once", "--config", cfgPath}); code != want {
				t.Fatalf("shoal-agent --once exit %d, want %d", code, want)
			}

			// The container runs either way: nothing about time or releases holds it back.
			list, err := cli.ContainerList(t.Context(), container.ListOptions{Filters: filters.NewArgs(filters.Arg("name", prefix+"web"))})
			if err != nil || len(list) != 1 || list[0].State != "running" {
				t.Fatalf("containers named %sweb: %+v, %v", prefix, list, err)
			}
			reps, err := st.Reports(t.Context(), "d1", 1)
			if err != nil || len(reps) == 0 {
				t.Fatalf("no report at the hub: %v", err)
			}
			var rep api.Status
			if err := json.Unmarshal(reps[0].Body, &rep); err != nil {
				t.Fatal(err)
			}
			if rep.Clock == nil || rep.Clock.State != "unknown" || rep.Clock.Trusted {
				t.Errorf("clock %+v, want unknown", rep.Clock)
			}
			var update string
			for _, s := range rep.Stages {
				if s.Name == "update" {
					update = s.Summary
				}
			}
			if !strings.Contains(update, `release "os-2" (2.0.0) not installed`) || !strings.Contains(update, "no A/B slots") {
				t.Errorf("update stage says %q, want the release named as not installed for want of A/B slots", update)
			}
			as, err := st.Attestations(t.Context(), "d1", 1)
			if err != nil || len(as) != 1 {
				t.Fatalf("attestations at the hub: %+v, %v", as, err)
			}
			var verdict api.AttestResult
			if err := json.Unmarshal(as[0].Result, &verdict); err != nil {
				t.Fatal(err)
			}
			if !tc.required {
				if rep.State != api.StateConverged || rep.Problem != nil {
					t.Errorf("state %s, problem %+v; want converged", rep.State, rep.Problem)
				}
				if !verdict.OK || len(verdict.Unchecked) != 1 || !strings.Contains(verdict.Unchecked[0], `release "os-2" not checked`) {
					t.Errorf("hub verdict %+v, want a pass that leaves os-2's PCR values unchecked", verdict)
				}
				return
			}
			if verdict.OK || !strings.Contains(strings.Join(verdict.Reasons, " "), "requires attestation") {
				t.Errorf("hub verdict %+v, want refused: attestation required and no release", verdict)
			}
			if rep.State != api.StateWaiting || rep.Attest == nil || rep.Attest.OK || !strings.Contains(strings.Join(rep.Attest.Reasons, " "), `"os-2"`) {
				t.Errorf("state %s, attest %+v; want waiting with the hub's refusal naming the release", rep.State, rep.Attest)
			}
		})
	}
}
