package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/dockertest"
)

// fleetDevices is the example fleet in the order the demo starts devices, so
// that a short demo still has the canary, a second gateway and a plant server.
var fleetDevices = []struct{ id, role string }{
	{"gw-01", "gateway"}, {"gw-02", "gateway"}, {"plant-01", "server"},
	{"gw-03", "gateway"}, {"gw-04", "gateway"}, {"gw-05", "gateway"}, {"plant-02", "server"},
}

// Options configure one demo run.
type Options struct {
	Devices int       // how many of fleetDevices to run (1..7)
	Out     io.Writer // narration, one line a step
	// Hold keeps the hub and devices running after the script until ctx ends.
	Hold bool
	// Timeout bounds each wait for the fleet to reach a state; 0 means 2 minutes.
	Timeout time.Duration
	// Result, if not nil, receives what the script observed.
	Result *Result
	// OnStep, if not nil, is called after each checked step ("converged",
	// "release", "trial-failed", "rollback", "invalid") with the status
	// page's URL, while the fleet is in that state; an error ends the run.
	OnStep func(ctx context.Context, step, pageURL string) error
}

// Result is what the script saw, for the end-to-end test.
type Result struct {
	ID, Dir                           string // prefix and label of what the demo created, its temp dir
	FirstCommit, NewCommit, BadCommit string
	Converged                         map[string]api.Status // each device's report on NewCommit
	Latest                            map[string]api.Status // each device's latest report at the hub
	ReleaseCommit                     string                // the OS release's commit, when the canary ran
	CanaryUpdate                      *api.UpdateStatus     // the canary's update status after the release
	RolledBack                        string                // device whose broken app was rolled back
	Rollback                          *api.Rollback
	// TPM says the agents ran the TPM simulator; NoTPM says why not (no cgo).
	TPM   bool
	NoTPM string
	// FailedTrial is the canary's update status after the release whose
	// trial failed, FailedProblem the problem it reported then.
	FailedTrial   *api.UpdateStatus
	FailedProblem *api.Problem
}

// demo holds one run's processes and paths; close undoes everything.
type demo struct {
	o      Options
	id     string // prefix and Docker label value of everything created
	dir    string
	bin    string
	repo   string
	cli    *client.Client
	hubURL string
	env    []string // operator environment for `shoal`
	hc     *http.Client
	op     string
	procs  []*exec.Cmd
	hub    *exec.Cmd            // the running hub
	agents map[string]*exec.Cmd // device ID -> its running shoal-agent
	cfgs   map[string]string    // device ID -> its config file
	boot   string               // the canary's slots and boot files
	// imageSums are the sha256 of the example apps' image tars in the repo.
	imageSums map[string]string
	// releaseCommit is the commit that rolled the release out, once it has.
	releaseCommit string
	canaryUpdate  *api.UpdateStatus
	releaseKey    ed25519.PrivateKey
	factory       []byte // the canary's running OS image, in slot a
	failedUpdate  *api.UpdateStatus
	failedProblem *api.Problem
	// tpm: the agent was built with the TPM simulator; noTPM says why not.
	tpm     bool
	noTPM   string
	devices []string
	role    map[string]string
	step    int
}

