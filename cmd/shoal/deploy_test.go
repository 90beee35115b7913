package main

import (
	"os/exec"

	"encoding/json"
	"github.com/shoalfleet/shoal/internal/testenv"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every metric the Grafana dashboard queries is one the code defines.
func TestGrafanaDashboardMetricsExist(t *testing.T) {
	b, err := os.ReadFile("../../deploy/grafana/shoal.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	defined := definedMetrics(t)
	metric := regexp.MustCompile(`shoal_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range metric.FindAllString(tg.Expr, -1) {
				n++
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
				if !defined[base] {
					t.Errorf("panel %q queries %s, which no code defines", p.Title, m)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d metric references found", n)
	}
}

// definedMetrics collects the metric names the non-test Go code declares.
func definedMetrics(t *testing.T) map[string]bool {
	name := regexp.MustCompile(`"(shoal_[a-z_]+)"`)
	out := map[string]bool{}
	err := filepath.Walk("../..", func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range name.FindAllSubmatch(b, -1) {
			out[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAnsiblePlaybookSyntax(t *testing.T) {
	bin := testenv.LookPath(t, "ansible-playbook", "ansible")
	cmd := exec.Command(bin, "--syntax-check", "-i", "inventory.example.ini", "site.yml")
	cmd.Dir = "../../deploy/ansible"
	cmd.Env = append(os.Environ(), "ANSIBLE_LOCAL_TEMP="+t.TempDir(), "ANSIBLE_HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ansible-playbook --syntax-check: %v\n%s", err, out)
	}
}

func TestSystemdUnitsVerify(t *testing.T) {
	bin := testenv.LookPath(t, "systemd-analyze", "systemd")
	for _, unit := range []string{"shoal-hub.service", "shoal-agent.service"} {
		t.Run(unit, func(t *testing.T) {
			out, _ := exec.Command(bin, "verify", filepath.Join("../../deploy/systemd", unit)).CombinedOutput()
			// verify also complains that /usr/bin/shoal* is not installed here; anything else is a unit error.
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if line == "" || strings.Contains(line, "/usr/bin/shoal") {
					continue
				}
				t.Errorf("systemd-analyze verify: %s", line)
			}
		})
	}
}
