package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// shoal runs the CLI in-process and returns its exit code, stdout and stderr.
func shoal(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestFleetCommands(t *testing.T) {
	// The example with its images (stand-ins for what examples/imagebuild makes).
	example := testenv.ExampleFleet(t, "../../fleet-repo-example")
	bad := testenv.ExampleFleet(t, "../../fleet-repo-example")
	if err := os.WriteFile(filepath.Join(bad, "apps/metrics-exporter.yaml"), []byte("image:\n  ref: x@sha256:"+strings.Repeat("a", 64)+"\nports:\n  - host: 70000\n    container: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   []string
		stderr   []string
		noStdout bool
	}{
		{name: "validate example", args: []string{"validate", example}, code: 0,
			stdout: []string{"7 devices, 3 groups, 2 apps, 3 releases: ok"}},
		// As checked out, with no images built: the tars are named missing.
		{name: "validate example without its images", args: []string{"validate", "../../fleet-repo-example"}, code: 1,
			stderr: []string{"apps/sensor-aggregator.yaml:14:5: image.source.path: images/sensor-aggregator.tar: no such file in the fleet repo"}},
		{name: "validate invalid", args: []string{"validate", bad}, code: 1,
			stderr: []string{"apps/metrics-exporter.yaml:4:11: ports[0].host: invalid value 70000"},
			stdout: []string{"error(s)"}},
		{name: "validate missing dir", args: []string{"validate", "/nonexistent"}, code: 1,
			stderr: []string{"is not a directory"}},
		{name: "validate no args", args: []string{"validate"}, code: 2, stderr: []string{"takes 1 argument"}},
		{name: "render yaml", args: []string{"render", "--device", "gw-01", "../../fleet-repo-example"}, code: 0,
			stdout: []string{"# device gw-01, spec sha256 ", "LOG_LEVEL: debug", "name: gateway-os-2026.11.0"}},
		{name: "render json", args: []string{"render", "--json", "--device", "plant-02", "../../fleet-repo-example"}, code: 0,
			stdout: []string{`"id":"plant-02"`, `"servers":["ntp.office.riverside.example:123"]`}, stderr: []string{"sha256 "}},
		{name: "render unknown device", args: []string{"render", "--device", "nope", "../../fleet-repo-example"}, code: 1,
			stderr: []string{`device "nope": unknown device`}},
		{name: "render without device", args: []string{"render", "../../fleet-repo-example"}, code: 2,
			stderr: []string{"--device is required"}},
		{name: "devices", args: []string{"devices", "../../fleet-repo-example"}, code: 0,
			stdout: []string{"gw-01", "workshop,canary", "plant-02", "role=server"}},
		{name: "unknown flag", args: []string{"validate", "--bogus", "x"}, code: 2},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := shoal(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errs)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
		})
	}
}

func TestDiffBetweenCommits(t *testing.T) {
	dir := t.TempDir()
	copyDir(t, "../../fleet-repo-example", dir)
	testenv.GitCommitAll(t, dir, "initial")
	// Bump the aggregator's log level for the workshop: every gateway but the canary changes.
	p := filepath.Join(dir, "apps/sensor-aggregator.yaml")
	b, _ := os.ReadFile(p)
	if err := os.WriteFile(p, bytes.Replace(b, []byte("LOG_LEVEL: info"), []byte("LOG_LEVEL: warn"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.GitCommitAll(t, dir, "quieter aggregator")

	code, out, errs := shoal(t, "diff", "HEAD~1", "HEAD", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, w := range []string{"device gw-02 changes:", "apps.sensor-aggregator.env.LOG_LEVEL: info -> warn", "4 of 7 devices change"} {
		if !strings.Contains(out, w) {
			t.Errorf("diff output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "gw-01") || strings.Contains(out, "plant-01") {
		t.Errorf("diff names devices that do not change:\n%s", out)
	}
	code, out, _ = shoal(t, "diff", "--device", "gw-01", "HEAD~1", "HEAD", dir)
	if code != 0 || !strings.Contains(out, "0 of 1 devices change") {
		t.Errorf("diff --device gw-01: exit %d\n%s", code, out)
	}
	if code, _, errs := shoal(t, "diff", "nope", "HEAD", dir); code != 1 || !strings.Contains(errs, `resolve revision "nope"`) {
		t.Errorf("bad revision: exit %d, %s", code, errs)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Each kind of bad input makes `shoal validate` exit 1 naming the broken spot.
func TestValidateBadInput(t *testing.T) {
	sha := strings.Repeat("a", 64)
	tests := []struct {
		name  string
		file  string
		data  string
		wants []string
	}{
		{"yaml syntax error", "apps/metrics-exporter.yaml", "image:\n  ref: [oops\n", []string{"apps/metrics-exporter.yaml:2:8: YAML syntax:", "did not find expected"}},
		{"yaml bad indentation", "apps/metrics-exporter.yaml", "image:\n  ref: x\nenv:\n  A: b\n B: c\nrestart: always\n", []string{"apps/metrics-exporter.yaml:5:2: YAML syntax:", "indentation"}},
		{"unclosed bracket on the last line", "apps/metrics-exporter.yaml", "image:\n  ref: x\ncap_drop: [ALL", []string{"apps/metrics-exporter.yaml:3:11: YAML syntax:", "never closed"}},
		{"duplicate key", "apps/metrics-exporter.yaml", "image:\n  ref: x\nrestart: always\nrestart: always\n", []string{`apps/metrics-exporter.yaml:4:1: duplicate key "restart" (first at line 3)`}},
		{"unknown field", "apps/metrics-exporter.yaml", "image:\n  ref: x@sha256:" + sha + "\nportz: []\n", []string{"apps/metrics-exporter.yaml:3:1: portz: unknown field"}},
		{"bad sha256", "apps/metrics-exporter.yaml", "image:\n  ref: x\n  source:\n    path: a.tar\n    sha256: xyz\n", []string{"apps/metrics-exporter.yaml:5:13: image.source.sha256"}},
		{"port out of range", "apps/metrics-exporter.yaml", "image:\n  ref: x@sha256:" + sha + "\nports:\n  - host: 70000\n    container: 1\n", []string{"apps/metrics-exporter.yaml:4:11: ports[0].host"}},
		{"group and device conflict", "devices/plant-01.yaml", "labels:\n  role: server\nspec:\n  attestation:\n    required: false\n", []string{"devices/plant-01.yaml:5:15", "groups/plant.yaml", "conflicting values"}},
		{"duplicate app", "apps/metrics-exporter.cue", "image: ref: \"x@sha256:" + sha + "\"\n", []string{"apps/metrics-exporter", `duplicate app "metrics-exporter"`}},
		{"release not semver", "releases/server-os-2026.10.0.yaml", "version: latest\nurl: x\nsize: 1\nsha256: " + sha + "\nsignature: x\n", []string{"releases/server-os-2026.10.0.yaml:1:10: version"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := testenv.ExampleFleet(t, "../../fleet-repo-example")
			if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.data), 0o644); err != nil {
				t.Fatal(err)
			}
			code, _, errs := shoal(t, "validate", dir)
			if code != 1 {
				t.Fatalf("exit %d, want 1\n%s", code, errs)
			}
			for _, w := range tc.wants {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
		})
	}
}
