package main

import (
	"context"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/shoalfleet/shoal/internal/dockertest"
)

// shoal plan against the real Engine: it lists what gw-01 would do and writes nothing.
func TestPlanIsADryRun(t *testing.T) {
	cli := dockertest.Client(t)
	prefix := "plantest-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "-"
	code, out, errs := shoal(t, "plan", "--prefix", prefix, "--device", "gw-01", "../../fleet-repo-example")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, w := range []string{"device gw-01:", "create", "sensor-aggregator", "new app", "metrics-exporter"} {
		if !strings.Contains(out, w) {
			t.Errorf("plan lacks %q:\n%s", w, out)
		}
	}
	after, err := cli.ContainerList(context.Background(), container.ListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	// Other packages' tests use the Engine at the same time: look only at ours.
	for _, c := range after {
		for _, n := range c.Names {
			if strings.HasPrefix(strings.TrimPrefix(n, "/"), prefix) {
				t.Errorf("plan created container %s", n)
			}
		}
	}
	if code, _, _ := shoal(t, "plan", "../../fleet-repo-example"); code != 2 {
		t.Errorf("plan without --device: exit %d, want 2", code)
	}
}