// Run runs the demo script; it returns nil only when every step was seen to
// succeed. With Hold it then waits for ctx to end. Everything it created is
// removed before it returns.
func Run(ctx context.Context, o Options) (err error) {
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	var rb [3]byte
	rand.Read(rb[:])
	d := &demo{o: o, id: "shoal-demo-" + hex.EncodeToString(rb[:]), role: map[string]string{}, agents: map[string]*exec.Cmd{}, cfgs: map[string]string{}}
	for _, fd := range fleetDevices[:o.Devices] {
		d.devices = append(d.devices, fd.id)
		d.role[fd.id] = fd.role
	}
	if d.dir, err = os.MkdirTemp("", d.id+"-"); err != nil {
		return err
	}
	if o.Result != nil {
		o.Result.ID, o.Result.Dir = d.id, d.dir
	}
	defer func() { err = errors.Join(err, d.close()) }()
	if err := d.script(ctx); err != nil {
		return err
	}
	if o.Hold {
		tokFile := filepath.Join(d.dir, "operator-token")
		if err := os.WriteFile(tokFile, []byte(d.op+"\n"), 0o600); err != nil {
			return err
		}
		d.say("every step succeeded; the hub and %d devices keep running. Try: SHOAL_HUB=%s SHOAL_HUB_CA=%s SHOAL_OPERATOR_TOKEN_FILE=%s %s hub device list. Ctrl-C stops and removes everything",
			len(d.devices), d.hubURL, filepath.Join(d.dir, "hub-ca.pem"), tokFile, filepath.Join(d.bin, "shoal"))
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (d *demo) say(format string, args ...any) {
	d.step++
	fmt.Fprintf(d.o.Out, "[%2d] %s\n", d.step, fmt.Sprintf(format, args...))
}

func (d *demo) script(ctx context.Context) error {
	var err error
	d.cli, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	d.say("building shoal and shoal-agent into %s", d.dir)
	if err := d.build(ctx); err != nil {
		return err
	}
	if d.tpm {
		d.say("shoal-agent is built with -tags tpmsim: each device keeps its keys in its own simulated TPM (go-tpm-tools' reference TPM, in the agent process)")
	} else {
		d.say("no TPM simulator (it needs cgo, gcc and libssl-dev: %s); devices use software keys, which the hub flags as weaker", d.noTPM)
	}
	d.say("building the example apps from source (examples/imagebuild: sensor-aggregator, metrics-exporter, FROM scratch) and writing the fleet repo (groups workshop, plant, canary; %s)", strings.Join(d.devices, ", "))
	if err := d.writeRepo(ctx); err != nil {
		return err
	}
	if err := d.shoal(ctx, "validate", d.repo); err != nil {
		return err
	}
	first, err := d.commit(ctx, "fleet: workshop gateways and plant servers")
	if err != nil {
		return err
	}
	d.say("starting shoal hub on SQLite")
	if err := d.startHub(ctx); err != nil {
		return err
	}
	d.say("hub up; fleet status page: %s/ (open to loopback clients; the certificate is from the hub's own CA)", d.hubURL)
	if err := d.startDevices(ctx); err != nil {
		return err
	}
	d.say("%d devices enrolled and running; waiting for them to converge on %s", len(d.devices), first[:8])
	if _, err := d.waitAll(ctx, "converge", func(_ string, s api.Status) bool {
		return s.State == api.StateConverged && s.Commit.Applied == first && s.Attest != nil && s.Attest.OK && s.Attest.Weak == !d.tpm
	}); err != nil {
		return err
	}
	kind := "a TPM quote from its simulated TPM"
	if !d.tpm {
		kind = "a software-key quote (weaker)"
	}
	d.say("all %d devices converged on %s, each attested to the hub by %s", len(d.devices), first[:8], kind)
	if err := d.sayVolumes(ctx); err != nil {
		return err
	}

	// A change to an app every device runs, announced by a poke.
	if err := d.writeFile("apps/metrics-exporter.yaml", appYAML(d, "metrics-exporter", exporterMemory2)); err != nil {
		return err
	}
	next, err := d.commit(ctx, "apps: metrics-exporter gets "+exporterMemory2+" of memory")
	if err != nil {
		return err
	}
	if err := d.shoal(ctx, "poke", "--commit", next); err != nil {
		return err
	}
	d.say("committed metrics-exporter with %s of memory (was %s) as %s and poked the fleet", exporterMemory2, exporterMemory, next[:8])
	converged, err := d.waitAll(ctx, "converge on the new commit", func(_ string, s api.Status) bool {
		return s.State == api.StateConverged && s.Commit.Applied == next
	})
	if err != nil {
		return err
	}
	d.say("all %d devices converged on %s", len(d.devices), next[:8])
	if err := d.onStep(ctx, "converged"); err != nil {
		return err
	}

	if d.role[canary] != "" {
		if err := d.release(ctx); err != nil {
			return err
		}
	}

	// A broken version on one device: its health gate fails and it is rolled back.
	victim := d.devices[len(d.devices)-1]
	app := appFor(d.role[victim])
	if err := d.writeFile("devices/"+victim+".yaml", deviceYAML(d, victim, app)); err != nil {
		return err
	}
	if err := d.shoal(ctx, "validate", d.repo); err != nil {
		return err
	}
	broken, err := d.commit(ctx, "devices: "+victim+" tries "+app+" 3")
	if err != nil {
		return err
	}
	if err := d.shoal(ctx, "poke", "--device", victim, "--commit", broken); err != nil {
		return err
	}
	d.say("committed a broken %s for %s only as %s (%s)", app, victim, broken[:8], brokenWhy[app])
	var rb *api.Rollback
	if _, err := d.wait(ctx, "roll back "+victim, []string{victim}, func(_ string, s api.Status) bool {
		for _, a := range s.Apps {
			if a.Name == app && a.Rollback != nil && s.Commit.Attempted == broken {
				rb = a.Rollback
				return true
			}
		}
		return false
	}); err != nil {
		return err
	}
	d.say("%s rolled %s back; the hub has the reason: check %q, message %q (see %s/devices/%s)", victim, app, rb.Check, rb.Message, d.hubURL, victim)
	if err := d.onStep(ctx, "rollback"); err != nil {
		return err
	}
	// Undo the override so the fleet is healthy before the invalid commit.
	if err := os.Remove(filepath.Join(d.repo, "devices", victim+".yaml")); err != nil {
		return err
	}
	if err := d.writeFile("devices/"+victim+".yaml", deviceYAML(d, victim, "")); err != nil {
		return err
	}
	good, err := d.commit(ctx, "devices: "+victim+" back to the group's version")
	if err != nil {
		return err
	}
	if err := d.shoal(ctx, "poke", "--commit", good); err != nil {
		return err
	}
	if _, err := d.waitAll(ctx, "converge after the rollback", func(_ string, s api.Status) bool {
		return s.State == api.StateConverged && s.Commit.Applied == good
	}); err != nil {
		return err
	}
	d.say("override removed; all %d devices converged on %s", len(d.devices), good[:8])

	// An invalid commit: every device keeps its last good commit and says why.
	if err := d.writeFile("apps/metrics-exporter.yaml", strings.Replace(appYAML(d, "metrics-exporter", exporterMemory2), "restart: unless-stopped", "restart: sometimes", 1)); err != nil {
		return err
	}
	bad, err := d.commit(ctx, "apps: an invalid restart policy")
	if err != nil {
		return err
	}
	if err := d.shoal(ctx, "poke", "--commit", bad); err != nil {
		return err
	}
	d.say("committed an invalid spec as %s and poked the fleet", bad[:8])
	latest, err := d.waitAll(ctx, "refuse the invalid commit", func(_ string, s api.Status) bool {
		return s.Commit.Attempted == bad && s.Commit.Applied == good && s.Problem != nil && s.Problem.Reason == "spec-invalid"
	})
	if err != nil {
		return err
	}
	s := latest[d.devices[0]]
	d.say("every device kept %s and reports spec-invalid: %s", good[:8], firstLine(s.Problem.Message))
	if err := d.onStep(ctx, "invalid"); err != nil {
		return err
	}
	if err := d.site(ctx); err != nil {
		return err
	}
	if r := d.o.Result; r != nil {
		*r = Result{ID: d.id, Dir: d.dir, Converged: converged, ReleaseCommit: d.releaseCommit, CanaryUpdate: d.canaryUpdate, FirstCommit: first, NewCommit: next, BadCommit: bad, Latest: latest, RolledBack: victim, Rollback: rb,
			TPM: d.tpm, NoTPM: d.noTPM, FailedTrial: d.failedUpdate, FailedProblem: d.failedProblem}
	}
	return nil
}

func (d *demo) onStep(ctx context.Context, step string) error {
	if d.o.OnStep == nil {
		return nil
	}
	if err := d.o.OnStep(ctx, step, d.hubURL+"/"); err != nil {
		return fmt.Errorf("step %s: %w", step, err)
	}
	return nil
}

// firstLine keeps a multi-line message to one narration line.
func firstLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// appFor is the app the broken version replaces on a device of this role.
func appFor(role string) string {
	if role == "server" {
		return "metrics-exporter"
	}
	return "sensor-aggregator"
}

// brokenSpec is the device-file override that breaks each app the way a bad
// change would: a configuration the program refuses at start, so it exits
// and never gets healthy; brokenWhy says so in the narration.
var (
	brokenSpec = map[string]string{
		"sensor-aggregator": "      env:\n        WINDOW: \"0s\"\n",
		"metrics-exporter":  "      command: [\"--rootfs\", \"/mnt/not-mounted\"]\n",
	}
	brokenWhy = map[string]string{
		"sensor-aggregator": "WINDOW=0s, which it refuses at start",
		"metrics-exporter":  "--rootfs pointing where nothing is mounted, so it exits at start",
	}
)

// build builds shoal as shipped (static) and shoal-agent with the TPM
// simulator (cgo, -tags tpmsim), or static when that build fails.
func (d *demo) build(ctx context.Context) error {
	d.bin = filepath.Join(d.dir, "bin")
	gobuild := func(cgo string, args ...string) error {
		cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", d.bin + "/"}, args...)...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := gobuild("0", "github.com/shoalfleet/shoal/cmd/shoal"); err != nil {
		return err
	}
	err := gobuild("1", "-tags", "tpmsim", "github.com/shoalfleet/shoal/cmd/shoal-agent")
	if err == nil {
		d.tpm = true
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	d.noTPM = firstLine(err.Error())
	return gobuild("0", "github.com/shoalfleet/shoal/cmd/shoal-agent")
}

// The example apps' images (examples/), built from source and saved into the
// fleet repo as tars with their sha256: nothing is pulled.
var exampleApps = []string{"sensor-aggregator", "metrics-exporter"}

// exporterMemory is metrics-exporter's memory limit, exporterMemory2 the
// one the demo's second commit gives it.
const exporterMemory, exporterMemory2 = "64m", "96m"

func (d *demo) imageRef(app string) string { return d.id + "/" + app + ":1.0.0" }

// buildImages runs examples/imagebuild (as an operator would) to build the
// example apps' images, labelled and named after this run.
func (d *demo) buildImages(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "go", "run", "github.com/shoalfleet/shoal/examples/imagebuild",
		"-ref-prefix", d.id+"/", "-label", dockertest.LabelKey+"="+d.id)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go run ./examples/imagebuild: %w\n%s", err, out)
	}
	return nil
}

func (d *demo) writeRepo(ctx context.Context) error {
	d.repo = filepath.Join(d.dir, "fleet")
	if err := d.buildImages(ctx); err != nil {
		return err
	}
	d.imageSums = map[string]string{}
	files := map[string]string{
		"fleet.cue": "api_version: \"shoal/v1\"\ndescription: \"Riverside plant (demo): workshop gateways and plant servers\"\n" +
			"defaults: update: offline_ok: true\n",
		"groups/workshop.yaml": "description: Workshop floor gateways\nselector:\n  match_labels:\n    role: gateway\nspec:\n  apps:\n    sensor-aggregator: {}\n    metrics-exporter: {}\n",
		"groups/plant.yaml":    "description: Plant servers\nselector:\n  match_labels:\n    role: server\nspec:\n  apps:\n    metrics-exporter: {}\n",
		"groups/canary.yaml":   "description: Canary devices, updated first\nselector:\n  devices: [gw-01]\npriority: 10\n",
	}
	for _, app := range exampleApps {
		rc, err := d.cli.ImageSave(ctx, []string{d.imageRef(app)})
		if err != nil {
			return fmt.Errorf("save image: %w", err)
		}
		tarBytes, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("save image: %w", err)
		}
		sum := sha256.Sum256(tarBytes)
		d.imageSums[app] = hex.EncodeToString(sum[:])
		files["images/"+app+".tar"] = string(tarBytes)
	}
	files["apps/sensor-aggregator.yaml"] = appYAML(d, "sensor-aggregator", "")
	files["apps/metrics-exporter.yaml"] = appYAML(d, "metrics-exporter", exporterMemory)
	for _, id := range d.devices {
		files["devices/"+id+".yaml"] = deviceYAML(d, id, "")
	}
	for name, data := range files {
		if err := d.writeFile(name, data); err != nil {
			return err
		}
	}
	return d.git(ctx, "init", "-q", "-b", "main")
}

