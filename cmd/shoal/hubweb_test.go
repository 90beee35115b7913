package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestHubOpenAccessNeedsLoopback(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "hub.db")
	code, _, errs := shoal(t, "hub", "--open-access", "--listen", ":0", "--db", db)
	if code != exitUsage || !strings.Contains(errs, "--open-access needs --listen on a loopback address") {
		t.Fatalf("exit %d, %s", code, errs)
	}
}

func TestHubPprofNeedsLoopback(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "hub.db")
	for _, addr := range []string{":6060", "0.0.0.0:6060", "192.0.2.1:6060", "nonsense"} {
		code, _, errs := shoal(t, "hub", "--pprof", addr, "--listen", "127.0.0.1:0", "--db", db)
		if code != exitUsage || !strings.Contains(errs, "--pprof") || !strings.Contains(errs, "loopback address only") {
			t.Errorf("--pprof %s: exit %d, %s", addr, code, errs)
		}
	}
}
