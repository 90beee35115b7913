package attest

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoalfleet/shoal/internal/ntptest"
	"github.com/shoalfleet/shoal/spec"
)

type ntpResponder = ntptest.Responder

// startNTP serves r on loopback until the test ends and returns host:port.
func startNTP(t *testing.T, r ntpResponder) string {
	t.Helper()
	s, err := ntptest.Start(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.Addr()
}

// closedUDPAddr is a loopback address nobody listens on.
func closedUDPAddr(t *testing.T) string {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

func within(t *testing.T, what string, got, want, tol time.Duration) {
	t.Helper()
	if d := got - want; d > tol || d < -tol {
		t.Errorf("%s = %v, want %v ± %v", what, got, want, tol)
	}
}

// TestClockNTP measures real NTP exchanges on loopback against responders
// whose clocks are offset by known amounts.
func TestClockNTP(t *testing.T) {
	const tol = 5 * time.Millisecond
	tests := []struct {
		name       string
		servers    []ntpResponder
		unreached  int // extra servers nobody answers on
		wantState  ClockState
		wantOffset time.Duration
		wantGood   int
	}{
		{"within max skew", []ntpResponder{{Offset: 250 * time.Millisecond, Stratum: 1}}, 0, ClockOK, 250 * time.Millisecond, 1},
		{"ahead beyond max skew", []ntpResponder{{Offset: 3 * time.Second, Stratum: 2}}, 0, ClockSkewed, 3 * time.Second, 1},
		{"behind beyond max skew", []ntpResponder{{Offset: -1500 * time.Millisecond, Stratum: 2}}, 0, ClockSkewed, -1500 * time.Millisecond, 1},
		{"median outvotes a falseticker", []ntpResponder{
			{Offset: 100 * time.Millisecond, Stratum: 1}, {Offset: 120 * time.Millisecond, Stratum: 1}, {Offset: 30 * time.Second, Stratum: 1},
		}, 0, ClockOK, 120 * time.Millisecond, 3},
		{"one server down, one answers", []ntpResponder{{Offset: -40 * time.Millisecond, Stratum: 1}}, 1, ClockOK, -40 * time.Millisecond, 1},
		{"kiss of death is no answer", []ntpResponder{{Offset: 0, Stratum: 0}}, 0, ClockUnknown, 0, 0},
		{"unsynchronised server is no answer", []ntpResponder{{Offset: 0, Stratum: 1, Leap: 3}}, 0, ClockUnknown, 0, 0},
		{"no server reachable", nil, 2, ClockUnknown, 0, 0},
		{"no servers configured", nil, 0, ClockUnknown, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var servers []string
			for _, r := range tc.servers {
				servers = append(servers, startNTP(t, r))
			}
			for range tc.unreached {
				servers = append(servers, closedUDPAddr(t))
			}
			c := NewClock(ClockOptions{Servers: servers, MaxSkew: time.Second, Timeout: 2 * time.Second})
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(c.Collectors()...)
			st := c.Check(context.Background())
			if st.State != tc.wantState || st.Good != tc.wantGood {
				t.Fatalf("state %s with %d answers, want %s with %d: %+v", st.State, st.Good, tc.wantState, tc.wantGood, st)
			}
			if tc.wantGood > 0 {
				t.Logf("measured offset %v for %v (error %v), rtt %v", st.Offset, tc.wantOffset, st.Offset-tc.wantOffset, st.RTT)
				within(t, "offset", st.Offset, tc.wantOffset, tol)
				if st.RTT <= 0 || st.RTT > 100*time.Millisecond {
					t.Errorf("rtt %v on loopback", st.RTT)
				}
			}
			if (st.Err() == nil) != (tc.wantState == ClockOK) {
				t.Errorf("Err() = %v for state %s", st.Err(), st.State)
			}
			if got := gaugeValue(t, reg, "shoal_clock_state", string(tc.wantState)); got != 1 {
				t.Errorf("shoal_clock_state{state=%q} = %v, want 1", tc.wantState, got)
			}
			if tc.wantGood > 0 {
				within(t, "offset metric", time.Duration(gaugeValue(t, reg, "shoal_clock_offset_seconds", "")*1e9), tc.wantOffset, tol)
			}
			if c.Status().State != st.State {
				t.Error("Status() is not the last check")
			}
		})
	}
}

// TestClockLowerBound: a device without an RTC boots in 1970. Its clock is
// "untrusted" below the fleet commit and release build times, and the time
// used for certificate checks never goes below them.
func TestClockLowerBound(t *testing.T) {
	start := time.Now()
	boot1970 := func() time.Time { return time.Unix(0, 0).Add(time.Since(start)) }
	commit := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	build := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)

	t.Run("1970 with NTP", func(t *testing.T) {
		srv := startNTP(t, ntpResponder{Stratum: 1})
		c := NewClock(ClockOptions{Servers: []string{srv}, MaxSkew: time.Second, Now: boot1970})
		c.SetLowerBound("release-build", build)
		c.SetLowerBound("fleet-commit", commit)
		st := c.Check(context.Background())
		if st.State != ClockUntrusted || st.LowerBoundSource != "fleet-commit" || !st.LowerBound.Equal(commit) {
			t.Fatalf("status %+v: want untrusted below the fleet commit", st)
		}
		// NTP still measured how far off the clock is; Now() corrects by it.
		// With an injected clock the client's timestamps are taken in user
		// space, not by the kernel, so a loaded machine blurs them more.
		within(t, "corrected time", time.Until(c.Now()), 0, 50*time.Millisecond)
	})
	t.Run("1970 without NTP", func(t *testing.T) {
		c := NewClock(ClockOptions{Servers: []string{closedUDPAddr(t)}, Now: boot1970, Timeout: time.Second})
		c.SetLowerBound("release-build", build)
		st := c.Check(context.Background())
		if st.State != ClockUntrusted {
			t.Fatalf("state %s, want untrusted", st.State)
		}
		if now := c.Now(); now.Before(build) {
			t.Fatalf("Now() = %v, below the release build time %v", now, build)
		}
		if err := st.Err(); err == nil {
			t.Fatal("untrusted clock has no error")
		}
	})
	t.Run("NTP answer before the bound is refused", func(t *testing.T) {
		srv := startNTP(t, ntpResponder{Stratum: 1, Offset: -time.Since(time.Unix(0, 0))})
		c := NewClock(ClockOptions{Servers: []string{srv}})
		c.SetLowerBound("fleet-commit", commit)
		st := c.Check(context.Background())
		if st.State != ClockUnknown || st.Good != 0 || st.Samples[0].Err == "" {
			t.Fatalf("status %+v: a server claiming 1970 must not count", st)
		}
	})
}