// appYAML is one of the example apps from its tar in the repo, with a
// quick healthcheck (the program's own --health) and no host ports (every
// device shares one Engine). memory sets metrics-exporter's limit.
func appYAML(d *demo, name, memory string) string {
	head := fmt.Sprintf(`image:
  ref: %s
  source:
    path: images/%s.tar
    sha256: %s
restart: unless-stopped
read_only: true
cap_drop: [ALL]
healthcheck:
  test: ["CMD", "/%s", "--health"]
  interval: 1s
  timeout: 5s
  retries: 2
health_timeout: 25s
labels:
  %s: %s
`, d.imageRef(name), name, d.imageSums[name], name, dockertest.LabelKey, d.id)
	if name == "sensor-aggregator" {
		return "description: sensor readings in over HTTP and UDP, window averages out (examples/sensor-aggregator)\n" + head +
			"env:\n  LOG_LEVEL: info\nvolumes:\n  - source: aggregator-buffer\n    target: /var/lib/aggregator\n"
	}
	return "description: the host's metrics for Prometheus (examples/metrics-exporter)\n" + head +
		"command: [\"--rootfs\", \"/host\"]\nvolumes:\n  - source: /\n    target: /host\n    read_only: true\nmemory: " + memory + "\n"
}

// sayVolumes narrates the sensor aggregators' named volumes: one per
// device, each under the device's container prefix, on the one Engine.
func (d *demo) sayVolumes(ctx context.Context) error {
	vs, err := d.cli.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("name", d.id+"-"))})
	if err != nil {
		return fmt.Errorf("list volumes: %w", err)
	}
	var names []string
	for _, v := range vs.Volumes {
		if strings.HasSuffix(v.Name, "-aggregator-buffer") {
			names = append(names, v.Name)
		}
	}
	sort.Strings(names)
	gateways := 0
	for _, id := range d.devices {
		if d.role[id] == "gateway" {
			gateways++
		}
	}
	if len(names) != gateways {
		return fmt.Errorf("sensor-aggregator volumes %v, want one for each of the %d gateways", names, gateways)
	}
	d.say("each gateway's sensor-aggregator keeps its windows in a volume of its own on the one Engine: %s", strings.Join(names, ", "))
	return nil
}

