package agent

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestReadResources(t *testing.T) {
	dir := t.TempDir()
	r := ReadResources(dir, filepath.Join(dir, "no-docker-here"))
	if r.CPUs < 1 || r.MemTotal == 0 || r.MemAvail == 0 || r.MemAvail > r.MemTotal || r.Uptime <= 0 || r.AgentRSS == 0 {
		t.Fatalf("implausible resources: %+v", r)
	}
	if r.StateDisk == nil || r.StateDisk.Total == 0 || r.StateDisk.Free > r.StateDisk.Total {
		t.Fatalf("state disk: %+v", r.StateDisk)
	}
	if r.DockerDisk != nil || len(r.Unavailable) != 1 || !strings.Contains(r.Unavailable[0], "no-docker-here") {
		t.Fatalf("a missing docker root is not reported as unavailable: %+v %v", r.DockerDisk, r.Unavailable)
	}
}
