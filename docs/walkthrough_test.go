package docs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// walkthrough is the page the test follows.
const walkthrough = "guide/first-fleet.md"

// A step is one ```sh block of the walk-through, marked for the test by an
// HTML comment on the line before it:
//
//	<!-- walkthrough -->               run it; it must exit 0
//	<!-- walkthrough: until REGEXP --> run it again every 2s until its output matches REGEXP
//	                                   ($NAME is replaced by the shell's variable first)
//	<!-- walkthrough: cleanup -->      run it at the end, also when the test fails
//
// Blocks with no marker (cloning Shoal, output shown for the reader) are not run.
type step struct {
	kind  string // "run", "until", "cleanup"
	until string
	code  string
	line  int
}

var markerRE = regexp.MustCompile(`^<!--\s*walkthrough(?::\s*(until|cleanup)\b\s*(.*?))?\s*-->\s*$`)

func parseSteps(t *testing.T, path string) []step {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var steps []step
	for i := 0; i < len(lines); i++ {
		m := markerRE.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "```sh") {
			t.Fatalf("%s:%d: a walkthrough marker must stand right above a ```sh block", path, i+1)
		}
		s := step{kind: "run", line: i + 2}
		if m[1] != "" {
			s.kind, s.until = m[1], m[2]
		}
		if s.kind == "until" && s.until == "" {
			t.Fatalf("%s:%d: until needs a regexp", path, i+1)
		}
		var code []string
		for i += 2; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
			code = append(code, lines[i])
		}
		s.code = strings.Join(code, "\n")
		steps = append(steps, s)
	}
	if len(steps) == 0 {
		t.Fatalf("%s: no walkthrough steps", path)
	}
	return steps
}

// shell runs the walk-through's blocks one after another as one terminal
// session would: the working directory and exported variables carry over
// from block to block (kept in a state file between bash processes).
type shell struct {
	t     *testing.T
	dir   string   // where the state files live
	env   []string // the environment every block starts from
	subst *strings.Replacer
	pgids []int // process groups of the blocks, for what they left running
}

func (sh *shell) script(code string) string {
	state := filepath.Join(sh.dir, "state.sh")
	return "set -e -o pipefail\nsource " + state + "\n" + code + "\n" +
		`{ export -p; printf 'cd %q\n' "$PWD"; } > ` + state + ".new && mv " + state + ".new " + state + "\n" +
		`env -0 > ` + filepath.Join(sh.dir, "env") + "\n"
}

// run runs one block and returns its output (stdout and stderr).
func (sh *shell) run(ctx context.Context, code string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", "-c", sh.script(sh.subst.Replace(code)))
	cmd.Env = sh.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A block may start a process in the background (the hub, the agents):
	// it stays in the block's process group, which close ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 10 * time.Second
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		return "", err
	}
	sh.pgids = append(sh.pgids, cmd.Process.Pid)
	err := cmd.Wait()
	return out.String(), err
}

// vars reads the variables the last block left exported.
func (sh *shell) vars() map[string]string {
	b, _ := os.ReadFile(filepath.Join(sh.dir, "env"))
	out := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// close ends every process the blocks left running, by process group.
func (sh *shell) close() {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		alive := false
		for _, g := range sh.pgids {
			if syscall.Kill(-g, sig) == nil {
				alive = true
			}
		}
		if !alive {
			return
		}
		deadline := time.Now().Add(10 * time.Second)
		for _, g := range sh.pgids {
			for syscall.Kill(-g, 0) == nil && time.Now().Before(deadline) {
				waitABit()
			}
		}
	}
}

// waitABit blocks for a tenth of a second: polling the death of a process
// group, for which there is nothing to wait on.
func waitABit() { <-time.After(100 * time.Millisecond) }

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// walkEnv is the environment of the walk-through's terminal: a fresh HOME,
// Go's caches where they are (a cold build cache would take minutes), the
// Docker Engine the tests use, and a Git identity.
func walkEnv(t *testing.T, home string) []string {
	t.Helper()
	env := []string{"HOME=" + home, "LANG=C.UTF-8", "TERM=dumb",
		"GIT_AUTHOR_NAME=Riverside Operator", "GIT_AUTHOR_EMAIL=operator@riverside.example",
		"GIT_COMMITTER_NAME=Riverside Operator", "GIT_COMMITTER_EMAIL=operator@riverside.example"}
	for _, k := range []string{"PATH", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "TMPDIR", "SHOAL_REQUIRE_REAL"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	out, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH", "GOPROXY", "GOFLAGS", "GOTOOLCHAIN").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	for i, v := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if v != "" {
			env = append(env, []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOPROXY", "GOFLAGS", "GOTOOLCHAIN"}[i]+"="+v)
		}
	}
	return env
}

// removeByPrefix removes the containers, networks and volumes the agents
// made under prefix (their io.shoal.prefix label), if the walk-through's
// own clean-up left any.
func removeByPrefix(ctx context.Context, cli *client.Client, prefix string) error {
	var errs []error
	f := filters.NewArgs(filters.Arg("label", "io.shoal.prefix="+prefix))
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	errs = append(errs, err)
	for _, c := range cs {
		errs = append(errs, cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}))
	}
	vs, err := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	errs = append(errs, err)
	for _, v := range vs.Volumes {
		errs = append(errs, cli.VolumeRemove(ctx, v.Name, true))
	}
	ns, err := cli.NetworkList(ctx, network.ListOptions{Filters: f})
	errs = append(errs, err)
	for _, n := range ns {
		// Another test's devices may have joined a network of the example
		// fleet (plant) that these agents made: it stays while they use it.
		if ins, err := cli.NetworkInspect(ctx, n.ID, network.InspectOptions{}); err == nil && len(ins.Containers) > 0 {
			continue
		}
		errs = append(errs, cli.NetworkRemove(ctx, n.ID))
	}
	return errors.Join(errs...)
}

