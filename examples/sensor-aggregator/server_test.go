package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// startServe runs serve on loopback with o until the test ends or stop is
// called; it returns the HTTP and UDP addresses and stop, which returns
// serve's error.
func startServe(t *testing.T, o options) (string, string, func() error) {
	t.Helper()
	o.listen, o.udp = "127.0.0.1:0", "127.0.0.1:0"
	if o.drain == 0 {
		o.drain = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, &o, slog.New(slog.DiscardHandler), func(h, u string) { addrs <- [2]string{h, u} })
	}()
	var a [2]string
	select {
	case a = <-addrs:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { stop() })
	return a[0], a[1], stop
}

func defaultOptions(t *testing.T) options {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return *o
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// TestServe: readings over HTTP and UDP reach the windows served on
// /aggregates; bad input gets a 4xx and is counted; a shutdown drains and
// saves the windows, and the next start has them back.
func TestServe(t *testing.T) {
	o := defaultOptions(t)
	o.state = filepath.Join(t.TempDir(), "state.json")
	o.cfg.Window = time.Hour // nothing closes during the test
	web, udp, stop := startServe(t, o)
	base := "http://" + web

	post := func(body string) (int, string) {
		resp, err := http.Post(base+"/readings", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	cases := []struct {
		name, body string
		status     int
		says       string
	}{
		{"batch", `[{"sensor":"hall1/t","value":20},{"sensor":"hall1/t","value":24},{"sensor":"hall1/p","value":1013}]`, http.StatusAccepted, `"accepted": 3`},
		{"one bad of two", `[{"sensor":"hall1/t","value":22},{"sensor":"bad name","value":1}]`, http.StatusAccepted, `reading 1: sensor \"bad name\"`},
		{"all bad", `{"sensor":"hall1/t"}  {"x":1}`, http.StatusBadRequest, "reading 0"},
		{"not json", `[`, http.StatusBadRequest, "body:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(tc.body)
			if status != tc.status || !strings.Contains(body, tc.says) {
				t.Errorf("POST %s: %d %s, want %d with %q", tc.body, status, body, tc.status, tc.says)
			}
		})
	}
	c, err := net.Dial("udp", udp)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hall2/t 30\nhall2/t 31\nnot-a-line\n"))
	c.Close()

	var agg struct {
		Window  string                     `json:"window"`
		Sensors map[string]SensorAggregate `json:"sensors"`
	}
	waitUntil(t, func() bool {
		getJSON(t, base+"/aggregates", &agg)
		w := agg.Sensors["hall2/t"].Current
		return w != nil && w.Count == 2
	})
	// 1013 hPa is beyond the default range: dropped.
	if _, ok := agg.Sensors["hall1/p"]; ok {
		t.Errorf("out-of-range sensor kept: %+v", agg.Sensors["hall1/p"])
	}
	if w := agg.Sensors["hall1/t"].Current; w == nil || w.Count != 3 || w.Mean != 22 || w.Min != 20 || w.Max != 24 {
		t.Errorf("hall1/t window %+v, want 3 readings averaging 22", w)
	}
	var one SensorAggregate
	if code := getJSON(t, base+"/aggregates/hall2%2Ft", &one); code != http.StatusOK || one.Current == nil || one.Current.Mean != 30.5 {
		t.Errorf("GET /aggregates/hall2%%2Ft: %d %+v", code, one.Current)
	}
	if code := getJSON(t, base+"/aggregates/nobody", nil); code != http.StatusNotFound {
		t.Errorf("unknown sensor: %d, want 404", code)
	}
	if code := getJSON(t, base+"/healthz", nil); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	metrics := scrape(t, base+"/metrics")
	for _, want := range []string{
		`sensor_aggregator_errors_total{reason="out-of-range"} 1`,
		`sensor_aggregator_errors_total{reason="malformed"} 4`,
		`sensor_aggregator_readings_received_total 6`,
		`sensor_aggregator_processing_seconds_count 5`,
		`sensor_aggregator_sensors 2`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	testenv.CheckMetrics(t, "the aggregator's /metrics", []byte(metrics))

	// SIGTERM: serve returns nil and the windows are on disk.
	if err := stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	saved, err := loadState(o.state)
	if err != nil || len(saved) != 2 {
		t.Fatalf("saved windows: %v, %v", saved, err)
	}
	web2, _, _ := startServe(t, o)
	var again SensorAggregate
	if getJSON(t, "http://"+web2+"/aggregates/hall1%2Ft", &again); again.Current == nil || again.Current.Count != 3 || again.Current.Mean != 22 {
		t.Errorf("after a restart: %+v, want the saved window", again.Current)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
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

// TestHealthFlag: --health is the image's healthcheck; it exits 0 against
// a running aggregator and 1 against nothing.
func TestHealthFlag(t *testing.T) {
	web, _, _ := startServe(t, defaultOptions(t))
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"--health", "--listen", web}, &stderr); code != 0 {
		t.Errorf("--health against a running aggregator: exit %d: %s", code, stderr.String())
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	if code := run(t.Context(), []string{"--health", "--listen", dead, "--health-timeout", "1s"}, &stderr); code != 1 {
		t.Errorf("--health against nothing: exit %d, want 1", code)
	}
	if code := run(t.Context(), []string{"--window", "0s", "--listen", "127.0.0.1:0", "--udp", ""}, &stderr); code != 1 || !strings.Contains(stderr.String(), "window must be positive") {
		t.Errorf("--window 0s: exit %d (%s), want 1 naming the window", code, stderr.String())
	}
}

// TestFlagsFromEnv: the bounds and the window come from the environment
// (what a fleet sets per device), flags win, bad values are refused.
func TestFlagsFromEnv(t *testing.T) {
	cases := []struct {
		name     string
		env      map[string]string
		args     []string
		min, max float64
		window   time.Duration
		err      string
	}{
		{"defaults", nil, nil, -40, 125, 10 * time.Second, ""},
		{"from env", map[string]string{"SENSOR_MIN": "0", "SENSOR_MAX": "300", "WINDOW": "1m"}, nil, 0, 300, time.Minute, ""},
		{"flag over env", map[string]string{"SENSOR_MAX": "300"}, []string{"--max", "200"}, -40, 200, 10 * time.Second, ""},
		{"bad env number", map[string]string{"SENSOR_MAX": "hot"}, nil, 0, 0, 0, `$SENSOR_MAX="hot": not a number`},
		{"bad env window", map[string]string{"WINDOW": "10"}, nil, 0, 0, 0, `$WINDOW="10"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"SENSOR_MIN", "SENSOR_MAX", "WINDOW"} {
				t.Setenv(k, tc.env[k])
			}
			o, err := parseFlags(tc.args, io.Discard)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || o.cfg.Min != tc.min || o.cfg.Max != tc.max || o.cfg.Window != tc.window {
				t.Fatalf("min %v max %v window %v (%v), want %v %v %v", o.cfg.Min, o.cfg.Max, o.cfg.Window, err, tc.min, tc.max, tc.window)
			}
		})
	}
}
