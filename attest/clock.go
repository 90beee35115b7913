package attest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/beevik/ntp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoalfleet/shoal/spec"
)

// ClockState is the verdict on the device clock.
type ClockState string

// Clock states. Only ClockOK lets the health gate pass on time.
const (
	// ClockOK: NTP answered and the clock is within the policy's max skew.
	ClockOK ClockState = "ok"
	// ClockSkewed: NTP answered and the clock is off by more than the max skew.
	ClockSkewed ClockState = "skewed"
	// ClockUnknown: no configured server gave a usable answer.
	ClockUnknown ClockState = "unknown"
	// ClockUntrusted: the clock is before a lower bound we know to be in the
	// past (the last verified fleet commit, the running release's build):
	// typically a device with no RTC that booted in 1970.
	ClockUntrusted ClockState = "untrusted"
)

var clockStates = []ClockState{ClockOK, ClockSkewed, ClockUnknown, ClockUntrusted}

// ServerSample is one NTP server's answer, or why it gave none.
type ServerSample struct {
	Server string        `json:"server"`
	Offset time.Duration `json:"offset"`
	RTT    time.Duration `json:"rtt"`
	Err    string        `json:"err,omitempty"`
}

// ClockStatus is the result of a clock check, for the status report and the gate.
type ClockStatus struct {
	State ClockState `json:"state"`
	// Offset is the median offset of the good answers: true time minus local time.
	Offset  time.Duration  `json:"offset"`
	RTT     time.Duration  `json:"rtt"`
	MaxSkew time.Duration  `json:"maxSkew"`
	Samples []ServerSample `json:"samples,omitempty"`
	Good    int            `json:"good"` // answers that counted
	// LowerBound is the latest known-past time and where it comes from.
	LowerBound       time.Time `json:"lowerBound,omitzero"`
	LowerBoundSource string    `json:"lowerBoundSource,omitempty"`
	Checked          time.Time `json:"checked"` // local clock at the check
}

// Err explains a state other than ClockOK, for the health gate; nil when ok.
func (s ClockStatus) Err() error {
	switch s.State {
	case ClockOK:
		return nil
	case ClockSkewed:
		return fmt.Errorf("clock off by %v (max %v, %d NTP answers)", s.Offset, s.MaxSkew, s.Good)
	case ClockUntrusted:
		return fmt.Errorf("clock %s is before %s (%s)", s.Checked.UTC().Format(time.RFC3339), s.LowerBound.UTC().Format(time.RFC3339), s.LowerBoundSource)
	default:
		return fmt.Errorf("clock unknown: no NTP server of %d answered", len(s.Samples))
	}
}

// ClockOptions configures a Clock; the spec's TimePolicy supplies Servers and MaxSkew.
type ClockOptions struct {
	Servers []string      // host or host:port
	MaxSkew time.Duration // default 1s
	Timeout time.Duration // per query; default 3s
	// Samples is how many exchanges to make with each server; the one with
	// the shortest round trip counts, as in NTP's clock filter: a delay that
	// lengthens one direction lengthens the round trip too. Default 3.
	Samples int
	Now     func() time.Time
	Logger  *slog.Logger
}

// Clock checks the device clock against NTP servers and known lower bounds.
type Clock struct {
	log      *slog.Logger
	injected bool // o.Now is not the system clock: NTP offsets are taken against it

	mu     sync.Mutex
	o      ClockOptions
	bounds map[string]time.Time
	last   ClockStatus
	logged ClockState // the state last logged: a state is logged when it changes

	offset, rtt, bound, good prometheus.Gauge
	state                    *prometheus.GaugeVec
}

// NewClock returns a Clock; call Check to measure.
func NewClock(o ClockOptions) *Clock {
	if o.MaxSkew <= 0 {
		o.MaxSkew = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	if o.Samples <= 0 {
		o.Samples = 3
	}
	injected := o.Now != nil
	if !injected {
		o.Now = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	c := &Clock{
		log:      log,
		o:        o,
		injected: injected,
		bounds:   map[string]time.Time{},
		last:     ClockStatus{State: ClockUnknown, MaxSkew: o.MaxSkew},
		offset:   g("shoal_clock_offset_seconds", "Median NTP offset (true minus local time) at the last check."),
		rtt:      g("shoal_clock_rtt_seconds", "Round-trip time of the median NTP answer."),
		bound:    g("shoal_clock_lower_bound_timestamp_seconds", "Latest known-past time the clock must not be below."),
		good:     g("shoal_clock_ntp_answers", "NTP servers that gave a usable answer at the last check."),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shoal_clock_state", Help: "1 for the current clock state (ok, skewed, unknown, untrusted).",
		}, []string{"state"}),
	}
	c.setStateMetric(ClockUnknown)
	return c
}

// Collectors returns the clock's metrics for the agent's registry.
func (c *Clock) Collectors() []prometheus.Collector {
	return []prometheus.Collector{c.offset, c.rtt, c.bound, c.good, c.state}
}

// SetPolicy updates the servers and max skew from a newly applied spec.
func (c *Clock) SetPolicy(servers []string, maxSkew time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.o.Servers = slices.Clone(servers)
	if maxSkew > 0 {
		c.o.MaxSkew = maxSkew
	}
}

// SetTimePolicy applies the rendered device's time policy (servers, max skew).
func (c *Clock) SetTimePolicy(p spec.TimePolicy) { c.SetPolicy(p.Servers, p.MaxSkew.D()) }

// SetLowerBound records t as a time known to be past, named by source
// ("fleet-commit": the committer time of the last verified fleet commit;
// "release-build": the running release's build time). A later call for the
// same source replaces it.
func (c *Clock) SetLowerBound(source string, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bounds[source] = t
}

