package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/agent"
	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
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
	kinds := metricKinds(t)
	metric := regexp.MustCompile(`shoal_[a-z_]+`)
	rated := regexp.MustCompile(`(?:rate|increase)\((shoal_[a-z_]+)`)
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
			// rate() and increase() are for counters (and a histogram's series).
			for _, m := range rated.FindAllStringSubmatch(tg.Expr, -1) {
				name := m[1]
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				switch k := kinds[base]; {
				case k == "Counter", k == "Histogram" && base != name:
				case k == "":
				default:
					t.Errorf("panel %q takes the rate of %s, a %s", p.Title, name, k)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d metric references found", n)
	}
}

// metricKinds maps the metric names the non-test Go code declares through
// prometheus.New<Kind>[Vec](prometheus.<Kind>Opts{Name: …}) to their kind.
func metricKinds(t *testing.T) map[string]string {
	decl := regexp.MustCompile(`prometheus\.New(Counter|Gauge|Histogram|Summary)(?:Vec)?\(prometheus\.\w+Opts\{[^}]*?Name:\s*"(shoal_[a-z_]+)"`)
	out := map[string]string{}
	err := filepath.Walk("../..", func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range decl.FindAllSubmatch(b, -1) {
			out[string(m[2])] = string(m[1])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out["shoal_agent_outbox_dropped_total"] != "Counter" || out["shoal_agent_pass_duration_seconds"] != "Histogram" {
		t.Fatalf("metric kinds not found in the code: %v", out)
	}
	return out
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

// TestDockerBuildContext sends the repository as a build context through the
// real docker CLI and Engine, as `docker build -f deploy/Dockerfile.hub .`
// does, and checks what .dockerignore lets through: the source, small, with
// no Git history, no binaries and no test debris.
func TestDockerBuildContext(t *testing.T) {
	bin := testenv.LookPath(t, "docker", "docker.io")
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// An image whose only layer is the context, so it can be listed.
	build := exec.Command(bin, "build", "-q", "-f", "-", "--label", dockertest.LabelKey+"="+label, root)
	build.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	build.Stdin = strings.NewReader("FROM scratch\nCOPY . /ctx/\n")
	var stderr bytes.Buffer
	build.Stderr = &stderr
	out, err := build.Output()
	if err != nil {
		t.Fatalf("docker build: %v\n%s", err, stderr.Bytes())
	}
	id := strings.TrimSpace(string(out))
	var size int64
	var files []string
	for _, lh := range imageLayerFiles(t, bin, id) { // the context as COPY wrote it
		files = append(files, lh.Name)
		if !strings.HasPrefix(lh.Name, "ctx/bin/") { // binaries staged for an image are wanted there
			size += lh.Size
		}
	}
	seen := map[string]bool{}
	for _, f := range files {
		seen[f] = true
		switch {
		case strings.HasPrefix(f, "ctx/.git/") || f == "ctx/.git",
			strings.HasPrefix(f, "ctx/bin/") && !strings.HasSuffix(f, "/shoal") && !strings.HasSuffix(f, "/") && !strings.HasPrefix(f, "ctx/bin/hub-image/"),
			strings.HasSuffix(f, ".test"), f == "ctx/shoal", f == "ctx/shoal-agent":
			t.Errorf("the build context holds %s", f)
		}
	}
	for _, want := range []string{"ctx/go.mod", "ctx/go.sum", "ctx/cmd/shoal/main.go", "ctx/deploy/Dockerfile.hub"} {
		if !seen[want] {
			t.Errorf("the build context lacks %s", want)
		}
	}
	const limit = 16 << 20
	t.Logf("build context: %d files, %.1f MiB", len(files), float64(size)/(1<<20))
	if size > limit {
		t.Errorf("the build context is %.1f MiB, more than %d MiB", float64(size)/(1<<20), limit>>20)
	}
}

// imageLayerFiles saves image ref with the docker CLI and returns the
// header of every file its layers hold, in layer order.
func imageLayerFiles(t *testing.T, docker, ref string) []*tar.Header {
	t.Helper()
	img, err := exec.Command(docker, "save", ref).Output()
	if err != nil {
		t.Fatalf("docker save %s: %v", ref, err)
	}
	var out []*tar.Header
	tr := tar.NewReader(bytes.NewReader(img))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(h.Name, ".tar") && !strings.HasPrefix(h.Name, "blobs/") {
			continue
		}
		lr := tar.NewReader(tr)
		for {
			lh, err := lr.Next()
			if err != nil {
				break
			}
			out = append(out, lh)
		}
	}
}

// TestAnsibleRole runs the play with ansible-playbook against localhost, as
// three hosts each installing into a temp root of its own: one configured,
// whose config points at the release and bundle keys the play installs and
// is checked by the real shoal-agent (the template's validate:); one with the
// default variables (no fleet repo), where the play stops before it writes a
// config the service would refuse at start; one with a value only the agent
// knows is wrong, refused by validate:.
func TestAnsibleRole(t *testing.T) {
	bin := testenv.LookPath(t, "ansible-playbook", "ansible")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain to build shoal-agent")
	}
	root := t.TempDir()
	agentBin := filepath.Join(root, "build", "shoal-agent")
	build := exec.Command(goBin, "build", "-o", agentBin, "../shoal-agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build shoal-agent: %v\n%s", err, out)
	}
	keyPEM := "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"
	const repo = "https://git.example/fleet.git"
	hosts := map[string]map[string]any{
		"gw-01": {"shoal_fleet_repo": repo, "shoal_release_keys": keyPEM, "shoal_bundle_keys": keyPEM},
		"gw-02": {},
		"gw-03": {"shoal_fleet_repo": repo, "shoal_update_bootloader": "lilo"},
	}
	for name, vars := range hosts {
		dest := filepath.Join(root, name)
		for _, d := range []string{"usr/bin", "etc/systemd/system"} {
			if err := os.MkdirAll(filepath.Join(dest, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		vars["ansible_connection"] = "local"
		vars["ansible_python_interpreter"] = "/usr/bin/python3"
		vars["ansible_become"] = false
		vars["shoal_agent_binary"] = agentBin
		vars["shoal_bin_dir"] = filepath.Join(dest, "usr/bin")
		vars["shoal_config_dir"] = filepath.Join(dest, "etc/shoal")
		vars["shoal_systemd_dir"] = filepath.Join(dest, "etc/systemd/system")
		vars["shoal_state_dir"] = filepath.Join(dest, "var/lib/shoal")
		vars["shoal_start_service"] = false
	}
	inv, _ := json.Marshal(map[string]any{"shoal_devices": map[string]any{"hosts": hosts}})
	invPath := filepath.Join(root, "inventory.yml") // JSON is YAML
	if err := os.WriteFile(invPath, inv, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-i", invPath, "site.yml")
	cmd.Dir = "../../deploy/ansible"
	cmd.Env = append(os.Environ(), "ANSIBLE_LOCAL_TEMP="+t.TempDir(), "ANSIBLE_HOME="+t.TempDir(), "ANSIBLE_NOCOLOR=1")
	outB, _ := cmd.CombinedOutput() // two hosts fail by design
	out := string(outB)
	for _, want := range []string{"ok=", "gw-01", "shoal_fleet_repo is empty", "update.bootloader"} {
		if !strings.Contains(out, want) {
			t.Errorf("ansible-playbook output lacks %q", want)
		}
	}
	// gw-01: a config the agent accepts, pointing at the keys the play installed.
	cfgPath := filepath.Join(root, "gw-01", "etc/shoal/agent.yaml")
	cfg, err := agent.LoadConfig(cfgPath)
	if err != nil {
		t.Fatalf("gw-01's config: %v\n%s", err, out)
	}
	if cfg.DeviceID != "gw-01" || cfg.Repo.URL != repo {
		t.Errorf("gw-01's config %+v", cfg)
	}
	for field, p := range map[string]string{"update.trust_roots": cfg.Update.TrustRoots, "provision.bundle_keys": cfg.Provision.BundleKeys} {
		if b, err := os.ReadFile(p); err != nil || strings.TrimSpace(string(b)) != strings.TrimSpace(keyPEM) {
			t.Errorf("gw-01: %s = %q, which does not hold the keys the play installed: %v %q", field, p, err, b)
		}
	}
	if out, err := exec.Command(filepath.Join(root, "gw-01", "usr/bin/shoal-agent"), "config", "--config", cfgPath).CombinedOutput(); err != nil {
		t.Errorf("the installed shoal-agent config: %v\n%s", err, out)
	}
	// gw-02 and gw-03: no config written.
	for _, h := range []string{"gw-02", "gw-03"} {
		if _, err := os.Stat(filepath.Join(root, h, "etc/shoal/agent.yaml")); !os.IsNotExist(err) {
			t.Errorf("%s: a config was written: %v", h, err)
		}
	}
	if t.Failed() {
		t.Logf("ansible-playbook:\n%s", out)
	}
}
