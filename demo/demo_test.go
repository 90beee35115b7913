package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/browsertest"
	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// The shortened demo, end to end against the real Docker Engine, git, the
// built shoal and shoal-agent binaries and a real hub: three devices, each
// with its keys in the TPM simulator, converge and attest by TPM quotes,
// take a new version, the canary installs, trial-boots and commits an OS
// release on file-backed A/B slots with a GRUB env, then a second release
// whose kernel hangs falls back to the old slot by the boot limit and is
// marked bad, one device rolls a broken app back with the reason at the hub,
// and an invalid commit is refused everywhere; headless Chromium finds each
// of those states on the hub's status page. Then nothing it made is left.
func TestDemoShort(t *testing.T) {
	if testing.Short() {
		t.Skip("demo: the end-to-end run takes minutes")
	}
	testenv.LookPath(t, "git", "git")
	testenv.LookPath(t, "go", "golang-go")
	cli := dockertest.Client(t)
	tab := browser(t)

	// What headless Chromium must find on the status page at each step.
	// absent: the text must not be there.
	type check struct {
		path, text string
		absent     bool
	}
	pages := map[string][]check{
		"converged": {{"", "gw-01", false}, {"", "gw-02", false}, {"", "plant-01", false}, {"", "converged", false},
			// Identity in the TPM simulator, attested: not the weaker software key.
			{"devices/gw-02", "tpm key", false}, {"devices/gw-02", "weaker", true}, {"devices/plant-01", "tpm key", false},
			{"devices/plant-01", "PCRs not checked", false}},
		"release": {{"devices/gw-01", "2026.11.0", false}, {"devices/gw-01", "tpm key", false}, {"devices/gw-01", "saved", false},
			{"devices/gw-01", "PCRs not checked", false}},
		"trial-failed": {{"devices/gw-01", "rolled-back", false}, {"devices/gw-01", "Rolled back", false}, {"devices/gw-01", "bootloader-fallback", false},
			{"devices/gw-01", "the bootloader started slot b instead of a", false}, {"devices/gw-01", `release "2026.12.0"`, false}},
		"rollback": {{"devices/plant-01", `rolled-back: app "metrics-exporter"`, false}, {"devices/plant-01", "health-failed", false}},
		"relay":    {{"relays", "site-north", false}, {"devices/plant-01", "site relay", false}},
		"invalid": {{"", "stalled", false}, {"devices/gw-01", "spec-invalid", false}, {"devices/gw-02", "spec-invalid", false},
			{"devices/plant-01", "The newest commit was not applied", false}},
	}
	seen := map[string]bool{}
	onStep := func(ctx context.Context, step, pageURL string) error {
		for _, want := range pages[step] {
			sctx, cancel := context.WithTimeout(tab, 30*time.Second)
			err := chromedp.Do(sctx, browsertest.Navigate(pageURL+want.path),
				chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
					cond := fmt.Sprintf("document.body && document.body.innerText.includes(%q)", want.text)
					if want.absent {
						cond = fmt.Sprintf("document.body && document.body.innerText.length > 0 && !document.body.innerText.includes(%q)", want.text)
					}
					_, err := browsertest.WaitJS(cond, 20*time.Second)(ctx, tg)
					return err
				}))
			cancel()
			if err != nil {
				body, _ := chromedp.Run(tab, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 1500) : ""`))
				return fmt.Errorf("page %s%s: %q present %v, want %v: %w\n%s", pageURL, want.path, want.text, want.absent, !want.absent, err, body)
			}
		}
		seen[step] = true
		return nil
	}

	var out bytes.Buffer
	var res Result
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	err := Run(ctx, Options{Devices: 3, Out: &out, Timeout: 3 * time.Minute, Result: &res, OnStep: onStep})
	t.Logf("narration:\n%s", out.String())
	if res.ID != "" {
		// Run cleans up on every path; this is a second net should it not.
		t.Cleanup(func() { dockertest.RemoveLabelled(context.Background(), cli, res.ID) })
	}
	if err != nil {
		t.Fatalf("demo: %v", err)
	}

	if !res.TPM {
		testenv.Missing(t, "the TPM simulator in shoal-agent ("+res.NoTPM+")", "apt-get install gcc libssl-dev; CGO_ENABLED must not be 0")
	}
	for step := range pages {
		if !seen[step] {
			t.Errorf("the status page was not checked at step %q", step)
		}
	}
	devices := []string{"gw-01", "gw-02", "plant-01"}
	for _, id := range devices {
		if s := res.Converged[id]; s.State != api.StateConverged || s.Commit.Applied != res.NewCommit {
			t.Errorf("%s on the new commit: state %q applied %q, want converged on %s", id, s.State, s.Commit.Applied, res.NewCommit)
		}
		if a := res.Converged[id].Attest; a == nil || !a.OK || a.Weak {
			t.Errorf("%s attestation on the new commit: %+v, want passed with a TPM key", id, a)
		}
		s := res.Latest[id]
		if s.Commit.Attempted != res.BadCommit || s.Commit.Applied == res.BadCommit || s.Commit.Applied == "" {
			t.Errorf("%s after the invalid commit: %+v", id, s.Commit)
		}
		if s.State != api.StateStalled || s.Problem == nil || s.Problem.Reason != "spec-invalid" || !strings.Contains(s.Problem.Message, "restart") {
			t.Errorf("%s does not report the invalid spec: state %q problem %+v", id, s.State, s.Problem)
		}
	}
	if u := res.CanaryUpdate; res.ReleaseCommit == "" || u == nil || u.Version != releaseVersion || u.Slot != "b" {
		t.Errorf("canary release: commit %q, update %+v; want %s committed in slot b", res.ReleaseCommit, u, releaseVersion)
	}
	if u := res.FailedTrial; u == nil || u.State != "rolled-back" || u.Rollback == nil || u.Rollback.Check != "bootloader-fallback" ||
		u.Version != releaseVersion || u.Slot != "b" {
		t.Errorf("failed trial: %+v; want rolled back by the bootloader to %s in slot b", u, releaseVersion)
	} else if p := res.FailedProblem; p == nil || !strings.Contains(p.Message, badVersion) || !strings.Contains(p.Message, "rolled back") {
		t.Errorf("failed trial: problem %+v, want the rolled back release named", p)
	}
	if res.RolledBack != "plant-01" || res.Rollback == nil || res.Rollback.Check != "health-failed" {
		t.Errorf("rollback: device %q, %+v", res.RolledBack, res.Rollback)
	} else if tail := strings.Join(res.Rollback.LogTail, "\n"); !strings.Contains(tail, "/mnt/not-mounted") {
		t.Errorf("rollback log tail %q lacks the exporter's own error", tail)
	}
	if u := res.CanaryUpdate; u == nil || u.Delta == nil || u.Delta.Mode != "delta" || u.Delta.Fetched <= 0 || u.Delta.Fetched*4 > u.Delta.Full {
		t.Errorf("canary release not from its delta, or not saving much: %+v", u)
	}
	for _, line := range []string{"all 3 devices converged on " + res.NewCommit[:8], "shoal_slot=b upgrade_available=1", "gw-01 committed 2026.11.0", "installed it from the delta", "rolled metrics-exporter back", "reports spec-invalid",
		"attested to the hub by a TPM quote", "GRUB passed its boot limit and fell back to slot b", "2026.12.0 is marked bad",
		"keeps its windows in a volume of its own on the one Engine: " + res.ID + "-gw-01-aggregator-buffer, " + res.ID + "-gw-02-aggregator-buffer"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("narration lacks %q", line)
		}
	}

	// Everything the demo created is gone: containers, networks, images, temp dir.
	bg := context.Background()
	byName := filters.NewArgs(filters.Arg("name", res.ID))
	byLabel := filters.NewArgs(filters.Arg("label", dockertest.LabelKey+"="+res.ID))
	if cs, err := cli.ContainerList(bg, container.ListOptions{All: true, Filters: byName}); err != nil || len(cs) != 0 {
		t.Errorf("containers left: %d (%v)", len(cs), err)
	}
	if ns, err := cli.NetworkList(bg, network.ListOptions{Filters: byName}); err != nil || len(ns) != 0 {
		t.Errorf("networks left: %d (%v)", len(ns), err)
	}
	if vs, err := cli.VolumeList(bg, volume.ListOptions{Filters: byName}); err != nil || len(vs.Volumes) != 0 {
		t.Errorf("volumes left: %d (%v)", len(vs.Volumes), err)
	}
	if is, err := cli.ImageList(bg, image.ListOptions{All: true, Filters: byLabel}); err != nil || len(is) != 0 {
		t.Errorf("images left: %d (%v)", len(is), err)
	}
	if _, err := os.Stat(res.Dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s left (%v)", res.Dir, err)
	}
}

// browser starts headless Debian Chromium and returns a tab's context.
func browser(t *testing.T) context.Context {
	t.Helper()
	exe := testenv.LookPath(t, "chromium", "chromium")
	actx, cancel := chromedp.NewExecAllocator(t.Context(),
		chromedp.ExecPath(exe),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		// The hub's certificate is from the hub's own CA, which this
		// throwaway profile does not hold.
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

func TestDemoDevicesEnv(t *testing.T) {
	cases := []struct {
		name, val, err string
	}{
		{"not a number", "many", "DEMO_DEVICES"},
		{"zero", "0", "want 1..7"},
		{"too many", "8", "want 1..7"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("DEMO_DEVICES", tc.val)
			err := runMain(t.Context(), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("DEMO_DEVICES=%s: %v, want %q", tc.val, err, tc.err)
			}
		})
	}
}