// deviceYAML is a device file: its role, its own network (devices share one
// Engine), and, when broken names an app, a version of it that never gets healthy.
func deviceYAML(d *demo, id, broken string) string {
	s := fmt.Sprintf("description: %s (simulated)\nlabels:\n  role: %s\nspec:\n  network: %s-%s\n", id, d.role[id], d.id, id)
	if broken != "" {
		s += fmt.Sprintf("  apps:\n    %s:\n%s", broken, brokenSpec[broken])
	}
	return s
}

func (d *demo) writeFile(name, data string) error {
	p := filepath.Join(d.repo, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(data), 0o644)
}

func (d *demo) git(ctx context.Context, args ...string) error {
	_, err := d.gitOut(ctx, args...)
	return err
}

func (d *demo) gitOut(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = d.repo
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=demo", "GIT_AUTHOR_EMAIL=demo@example.invalid",
		"GIT_COMMITTER_NAME=demo", "GIT_COMMITTER_EMAIL=demo@example.invalid", "GIT_CONFIG_NOSYSTEM=1", "HOME="+d.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// commit commits the whole fleet repo and returns the commit ID.
func (d *demo) commit(ctx context.Context, msg string) (string, error) {
	if err := d.git(ctx, "add", "-A"); err != nil {
		return "", err
	}
	if err := d.git(ctx, "commit", "-qm", msg); err != nil {
		return "", err
	}
	return d.gitOut(ctx, "rev-parse", "HEAD")
}

func (d *demo) start(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(d.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(d.bin, args[0]), args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d.procs = append(d.procs, cmd)
	return cmd, nil
}

func (d *demo) startHub(ctx context.Context) error {
	db := "sqlite://" + filepath.Join(d.dir, "hub.db")
	out, err := exec.CommandContext(ctx, filepath.Join(d.bin, "shoal"), "hub", "token", "create", "--db", db).Output()
	if err != nil {
		return fmt.Errorf("shoal hub token create: %w", err)
	}
	d.op = strings.TrimSpace(string(out))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	d.hubURL = "https://" + addr
	if d.hub, err = d.start(ctx, "hub", "shoal", "hub", "--listen", addr, "--db", db, "--host", "127.0.0.1", "--poll-wait", "20s", "--open-access"); err != nil {
		return err
	}
	// The hub writes its CA into the database on first start: wait for it and /healthz.
	st, err := store.Open(ctx, db)
	if err != nil {
		return err
	}
	defer st.Close()
	return d.until(ctx, "the hub to answer", func() bool {
		ca, err := st.CA(ctx)
		if err != nil {
			return false
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.CertPEM)
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
		resp, err := hc.Get(d.hubURL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false
		}
		caFile := filepath.Join(d.dir, "hub-ca.pem")
		if os.WriteFile(caFile, ca.CertPEM, 0o600) != nil {
			return false
		}
		d.hc = hc
		d.env = []string{"SHOAL_HUB=" + d.hubURL, "SHOAL_HUB_CA=" + caFile, "SHOAL_OPERATOR_TOKEN=" + d.op}
		return true
	})
}

var (
	tokenRe = regexp.MustCompile(`token:\s+(\S+)`)
	fpRe    = regexp.MustCompile(`ca-fingerprint:\s+([0-9a-f]{64})`)
)

func (d *demo) startDevices(ctx context.Context) error {
	// The simulator makes each device's seed and keeps it in its state dir.
	tpm := "none"
	if d.tpm {
		tpm = "simulator"
	}
	for _, id := range d.devices {
		cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "shoal"), "token", "create", "--device", id, "--ttl", "1h")
		cmd.Env = append(os.Environ(), d.env...)
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("shoal token create --device %s: %w", id, err)
		}
		tok, fp := tokenRe.FindSubmatch(out), fpRe.FindSubmatch(out)
		if tok == nil || fp == nil {
			return fmt.Errorf("shoal token create printed %q", out)
		}
		state := filepath.Join(d.dir, "devices", id)
		if err := os.MkdirAll(state, 0o700); err != nil {
			return err
		}
		cfgPath := filepath.Join(state, "agent.yaml")
		cfg := fmt.Sprintf("device_id: %s\nstate_dir: %s\nrepo:\n  url: file://%s\npoll_interval: 3s\nretry_min: 1s\nretry_max: 5s\nmetrics_addr: \"\"\ncontainers:\n  prefix: %s-%s-\ntrust:\n  tpm: %s\nhub_url: %s\n",
			id, filepath.Join(state, "state"), d.repo, d.id, id, tpm, d.hubURL)
		if id == canary {
			if cfg, err = d.canaryConfig(cfg, state); err != nil {
				return err
			}
		}
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return err
		}
		enrol := exec.CommandContext(ctx, filepath.Join(d.bin, "shoal-agent"), "enrol", "--config", cfgPath, "--hub", d.hubURL, "--token", string(tok[1]), "--ca-fingerprint", string(fp[1]))
		if out, err := enrol.CombinedOutput(); err != nil {
			return fmt.Errorf("shoal-agent enrol %s: %w\n%s", id, err, out)
		}
		d.cfgs[id] = cfgPath
		if d.agents[id], err = d.start(ctx, id, "shoal-agent", "--config", cfgPath); err != nil {
			return err
		}
		d.say("%s (%s) enrolled with a one-time token and started: containers %s-%s-*, network %s-%s", id, d.role[id], d.id, id, d.id, id)
	}
	return nil
}

