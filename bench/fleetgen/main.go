// Command fleetgen writes a synthetic fleet repo of N devices for benchmarks:
// sites and roles as groups, a canary group, a few dozen apps, a handful of
// releases, and per-device overrides on one device in ten.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	n := flag.Int("devices", 1000, "number of devices")
	out := flag.String("out", "", "directory to write (created)")
	flag.Parse()
	if *out == "" {
		log.Fatal("fleetgen: -out is required")
	}
	if err := generate(*out, *n); err != nil {
		log.Fatal("fleetgen: ", err)
	}
}

const (
	sites    = 20
	roles    = 4
	apps     = 30
	releases = 5
)

var roleNames = []string{"gateway", "camera", "server", "kiosk"}

func generate(dir string, n int) error {
	for _, d := range []string{"groups", "devices", "apps", "releases"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	w := func(name, body string) error {
		return os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
	}
	if err := w("fleet.cue", `defaults: {
	time: {servers: ["ntp1.example:123", "ntp2.example:123"], max_skew: "2s"}
	update: {trial_timeout: "10m", windows: [{start: "01:00", end: "04:00", timezone: "UTC"}]}
}
spec: attestation: pcrs: [0, 2, 4, 7]
`); err != nil {
		return err
	}
	digest := func(i int) string { return strings.Repeat(fmt.Sprintf("%x", i%16), 63) + "a" }
	for a := 0; a < apps; a++ {
		body := fmt.Sprintf(`image:
  ref: registry.example/app%02d:1.%d.0@sha256:%s
command: ["/app", "--mode", "run"]
env:
  LOG_LEVEL: info
  APP_ID: "%d"
ports:
  - host: %d
    container: 8080
volumes:
  - source: app%02d-data
    target: /data
healthcheck:
  test: ["CMD", "/app", "--health"]
memory: 64m
cpus: 0.25
`, a, a, digest(a), a, 10000+a, a)
		if err := w(fmt.Sprintf("apps/app%02d.yaml", a), body); err != nil {
			return err
		}
	}
	for r := 0; r < releases; r++ {
		body := fmt.Sprintf(`version: 2026.%d.0
url: https://releases.example/os-%d.img.zst
size: %d
sha256: "%s"
signature: c2lnbmF0dXJl
built: "2026-0%d-01T00:00:00Z"
`, r+1, r, 1<<28, digest(r+7), r+1)
		if err := w(fmt.Sprintf("releases/os-%d.yaml", r), body); err != nil {
			return err
		}
	}
	// Role groups enable apps; site groups set defaults; the canary group gets the newest release.
	for ro := 0; ro < roles; ro++ {
		var b strings.Builder
		fmt.Fprintf(&b, "selector:\n  match_labels:\n    role: %s\nspec:\n  apps:\n", roleNames[ro])
		for k := 0; k < 6; k++ {
			fmt.Fprintf(&b, "    app%02d: {}\n", (ro*6+k)%apps)
		}
		fmt.Fprintf(&b, "defaults:\n  release: os-%d\n", ro%releases)
		if err := w(fmt.Sprintf("groups/role-%s.yaml", roleNames[ro]), b.String()); err != nil {
			return err
		}
	}
	for s := 0; s < sites; s++ {
		body := fmt.Sprintf(`selector:
  match_labels:
    site: site-%02d
priority: 5
defaults:
  time:
    servers: ["ntp.site-%02d.example:123"]
  update:
    windows: [{start: "0%d:00", end: "0%d:30", timezone: "Europe/Berlin"}]
`, s, s, s%6, s%6)
		if err := w(fmt.Sprintf("groups/site-%02d.yaml", s), body); err != nil {
			return err
		}
	}
	var canary []string
	for i := 0; i < n; i += 100 {
		canary = append(canary, fmt.Sprintf("dev-%06d", i))
	}
	if err := w("groups/canary.yaml", fmt.Sprintf("selector:\n  devices: [%s]\npriority: 10\ndefaults:\n  release: os-4\n", strings.Join(canary, ", "))); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		var b strings.Builder
		fmt.Fprintf(&b, "labels:\n  role: %s\n  site: site-%02d\n  rack: r%d\n", roleNames[i%roles], i%sites, i%7)
		if i%10 == 3 {
			fmt.Fprintf(&b, "spec:\n  apps:\n    app%02d:\n      env:\n        UNIT: \"%d\"\n", ((i%roles)*6)%apps, i)
		}
		if err := w(fmt.Sprintf("devices/dev-%06d.yaml", i), b.String()); err != nil {
			return err
		}
	}
	return nil
}
