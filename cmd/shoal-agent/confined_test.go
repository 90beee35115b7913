package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestSubcommandsKeepToTheConfig runs every shoal-agent subcommand with a
// config whose paths all lie in a temp dir, under strace, and checks that
// each writes nothing outside it and never touches the built-in defaults
// (/var/lib/shoal, /etc/shoal, /etc/fw_env.config, /boot/grub, /dev/tpm*):
// every subcommand reads the same config as the daemon.
func TestSubcommandsKeepToTheConfig(t *testing.T) {
	straceBin := testenv.LookPath(t, "strace", "strace")
	// A GRUB device with file slots and a signed release beside it.
	d := newABDevice(t, 64<<10)
	d.releaseFile(t)
	dir, imgPath := d.dir, d.imgPath
	// A fleet repo and a stick with a bundle for the device.
	f := newFleet(t)
	f.commit(validFleet())
	stick, _, bundlePub := provisionStick(t)
	bundleKeys := d.write(t, "bundle-keys.pem", []byte(bundlePub))

	state := filepath.Join(dir, "state")
	cfg := d.write(t, "agent.yaml", []byte(fmt.Sprintf(`device_id: dev-1
state_dir: %s
repo:
  url: %s
metrics_addr: ""
docker_root: ""
poll_interval: 1h
containers:
  enabled: false
trust:
  tpm: none
provision:
  bundle_keys: %s
`, state, f.URL(), bundleKeys)+d.updateConfig(t, "1.0.0")))

	for _, tc := range []struct {
		name   string
		args   []string
		writes bool // it must write something (so the trace is seen to catch writes)
	}{
		{"config", []string{"config"}, false},
		{"run --once", []string{"run", "--once"}, true},
		{"status", []string{"status"}, false},
		{"update status", []string{"update", "status"}, false},
		{"update install", []string{"update", "install", "--no-reboot", imgPath}, true},
		{"update rollback", []string{"update", "rollback", "--no-reboot"}, true},
		{"update commit", []string{"update", "commit"}, false},
		{"provision apply", []string{"provision", "apply", stick}, true},
		{"enrol", []string{"enrol", "--hub", "https://127.0.0.1:1", "--token", "t", "--ca-fingerprint", strings.Repeat("0", 64)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trace := filepath.Join(t.TempDir(), "strace.log")
			cmd := agentCmd(append([]string{"--config", cfg}, tc.args...)...)
			cmd.Args = append([]string{straceBin, "-f", "-qq", "-y", "-o", trace, "-e", "trace=%file", cmd.Path}, cmd.Args[1:]...)
			cmd.Path = straceBin
			cmd.Env = append(cmd.Env, "SHOAL_AGENT_WIRED=1")
			out, _ := cmd.CombinedOutput() // some fail by design (enrol: no hub); the paths are what counts
			log, err := os.ReadFile(trace)
			if err != nil {
				t.Fatalf("strace: %v\n%s", err, out)
			}
			if len(log) == 0 {
				t.Fatalf("strace recorded nothing:\n%s", out)
			}
			wrote := 0
			for _, l := range strings.Split(string(log), "\n") {
				if writeOutside(l, nil) != "" {
					wrote++
				}
				if p := forbidden(l); p != "" {
					t.Errorf("touches %s, a built-in default, not the config's: %s", p, l)
				}
				if p := writeOutside(l, []string{dir, stick}); p != "" {
					t.Errorf("writes %s, outside the config's paths: %s", p, l)
				}
			}
			if tc.writes && wrote == 0 {
				t.Errorf("no write seen in the trace")
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(state, "update", "update.json")); err != nil {
		t.Errorf("no update state in the config's state_dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "provision", "state.json")); err != nil {
		t.Errorf("no provisioning state in the config's state_dir: %v", err)
	}
}

var (
	straceCall = regexp.MustCompile(`^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)`)
	straceStr  = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)
	straceFD   = regexp.MustCompile(`^\d+<([^>]*)>`)
)

// forbidden returns the default path a strace line touches, if any.
func forbidden(line string) string {
	for _, p := range []string{"/var/lib/shoal", "/etc/shoal", "/etc/fw_env.config", "/boot/grub", "/dev/tpm"} {
		for _, s := range straceStr.FindAllStringSubmatch(line, -1) {
			if s[1] == p || strings.HasPrefix(s[1], p+"/") || (p == "/dev/tpm" && strings.HasPrefix(s[1], p)) {
				return s[1]
			}
		}
	}
	return ""
}

// writeOutside returns the path a strace line changes (a successful open for
// writing, mkdir, rename, unlink, link or chmod) when it lies outside every
// directory of allowed.
func writeOutside(line string, allowed []string) string {
	m := straceCall.FindStringSubmatch(line)
	if m == nil || m[3] == "-1" {
		return ""
	}
	call, args := m[1], m[2]
	writes := false
	switch {
	case strings.HasPrefix(call, "open") || call == "creat":
		writes = call == "creat" || strings.Contains(args, "O_WRONLY") || strings.Contains(args, "O_RDWR") ||
			strings.Contains(args, "O_CREAT") || strings.Contains(args, "O_TRUNC")
	case strings.HasPrefix(call, "mkdir"), strings.HasPrefix(call, "rename"), strings.HasPrefix(call, "unlink"),
		call == "rmdir", strings.HasPrefix(call, "link"), strings.HasPrefix(call, "symlink"),
		strings.HasPrefix(call, "chmod"), strings.HasPrefix(call, "fchmodat"), strings.HasPrefix(call, "chown"),
		strings.HasPrefix(call, "fchownat"), call == "truncate", strings.HasPrefix(call, "utime"):
		writes = true
	}
	if !writes {
		return ""
	}
	base := ""
	if fd := straceFD.FindStringSubmatch(args); fd != nil {
		base = fd[1]
	}
	for _, s := range straceStr.FindAllStringSubmatch(args, -1) {
		p := s[1]
		if !filepath.IsAbs(p) {
			if base == "" {
				continue
			}
			p = filepath.Join(base, p)
		}
		if p == "/dev/null" {
			continue
		}
		inside := false
		for _, a := range allowed {
			if p == a || strings.HasPrefix(p, a+"/") {
				inside = true
			}
		}
		if !inside {
			return p
		}
	}
	return ""
}