// TestClockCancel: Check returns when ctx ends, not when a silent server's timeout does.
func TestClockCancel(t *testing.T) {
	srv := startNTP(t, ntpResponder{Silent: true})
	c := NewClock(ClockOptions{Servers: []string{srv}, Timeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	st := c.Check(ctx)
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("Check took %v after ctx ended", took)
	}
	if st.State != ClockUnknown || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("status %+v", st)
	}
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name, state string) float64 {
	t.Helper()
	return metricValue(t, reg, name, "state", state)
}

// metricValue reads a gauge or counter with the given label value ("" for none).
func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := value == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s{%s=%q} not found", name, label, value)
	return 0
}

// TestClockTimePolicy: the servers and max skew come from the applied spec.
func TestClockTimePolicy(t *testing.T) {
	srv := startNTP(t, ntpResponder{Stratum: 1, Offset: 3 * time.Second})
	c := NewClock(ClockOptions{})
	if st := c.Check(context.Background()); st.State != ClockUnknown {
		t.Fatalf("no servers yet: %s", st.State)
	}
	c.SetTimePolicy(spec.TimePolicy{Servers: []string{srv}, MaxSkew: spec.Duration(time.Second)})
	if st := c.Check(context.Background()); st.State != ClockSkewed {
		t.Fatalf("3 s off with max 1 s: %s", st.State)
	}
	c.SetTimePolicy(spec.TimePolicy{Servers: []string{srv}, MaxSkew: spec.Duration(5 * time.Second)})
	if st := c.Check(context.Background()); st.State != ClockOK || st.MaxSkew != 5*time.Second {
		t.Fatalf("3 s off with max 5 s: %+v", st)
	}
}

// TestClockLogsChanges: a clock state is logged when it changes, not on
// every check, so a device whose time servers are unreachable (a factory
// network) warns once, not on every pass.
func TestClockLogsChanges(t *testing.T) {
	good := startNTP(t, ntpResponder{Offset: 10 * time.Millisecond, Stratum: 1})
	dead := closedUDPAddr(t)
	var buf bytes.Buffer
	c := NewClock(ClockOptions{Servers: []string{dead}, MaxSkew: time.Second, Timeout: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	steps := []struct {
		servers []string
		checks  int
		state   ClockState
		logs    []string // lines logged by these checks, in order
	}{
		{[]string{dead}, 3, ClockUnknown, []string{`level=WARN msg="clock unknown: no time server answered`}},
		{[]string{good}, 2, ClockOK, []string{`level=INFO msg="clock within bounds"`}},
		{[]string{dead}, 2, ClockUnknown, []string{`level=WARN msg="clock unknown: no time server answered`}},
		{nil, 2, ClockUnknown, nil}, // still unknown: nothing new to say
	}
	for i, s := range steps {
		buf.Reset()
		c.SetPolicy(s.servers, time.Second)
		for range s.checks {
			if st := c.Check(t.Context()); st.State != s.state {
				t.Fatalf("step %d: state %s, want %s", i, st.State, s.state)
			}
		}
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if buf.Len() == 0 {
			lines = nil
		}
		if len(lines) != len(s.logs) {
			t.Fatalf("step %d: %d checks logged %d lines, want %d:\n%s", i, s.checks, len(lines), len(s.logs), buf.String())
		}
		for j, want := range s.logs {
			if !strings.Contains(lines[j], want) {
				t.Errorf("step %d: line %q, want %q", i, lines[j], want)
			}
		}
	}
}