// shoal runs the operator CLI against the demo hub.
func (d *demo) shoal(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "shoal"), args...)
	cmd.Env = append(os.Environ(), d.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("shoal %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// latest is a device's latest status report at the hub.
func (d *demo) latest(ctx context.Context, id string) (api.Status, error) {
	var s api.Status
	req, err := http.NewRequestWithContext(ctx, "GET", d.hubURL+"/v1/admin/devices/"+id+"/reports?limit=1", nil)
	if err != nil {
		return s, err
	}
	req.Header.Set("Authorization", "Bearer "+d.op)
	resp, err := d.hc.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	var reps []api.Status
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("reports of %s: %s", id, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&reps); err != nil {
		return s, fmt.Errorf("reports of %s: %w", id, err)
	}
	if len(reps) == 0 {
		return s, fmt.Errorf("no report from %s yet", id)
	}
	return reps[0], nil
}

func (d *demo) waitAll(ctx context.Context, what string, ok func(string, api.Status) bool) (map[string]api.Status, error) {
	return d.wait(ctx, what, d.devices, ok)
}

// wait polls the hub until every device's latest report satisfies ok.
func (d *demo) wait(ctx context.Context, what string, ids []string, ok func(string, api.Status) bool) (map[string]api.Status, error) {
	got := map[string]api.Status{}
	var last string
	err := d.until(ctx, "devices to "+what, func() bool {
		for _, id := range ids {
			s, err := d.latest(ctx, id)
			if err != nil {
				last = err.Error()
				return false
			}
			got[id] = s
			if !ok(id, s) {
				b, _ := json.Marshal(s)
				last = id + ": " + string(b)
				return false
			}
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("%w; last seen: %s", err, last)
	}
	return got, nil
}

// until polls cond every 500 ms until it holds, ctx ends or the timeout passes:
// the state lives in other processes, so there is no event to wait on.
func (d *demo) until(ctx context.Context, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// stop ends one process with SIGTERM, or SIGKILL after 15 s.
func (d *demo) stop(p *exec.Cmd) error {
	if err := p.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop %s: %w", p.Path, err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		<-done
	}
	return nil
}

// close stops every process, removes every Docker object the demo created
// (by label, and networks by name prefix) and the temp dir.
func (d *demo) close() error {
	var errs []error
	for _, p := range d.procs {
		if p.ProcessState == nil {
			p.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range d.procs {
		if p.ProcessState != nil {
			continue // already stopped (the canary's simulated reboot)
		}
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if d.cli != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		// Containers by name prefix too, in case an agent did not copy the label.
		cs, _ := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", d.id+"-"))})
		for _, c := range cs {
			if err := d.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
				errs = append(errs, fmt.Errorf("remove container %v: %w", c.Names, err))
			}
		}
		if err := dockertest.RemoveLabelled(ctx, d.cli, d.id); err != nil {
			errs = append(errs, err)
		}
		// Named volumes carry each device's container prefix (ours, then the device).
		vs, _ := d.cli.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("name", d.id+"-"))})
		for _, v := range vs.Volumes {
			if err := d.cli.VolumeRemove(ctx, v.Name, true); err != nil {
				errs = append(errs, fmt.Errorf("remove volume %s: %w", v.Name, err))
			}
		}
		ns, _ := d.cli.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", d.id+"-"))})
		for _, n := range ns {
			if err := d.cli.NetworkRemove(ctx, n.ID); err != nil {
				errs = append(errs, fmt.Errorf("remove network %s: %w", n.Name, err))
			}
		}
		d.cli.Close()
	}
	if err := os.RemoveAll(d.dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("clean up: %w", errors.Join(errs...))
	}
	return nil
}
