package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsYAMLIsTheDefaults(t *testing.T) {
	// The documented file, with a repo URL, parses to exactly DefaultConfig.
	y := strings.Replace(DefaultsYAML, "  url: \"\"", "  url: file:///srv/fleet", 1)
	y = strings.Replace(y, "device_id: \"\"", "device_id: gw-01", 1)
	got, err := ParseConfig("agent.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.DeviceID, want.Repo.URL = "gw-01", "file:///srv/fleet"
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("defaults file parses to\n%+v\nwant\n%+v", *got, want)
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		check   func(*Config) bool
		wantErr string
	}{
		{"minimal", "device_id: gw-01\nrepo: {url: file:///x}\n",
			func(c *Config) bool { return c.PollInterval.D() == 5*time.Minute && c.StateDir == "/var/lib/shoal" }, ""},
		{"overrides", "device_id: gw-01\nrepo:\n  url: https://h/x\n  tag: v1\npoll_interval: 30s\nlog_format: json\n",
			func(c *Config) bool {
				return c.PollInterval.D() == 30*time.Second && c.Repo.Tag == "v1" && c.LogFormat == "json"
			}, ""},
		{"unknown field with position", "device_id: gw-01\nrepo:\n  url: x\n  brnach: main\n", nil, "agent.yaml:4:3: unknown field repo.brnach"},
		{"no url", "device_id: gw-01\n", nil, "repo.url: required"},
		{"bad id", "device_id: GW 01\nrepo: {url: x}\n", nil, "device_id"},
		{"bad duration", "device_id: a\nrepo: {url: x}\npoll_interval: soon\n", nil, "poll_interval"},
		{"bad log format", "device_id: a\nrepo: {url: x}\nlog_format: xml\n", nil, "log_format"},
		{"yaml syntax", "device_id: [\n", nil, "agent.yaml:1:12: YAML syntax"},
		{"yaml bad indentation", "device_id: a\nrepo:\n  url: x\n branch: main\n", nil, "agent.yaml:4:2: YAML syntax"},
		{"duplicate key", "device_id: a\nrepo: {url: x}\ndevice_id: b\n", nil, `agent.yaml:3:1: duplicate key "device_id" (first at line 1)`},
		{"not a mapping", "- a\n- b\n", nil, "want a mapping of fields"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("agent.yaml", []byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("config %+v", c)
			}
		})
	}
}

// Every unknown and every invalid field is reported at its line, not only the first.
func TestParseConfigEveryProblem(t *testing.T) {
	in := `device_id: gw-01
repo:
  url: file:///x
  brnach: main
  depth: deep
poll_intervall: 30s
retry_min: soon
log_format: xml
containers:
  enabled: "yes"
  prefx: x-
update:
  bootloader: lilo
trust:
  allow_software: maybe
`
	_, err := ParseConfig("agent.yaml", []byte(in))
	var errs ConfigErrors
	if !errors.As(err, &errs) || !errors.Is(err, ErrConfigFile) {
		t.Fatalf("err = %v (%T), want ConfigErrors", err, err)
	}
	want := []string{
		"agent.yaml:4:3: unknown field repo.brnach (did you mean branch?)",
		"agent.yaml:5:3: repo.depth: want a whole number, found string",
		"agent.yaml:6:1: unknown field poll_intervall (did you mean poll_interval?)",
		"agent.yaml:7:1: retry_min: want a duration",
		"agent.yaml:10:3: containers.enabled: want true or false, found string",
		"agent.yaml:11:3: unknown field containers.prefx (did you mean prefix?)",
		"agent.yaml:15:3: trust.allow_software: want true or false, found string",
	}
	got := err.Error()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("errors lack %q:\n%s", w, got)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("%d errors, want %d:\n%s", len(errs), len(want), got)
	}
	// Once the file's fields are known and typed, every out-of-range value
	// is reported together, at its line.
	_, err = ParseConfig("agent.yaml", []byte("device_id: gw-01\nrepo:\n  url: x\nlog_format: xml\nlog_level: loud\nupdate:\n  bootloader: lilo\n"))
	for _, w := range []string{
		`agent.yaml:4:1: log_format: "xml": want text or json`,
		`agent.yaml:5:1: log_level: "loud"`,
		`agent.yaml:7:3: update.bootloader: "lilo": want uboot or grub`,
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("errors lack %q:\n%v", w, err)
		}
	}
	_, err = ParseConfig("agent.yaml", []byte("device_id: gw-01\n"))
	if err == nil || !strings.Contains(err.Error(), "agent.yaml: repo.url: required") {
		t.Errorf("missing repo.url: %v", err)
	}
}

func TestLoadConfigFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte("device_id: d1\nrepo: {url: file:///x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil || c.DeviceID != "d1" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := LoadConfig(p + ".missing"); err == nil {
		t.Fatal("missing file accepted")
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(DefaultsYAML))
	f.Add([]byte("device_id: gw-01\nrepo: {url: file:///x}\npoll_interval: 30s\n"))
	f.Add([]byte("repo:\n  signers:\n    ssh_keys: [1, 2]\n"))
	f.Add([]byte("poll_interval: 5\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseConfig("agent.yaml", in)
		if err == nil && (c.Repo.URL == "" || c.PollInterval.D() < time.Second || c.OutboxMax < 1) {
			t.Fatalf("accepted an invalid config: %+v", c)
		}
	})
}