// lowerBound returns the latest bound; c.mu is held.
func (c *Clock) lowerBound() (time.Time, string) {
	var t time.Time
	var src string
	for s, b := range c.bounds {
		if b.After(t) || (b.Equal(t) && s < src) {
			t, src = b, s
		}
	}
	return t, src
}

// Status returns the result of the last Check.
func (c *Clock) Status() ClockStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Now is the time to check certificates against: the local clock corrected
// by the last NTP offset, and never before the lower bound, so a device that
// booted in 1970 does not reject every certificate as "not yet valid". Use it
// as tls.Config.Time and x509.VerifyOptions.CurrentTime.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.o.Now()
	if c.last.Good > 0 {
		t = t.Add(c.last.Offset)
	}
	if b, _ := c.lowerBound(); t.Before(b) {
		t = b
	}
	return t
}

// Check queries every configured server at once, takes the median offset of
// the usable answers and decides the state; it returns when all servers
// answered or timed out, or ctx ends.
func (c *Clock) Check(ctx context.Context) ClockStatus {
	c.mu.Lock()
	o := c.o
	bound, boundSrc := c.lowerBound()
	c.mu.Unlock()

	samples := make([]ServerSample, len(o.Servers))
	var wg sync.WaitGroup
	for i, srv := range o.Servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			samples[i] = sample(ctx, srv, o, c.injected)
		}()
	}
	wg.Wait()

	now := o.Now()
	st := ClockStatus{MaxSkew: o.MaxSkew, Samples: samples, LowerBound: bound, LowerBoundSource: boundSrc, Checked: now}
	var offsets, rtts []time.Duration
	for i := range samples {
		s := &samples[i]
		if s.Err == "" && !bound.IsZero() && now.Add(s.Offset).Before(bound) {
			// A server that puts true time before a known-past time is wrong.
			s.Err = fmt.Sprintf("answer %s is before the lower bound", now.Add(s.Offset).UTC().Format(time.RFC3339))
		}
		if s.Err != "" {
			continue
		}
		offsets = append(offsets, s.Offset)
		rtts = append(rtts, s.RTT)
	}
	st.Good = len(offsets)
	if st.Good > 0 {
		st.Offset, st.RTT = median(offsets), median(rtts)
	}
	switch {
	case !bound.IsZero() && now.Before(bound):
		st.State = ClockUntrusted
	case st.Good == 0:
		st.State = ClockUnknown
	case st.Offset > o.MaxSkew || st.Offset < -o.MaxSkew:
		st.State = ClockSkewed
	default:
		st.State = ClockOK
	}

	c.mu.Lock()
	c.last = st
	changed := st.State != c.logged
	c.logged = st.State
	c.mu.Unlock()
	c.offset.Set(st.Offset.Seconds())
	c.rtt.Set(st.RTT.Seconds())
	c.good.Set(float64(st.Good))
	if !bound.IsZero() {
		c.bound.Set(float64(bound.Unix()))
	}
	c.setStateMetric(st.State)
	if changed {
		c.logState(st)
	}
	return st
}

// logState logs a new clock state once; Check calls it only on a change,
// so a device with no reachable time server does not warn on every pass.
func (c *Clock) logState(st ClockStatus) {
	attrs := []any{"state", st.State, "offset", st.Offset, "answers", st.Good, "servers", len(st.Samples)}
	switch {
	case st.State == ClockOK:
		c.log.Info("clock within bounds", attrs...)
	case st.State == ClockUnknown && len(st.Samples) == 0:
		c.log.Info("clock unknown: no time servers configured; nothing that needs a trusted time will pass", attrs...)
	case st.State == ClockUnknown:
		errs := make([]string, 0, len(st.Samples))
		for _, s := range st.Samples {
			errs = append(errs, s.Server+": "+s.Err)
		}
		c.log.Warn("clock unknown: no time server answered; containers still converge, only what needs a trusted time waits",
			append(attrs, "errors", strings.Join(errs, "; "))...)
	default:
		c.log.Warn("clock "+string(st.State), append(attrs, "err", st.Err())...)
	}
}

func (c *Clock) setStateMetric(s ClockState) {
	for _, x := range clockStates {
		v := 0.0
		if x == s {
			v = 1
		}
		c.state.WithLabelValues(string(x)).Set(v)
	}
}

// sample makes o.Samples exchanges with server and keeps the one with the
// shortest round trip; it stops at the first failure.
func sample(ctx context.Context, server string, o ClockOptions, injected bool) ServerSample {
	var best ServerSample
	for i := range o.Samples {
		s := query(ctx, server, o, injected)
		if s.Err != "" {
			if i == 0 {
				return s
			}
			break
		}
		if i == 0 || s.RTT < best.RTT {
			best = s
		}
	}
	return best
}

// query asks one server once; a cancelled ctx closes the socket so the query ends at once.
func query(ctx context.Context, server string, o ClockOptions, injected bool) ServerSample {
	s := ServerSample{Server: server}
	var stop func() bool
	opts := ntp.QueryOptions{
		Timeout: o.Timeout,
		// Returning the *net.UDPConn itself keeps the kernel receive timestamps.
		Dialer: func(local, remote string) (net.Conn, error) {
			var d net.Dialer
			if local != "" {
				d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(local)}
			}
			conn, err := d.DialContext(ctx, "udp", remote)
			if err != nil {
				return nil, err
			}
			stop = context.AfterFunc(ctx, func() { conn.Close() })
			return conn, nil
		},
	}
	if injected {
		opts.GetSystemTime = o.Now
	}
	r, err := ntp.QueryWithOptions(server, opts)
	if stop != nil {
		stop()
	}
	if err == nil {
		err = r.Validate()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		s.Err = err.Error()
		return s
	}
	s.Offset, s.RTT = r.ClockOffset, r.RTT
	return s
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