// removeImages removes the images whose names start with prefix, if the
// walk-through's own clean-up left any.
func removeImages(ctx context.Context, cli *client.Client, prefix string) error {
	is, err := cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("reference", prefix+"*"))})
	errs := []error{err}
	for _, im := range is {
		for _, tag := range im.RepoTags {
			if strings.HasPrefix(tag, prefix) {
				_, err := cli.ImageRemove(ctx, tag, image.RemoveOptions{Force: true})
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// TestFirstFleet follows docs/guide/first-fleet.md as written: it builds
// shoal and shoal-agent, copies the example fleet into a Git repo with real
// images built from source, starts a hub on SQLite, trusts it, enrols two
// shoal-agent processes on this machine's Docker Engine, waits for both to
// converge, pushes a change and waits for both to converge on it. Nothing
// here can reach a registry or a time server, as on a factory network.
//
// The commands run as the page shows them, with a few words replaced so that
// two runs on one machine (or a run beside someone's real walk-through) do
// not collide: the hub's port 8443, the agents' metrics ports 9742 and 9743,
// the container prefix trial- and the image names shoal-example/ (both made
// unique to the run).
func TestFirstFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("the walk-through builds images and runs a hub and two agents")
	}
	for _, c := range []struct{ cmd, pkg string }{{"bash", "bash"}, {"git", "git"}, {"docker", "docker.io"}, {"go", "golang"}} {
		testenv.LookPath(t, c.cmd, c.pkg)
	}
	cli := dockertest.Client(t)
	steps := parseSteps(t, walkthrough)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	stateDir := t.TempDir()
	var b [4]byte
	rand.Read(b[:])
	prefix := "trial-" + hex.EncodeToString(b[:]) + "-"
	images := "trial-" + hex.EncodeToString(b[:]) + "-example/"
	sh := &shell{t: t, dir: stateDir, env: walkEnv(t, home), subst: strings.NewReplacer(
		"8443", freePort(t), "9742", freePort(t), "9743", freePort(t), "trial-", prefix, "shoal-example/", images)}
	if err := os.WriteFile(filepath.Join(stateDir, "state.sh"), []byte("cd "+strconv.Quote(root)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	var cleanups []step
	for _, s := range steps {
		if s.kind == "cleanup" {
			cleanups = append(cleanups, s)
		}
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, s := range cleanups {
			if out, err := sh.run(cctx, s.code); err != nil {
				t.Errorf("%s:%d: clean-up step: %v\n%s", walkthrough, s.line, err, out)
			}
		}
		sh.close()
		for _, p := range []string{prefix + "gw-01-", prefix + "gw-02-"} {
			if err := removeByPrefix(cctx, cli, p); err != nil {
				t.Errorf("remove what the agents left under %s: %v", p, err)
			}
		}
		if err := removeImages(cctx, cli, images); err != nil {
			t.Errorf("remove the images %s*: %v", images, err)
		}
	})

	start := time.Now()
	for _, s := range steps {
		if s.kind == "cleanup" {
			continue
		}
		t0 := time.Now()
		out, err := sh.until(ctx, s)
		t.Logf("%s:%d (%s, %s):\n%s\n%s", walkthrough, s.line, s.kind, time.Since(t0).Round(100*time.Millisecond), indent(s.code), indent(out))
		if err != nil {
			logTails(t, home)
			t.Fatalf("%s:%d: %v", walkthrough, s.line, err)
		}
	}
	t.Logf("walk-through done in %s", time.Since(start).Round(time.Second))
}

// until runs a step: once, or again every 2 seconds until its output
// matches the step's regexp.
func (sh *shell) until(ctx context.Context, s step) (string, error) {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if s.kind != "until" {
		return sh.run(sctx, s.code)
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	var out string
	var err error
	for {
		o, e := sh.run(sctx, s.code)
		if sctx.Err() != nil {
			// Killed at the deadline: report the last complete run.
			return out, fmt.Errorf("output never matched %q (last error: %v)", s.until, err)
		}
		out, err = o, e
		vars := sh.vars()
		pat := os.Expand(s.until, func(k string) string { return regexp.QuoteMeta(vars[k]) })
		re, rerr := regexp.Compile(pat)
		if rerr != nil {
			return out, fmt.Errorf("until %q: %w", pat, rerr)
		}
		if err == nil && re.MatchString(out) {
			return out, nil
		}
		select {
		case <-sctx.Done():
			return out, fmt.Errorf("output never matched %q (last error: %v)", pat, err)
		case <-tick.C:
		}
	}
}

// logTails logs the end of every *.log file under dir: the hub's and the
// agents' logs, when a step failed.
func logTails(t *testing.T, dir string) {
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		t.Logf("%s (last %d lines):\n%s", path, min(len(lines), 40), indent(strings.Join(lines[max(0, len(lines)-40):], "\n")))
		return nil
	})
}

func indent(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(strings.TrimRight(s, "\n")))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		b.WriteString("    | " + sc.Text() + "\n")
	}
	return b.String()
}
