package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The device binary must not link the hub, the rollout controller (only
// rollout/grant, which checks grants), the site relay's server side (nor
// its MQTT client), an SQL driver, a browser driver or the TPM simulator (cgo): it stays small and static. (The standard library's
// database/sql comes in through the Prometheus collectors and CUE's decimal
// type; it holds no driver.)
func TestDeviceBinaryDeps(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/shoalfleet/shoal/hub",
		"github.com/shoalfleet/shoal/relay",
		"github.com/eclipse/paho.mqtt.golang",
		"modernc.org/sqlite",
		"github.com/jackc/pgx",
		"github.com/chromedp",
		"github.com/google/go-tpm-tools/simulator",
	}
	allowed := map[string]bool{"github.com/shoalfleet/shoal/rollout/grant": true}
	forbidden = append(forbidden, "github.com/shoalfleet/shoal/rollout")
	linksGrant := false
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "github.com/shoalfleet/shoal/rollout/grant" {
			linksGrant = true
		}
		if allowed[pkg] {
			continue
		}
		for _, f := range forbidden {
			if pkg == f || strings.HasPrefix(pkg, f+"/") {
				t.Errorf("shoal-agent links %s", pkg)
			}
		}
	}
	if !linksGrant {
		t.Error("shoal-agent does not link rollout/grant: who checks its grants?")
	}
}
