package main

import (
	"archive/tar"
	"bytes"
	"encoding/pem"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestHubImage builds the hub's container image with deploy/hub-image.sh
// through the real Docker Engine (no registry: a static binary on an empty
// base), checks what it holds, and runs it on SQLite with its state on a
// named volume, following an https:// fleet repo served by git's
// http-backend behind TLS (a private CA) on loopback: /healthz answers, the
// operator trusts the hub through `shoal hub ca` run in the container, a
// token is refused for a device the fleet does not list until a commit adds
// it and a poke makes the hub read the repo again, and the hub's CA
// survives a new container on the same volume.
func TestHubImage(t *testing.T) {
	docker := testenv.LookPath(t, "docker", "docker.io")
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(root, "bin", "hub-image")
	if _, err := os.Stat(stage); errors.Is(err, fs.ErrNotExist) {
		t.Cleanup(func() { os.RemoveAll(stage) })
	}
	dockerDo := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(docker, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
		}
		return strings.TrimSpace(string(out))
	}

	tag := "shoal-hub-test:" + label
	build := exec.Command(filepath.Join(root, "deploy", "hub-image.sh"), "-q", "-t", tag, "--label", dockertest.LabelKey+"="+label)
	build.Dir = root
	build.Env = append(os.Environ(), "VERSION=test")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("deploy/hub-image.sh: %v\n%s", err, out)
	}
	size, _ := strconv.ParseInt(dockerDo("image", "inspect", "-f", "{{.Size}}", tag), 10, 64)
	bin, err := os.Stat(filepath.Join(stage, "root", "shoal"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s: %.1f MiB; the static binary %.1f MiB (%.3f×)", tag, float64(size)/(1<<20), float64(bin.Size())/(1<<20), float64(size)/float64(bin.Size()))
	checkHubImageFiles(t, docker, tag)

	// The fleet repo, over https:// under a private CA, on loopback.
	repo := testenv.NewRepo(t)
	repo.Commit(map[string]string{"fleet.yaml": "spec: {}\n", "devices/dev-f.yaml": "labels:\n  role: gateway\n"}, "fleet")
	srv := httptest.NewTLSServer(testenv.GitHTTPBackend(t, filepath.Dir(repo.Dir)))
	t.Cleanup(srv.Close)
	fleetCA := filepath.Join(t.TempDir(), "fleet-ca.pem")
	if err := os.WriteFile(fleetCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}

	volume := "shoal-hub-state-" + label
	dockerDo("volume", "create", "--label", dockertest.LabelKey+"="+label, volume)
	addr := freeAddr(t)
	hubURL := "https://" + addr
	run := func(name string) {
		t.Helper()
		// The host's network, so the hub reaches the fleet server on
		// loopback and the test reaches the hub there.
		dockerDo("run", "-d", "--name", name, "--label", dockertest.LabelKey+"="+label, "--network", "host",
			"-v", volume+":/var/lib/shoal-hub", "-v", fleetCA+":/etc/shoal/fleet-ca.pem:ro", tag,
			"--listen", addr, "--db", "sqlite:///var/lib/shoal-hub/hub.db", "--host", "127.0.0.1",
			"--fleet", srv.URL+"/fleet", "--fleet-ca", "/etc/shoal/fleet-ca.pem", "--fleet-refresh", "1h")
	}
	name := "shoal-hub-" + label
	run(name)
	logs := func(name string) string {
		out, _ := exec.Command(docker, "logs", name).CombinedOutput()
		return string(out)
	}
	// The operator's first steps, in the container: the CA's fingerprint
	// (offline from the database), then an operator token.
	var fp string
	eventually(t, "the hub's CA fingerprint from `shoal hub ca` in the container", func() bool {
		out, err := exec.Command(docker, "exec", name, "/shoal", "hub", "ca", "--fingerprint").Output()
		fp = strings.TrimSpace(string(out))
		if st := logs(name); strings.Contains(st, `"level":"ERROR"`) || strings.Contains(st, "shoal:") {
			t.Fatalf("hub failed:\n%s", st)
		}
		return err == nil && len(fp) == 64
	})
	tc, err := client.PinnedTLS("127.0.0.1", fp, nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	t.Cleanup(hc.CloseIdleConnections)
	healthy := func() bool {
		resp, err := hc.Get(hubURL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	eventually(t, "/healthz of the hub in its container", healthy)
	op := dockerDo("exec", name, "/shoal", "hub", "token", "create", "--db", "sqlite:///var/lib/shoal-hub/hub.db")
	env := []string{"SHOAL_HUB=" + hubURL, "SHOAL_OPERATOR_TOKEN=" + op, "SHOAL_HUB_CA=", "SHOAL_HUB_CA_FINGERPRINT=" + fp}

	if code, out, errs := (inProcess{}).run(t, env, "token", "create", "--device", "dev-f"); code != 0 || !strings.Contains(out, "ca-fingerprint: "+fp) {
		t.Fatalf("token for dev-f: %d %s %s", code, out, errs)
	}
	if code, _, errs := (inProcess{}).run(t, env, "token", "create", "--device", "dev-new"); code != exitInvalid || !strings.Contains(errs, "device-not-in-fleet") {
		t.Fatalf("token for dev-new before the fleet lists it: %d %s", code, errs)
	}
	head := repo.Commit(map[string]string{"devices/dev-new.yaml": "labels:\n  role: sensor\n"}, "add dev-new")
	if code, _, errs := (inProcess{}).run(t, env, "poke", "--commit", head); code != 0 {
		t.Fatalf("poke: %d %s", code, errs)
	}
	eventually(t, "a token for dev-new once the hub has the new commit", func() bool {
		code, _, _ := (inProcess{}).run(t, env, "token", "create", "--device", "dev-new")
		return code == 0
	})
	if l := logs(name); !strings.Contains(l, head) || !strings.Contains(l, "fleet commit signatures not checked") {
		t.Errorf("hub log lacks the new fleet revision %s or the unchecked-signature warning:\n%s", head, l)
	}

	// A new container on the same volume: the same database, the same CA.
	dockerDo("rm", "-f", name)
	name2 := name + "-again"
	run(name2)
	eventually(t, "/healthz of the second container", healthy)
	if again := dockerDo("exec", name2, "/shoal", "hub", "ca", "--fingerprint"); again != fp {
		t.Errorf("CA after a new container: %s, want %s kept on the volume", again, fp)
	}
	dockerDo("rm", "-f", name2)
}

// checkHubImageFiles lists the image's layers (docker save) and checks that
// it is the static binary, CA certificates, a sticky world-writable /tmp and
// the state directory owned by the unprivileged user, and nothing else of
// size.
func checkHubImageFiles(t *testing.T, docker, tag string) {
	t.Helper()
	files := map[string]*tar.Header{}
	for _, h := range imageLayerFiles(t, docker, tag) {
		files[strings.TrimSuffix(h.Name, "/")] = h
	}
	for name, check := range map[string]func(h *tar.Header) bool{
		"shoal":                             func(h *tar.Header) bool { return h.Mode&0o111 != 0 && h.Size > 1<<20 },
		"etc/ssl/certs/ca-certificates.crt": func(h *tar.Header) bool { return h.Size > 1<<10 },
		"tmp":                               func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Mode&0o1777 == 0o1777 },
		"var/lib/shoal-hub":                 func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Uid == 65532 },
	} {
		if h := files[name]; h == nil || !check(h) {
			t.Errorf("image file %s: %+v", name, h)
		}
	}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	if got := strings.Join(names, " "); regexp.MustCompile(`\.go\b|\.git\b`).MatchString(got) {
		t.Errorf("the image holds sources: %s", got)
	}
}
