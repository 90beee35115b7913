package agent

import (
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
		{"yaml syntax", "device_id: [\n", nil, "config"},
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
