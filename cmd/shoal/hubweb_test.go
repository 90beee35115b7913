package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestLoopbackListen(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8443": true, "[::1]:8443": true, "localhost:1": true,
		":8443": false, "0.0.0.0:8443": false, "192.0.2.1:8443": false, "nonsense": false,
	} {
		if got := loopbackListen(addr); got != want {
			t.Errorf("loopbackListen(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestHubOpenAccessNeedsLoopback(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "hub.db")
	code, _, errs := shoal(t, "hub", "--open-access", "--listen", ":0", "--db", db)
	if code != exitUsage || !strings.Contains(errs, "--open-access needs --listen on a loopback address") {
		t.Fatalf("exit %d, %s", code, errs)
	}
}
