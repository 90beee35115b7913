package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/imagetar"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestExampleImages builds both example images from source through the
// real Docker Engine, saves them into a copy of fleet-repo-example as
// -fleet does, and runs each: under 10 MB, FROM scratch, healthy by its own
// healthcheck; the aggregator takes readings over HTTP and UDP, serves the
// averages, stops on SIGTERM with exit code 0 and finds its windows again in
// its named volume; the exporter serves lint-clean host metrics read through
// a read-only bind mount of /.
func TestExampleImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two images")
	}
	testenv.LookPath(t, "go", "golang-go")
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	fleet := t.TempDir()
	if err := os.CopyFS(fleet, os.DirFS("../../fleet-repo-example")); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	prefix := "shoal-imagebuild-test-" + label[len(label)-12:] + "/"
	if code := run(t.Context(), []string{"-root", "../..", "-fleet", fleet, "-ref-prefix", prefix, "-label", dockertest.LabelKey + "=" + label}, &stdout, &stderr); code != 0 {
		t.Fatalf("imagebuild: exit %d\n%s", code, stderr.String())
	}
	t.Logf("imagebuild:\n%s%s", stderr.String(), stdout.String())

	for _, a := range apps {
		ref := prefix + a.name + ":1.0.0"
		// The image: small, one layer, nothing but the program (and its state dir).
		ins, err := cli.ImageInspect(t.Context(), ref)
		if err != nil {
			t.Fatal(err)
		}
		if ins.Size >= 10_000_000 || len(ins.RootFS.Layers) > 2 {
			t.Errorf("%s: %d bytes in %d layers, want under 10 MB, FROM scratch", ref, ins.Size, len(ins.RootFS.Layers))
		}
		t.Logf("%s: %d bytes", ref, ins.Size)
		// The tar in the fleet copy holds the ref, and the app file pins its sha256.
		tarPath := filepath.Join(fleet, "images", a.name+".tar")
		b, err := os.ReadFile(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		refs, err := imagetar.Refs(bytes.NewReader(b))
		if err != nil || !imagetar.Holds(refs, ref) {
			t.Errorf("%s holds %v (%v), want %s", tarPath, refs, err, ref)
		}
		sum := sha256.Sum256(b)
		app, err := os.ReadFile(filepath.Join(fleet, "apps", a.name+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"  ref: " + ref + "\n", "    path: images/" + a.name + ".tar\n", "    sha256: " + hex.EncodeToString(sum[:]) + "\n"} {
			if !bytes.Contains(app, []byte(want)) {
				t.Errorf("apps/%s.yaml lacks %q:\n%s", a.name, want, app)
			}
		}
		if !strings.Contains(stdout.String(), ref+"\t"+tarPath+"\tsha256:"+hex.EncodeToString(sum[:])) {
			t.Errorf("imagebuild did not print %s's line", ref)
		}
	}

	t.Run("sensor-aggregator", func(t *testing.T) {
		ref := prefix + "sensor-aggregator:1.0.0"
		vol := "shoal-imagebuild-test-" + label[len(label)-12:] + "-buffer"
		start := func(name string) (string, string, string) {
			return runContainer(t, cli, label, name, &container.Config{Image: ref, Labels: dockertest.Labels(label),
				ExposedPorts: nat.PortSet{"8080/tcp": {}, "9999/udp": {}}},
				&container.HostConfig{
					PortBindings:   nat.PortMap{"8080/tcp": {{HostIP: "127.0.0.1"}}, "9999/udp": {{HostIP: "127.0.0.1"}}},
					Mounts:         []mount.Mount{{Type: mount.TypeVolume, Source: vol, Target: "/var/lib/aggregator", VolumeOptions: &mount.VolumeOptions{Labels: dockertest.Labels(label)}}},
					ReadonlyRootfs: true, CapDrop: []string{"ALL"},
				})
		}
		id, web, udp := start("shoal-imagebuild-test-" + label[len(label)-12:] + "-agg")
		base := "http://" + web
		resp, err := http.Post(base+"/readings", "application/json", strings.NewReader(`[{"sensor":"hall1/temp","value":20},{"sensor":"hall1/temp","value":23},{"sensor":"hall1/temp","value":999}]`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /readings: %s", resp.Status)
		}
		c, err := net.Dial("udp", udp)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hall2/temp 30\n"))
		c.Close()
		var agg struct {
			Sensors map[string]struct {
				Current, Last *struct {
					Count int
					Mean  float64
				}
			} `json:"sensors"`
		}
		waitFor(t, "both sensors aggregated", func() bool {
			if getJSON(base+"/aggregates", &agg) != nil {
				return false
			}
			return len(agg.Sensors) == 2
		})
		if w := agg.Sensors["hall1/temp"].Current; w == nil || w.Count != 2 || w.Mean != 21.5 {
			t.Errorf("hall1/temp: %+v, want 2 readings averaging 21.5 (999 dropped)", w)
		}
		metrics := scrapeText(t, base+"/metrics")
		testenv.CheckMetrics(t, "the aggregator's /metrics", []byte(metrics))
		if !strings.Contains(metrics, `sensor_aggregator_errors_total{reason="out-of-range"} 1`) {
			t.Error("the out-of-range reading is not counted")
		}
		// SIGTERM: a clean exit, the windows saved in the volume.
		timeout := 20
		stopAt := time.Now()
		if err := cli.ContainerStop(t.Context(), id, container.StopOptions{Timeout: &timeout}); err != nil {
			t.Fatal(err)
		}
		ci, err := cli.ContainerInspect(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ci.State.ExitCode != 0 || time.Since(stopAt) > 15*time.Second {
			t.Errorf("stop: exit code %d after %v, want 0 at once", ci.State.ExitCode, time.Since(stopAt))
		}
		if logs := containerLogs(t, cli, id); !strings.Contains(logs, "windows saved") {
			t.Errorf("no \"windows saved\" in the logs:\n%s", logs)
		}
		// A new container on the same volume has them back.
		_, web2, _ := start("shoal-imagebuild-test-" + label[len(label)-12:] + "-agg2")
		var one struct{ Current, Last *struct{ Count int } }
		if err := getJSON("http://"+web2+"/aggregates/hall1%2Ftemp", &one); err != nil {
			t.Fatal(err)
		}
		if w := one.Current; (w == nil || w.Count != 2) && (one.Last == nil || one.Last.Count != 2) {
			t.Errorf("after a restart: %+v, want the saved window of 2 readings", one)
		}
	})

	t.Run("metrics-exporter", func(t *testing.T) {
		ref := prefix + "metrics-exporter:1.0.0"
		_, web, _ := runContainer(t, cli, label, "shoal-imagebuild-test-"+label[len(label)-12:]+"-exp",
			&container.Config{Image: ref, Labels: dockertest.Labels(label), ExposedPorts: nat.PortSet{"9100/tcp": {}}},
			&container.HostConfig{
				PortBindings:   nat.PortMap{"9100/tcp": {{HostIP: "127.0.0.1"}}},
				Mounts:         []mount.Mount{{Type: mount.TypeBind, Source: "/", Target: "/host", ReadOnly: true}},
				ReadonlyRootfs: true, CapDrop: []string{"ALL"},
			})
		metrics := scrapeText(t, "http://"+web+"/metrics")
		testenv.CheckMetrics(t, "the exporter's /metrics", []byte(metrics))
		for _, want := range []string{"host_cpu_seconds_total{", "host_memory_available_bytes ", `host_filesystem_size_bytes{mountpoint="/"} `,
			`host_network_receive_bytes_total{device="lo"} `, `metrics_exporter_scrape_errors_total{collector="netdev"} 0`} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	})
}

// runContainer creates and starts a container, waits until Docker reports
// it healthy by the image's own healthcheck (polled every second here), and
// returns its ID and the host addresses of its first TCP and UDP ports.
func runContainer(t *testing.T, cli *client.Client, label, name string, cfg *container.Config, host *container.HostConfig) (string, string, string) {
	t.Helper()
	// The image's test, run more often than its 15 s interval.
	cfg.Healthcheck = &container.HealthConfig{Interval: time.Second}
	c, err := cli.ContainerCreate(t.Context(), cfg, host, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.ContainerStart(t.Context(), c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	var ins container.InspectResponse
	waitFor(t, name+" healthy", func() bool {
		ins, err = cli.ContainerInspect(t.Context(), c.ID)
		if err != nil || ins.State.Health == nil {
			return false
		}
		if ins.State.Health.Status == "unhealthy" || !ins.State.Running {
			t.Fatalf("%s: %s, running %v\n%s", name, ins.State.Health.Status, ins.State.Running, containerLogs(t, cli, c.ID))
		}
		return ins.State.Health.Status == "healthy"
	})
	if ins.Config.Healthcheck == nil && len(ins.State.Health.Log) == 0 {
		t.Errorf("%s: no healthcheck ran", name)
	}
	var tcp, udp string
	for p, bs := range ins.NetworkSettings.Ports {
		if len(bs) == 0 {
			continue
		}
		addr := net.JoinHostPort(bs[0].HostIP, bs[0].HostPort)
		if p.Proto() == "udp" {
			udp = addr
		} else {
			tcp = addr
		}
	}
	return c.ID, tcp, udp
}

func containerLogs(t *testing.T, cli *client.Client, id string) string {
	rc, err := cli.ContainerLogs(context.Background(), id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return err.Error()
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

func getJSON(url string, v any) error {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func scrapeText(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitFor polls cond every 200 ms for up to two minutes (a loaded machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(200 * time.Millisecond)
	}
}
