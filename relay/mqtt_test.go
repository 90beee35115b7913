package relay_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/relay"
)

// broker is Debian's mosquitto on a loopback port, without persistence:
// when it is restarted, its retained messages are gone.
type broker struct {
	t    *testing.T
	bin  string
	addr string
	cmd  *exec.Cmd
	log  *testenv.Buffer
}

func startBroker(t *testing.T, addr string) *broker {
	t.Helper()
	b := &broker{t: t, bin: testenv.LookPath(t, "mosquitto", "mosquitto"), addr: addr}
	if b.addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b.addr = l.Addr().String()
		l.Close()
	}
	b.start()
	return b
}

func (b *broker) start() {
	t := b.t
	_, port, _ := net.SplitHostPort(b.addr)
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	os.WriteFile(conf, []byte("listener "+port+" 127.0.0.1\nallow_anonymous true\npersistence false\n"), 0o600)
	b.log = &testenv.Buffer{}
	b.cmd = exec.Command(b.bin, "-c", conf)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.stop)
	waitFor(t, 10*time.Second, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", b.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func (b *broker) stop() {
	if b.cmd.ProcessState == nil {
		b.cmd.Process.Kill()
		b.cmd.Wait()
	}
}

// subscriber collects messages by topic.
type subscriber struct {
	mu  sync.Mutex
	got map[string][][]byte
	c   mqtt.Client
}

func subscribe(t *testing.T, addr, topic string) *subscriber {
	t.Helper()
	s := &subscriber{got: map[string][][]byte{}}
	o := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(fmt.Sprintf("sub-%d", time.Now().UnixNano()))
	s.c = mqtt.NewClient(o)
	if tk := s.c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscriber connect: %v", tk.Error())
	}
	t.Cleanup(func() { s.c.Disconnect(100) })
	tk := s.c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		s.mu.Lock()
		s.got[m.Topic()] = append(s.got[m.Topic()], append([]byte(nil), m.Payload()...))
		s.mu.Unlock()
	})
	if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscribe: %v", tk.Error())
	}
	return s
}

func (s *subscriber) last(topic string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.got[topic]
	if len(l) == 0 {
		return nil
	}
	return l[len(l)-1]
}

func (s *subscriber) all(topic string) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.got[topic]...)
}

func compile(t *testing.T, schema []byte) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("s.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("s.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func valid(t *testing.T, s *jsonschema.Schema, b []byte) {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err == nil {
		err = s.Validate(v)
	}
	if err != nil {
		t.Fatalf("message does not validate against the API's schema: %v\n%s", err, b)
	}
}

func seqOf(b []byte) uint64 {
	var s api.Status
	json.Unmarshal(b, &s)
	return s.Seq
}

// TestMQTT publishes devices' status (retained, QoS 1) and events to a
// real mosquitto, as the API's JSON; the broker goes away and comes back
// empty, and the relay reconnects and republishes every retained status.
func TestMQTT(t *testing.T) {
	b := startBroker(t, "")
	s := newSite(t, func(o *relay.Options) { o.MQTT = relay.MQTTOptions{Broker: "tcp://" + b.addr, Topic: "plant"} })
	statusSchema, eventSchema := compile(t, api.StatusSchema()), compile(t, api.EventSchema())
	ctx := t.Context()
	d1, err := s.enrol("d1")
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s.enrol("d2")
	if err != nil {
		t.Fatal(err)
	}
	live := subscribe(t, b.addr, "plant/devices/#")
	st := report("d1", 1)
	st.Apps = []api.AppStatus{{Name: "web", State: "running", Health: "healthy"}}
	st.Commit = api.CommitStatus{Applied: "aaa", Attempted: "aaa"}
	if _, err := d1.cl.Send(ctx, st); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.cl.Send(ctx, report("d2", 1)); err != nil {
		t.Fatal(err)
	}
	// A change: degraded, with a problem, on a new commit.
	st = report("d1", 2)
	st.State, st.Commit = api.StateDegraded, api.CommitStatus{Applied: "bbb", Attempted: "bbb"}
	st.Problem = &api.Problem{Kind: "waiting", Reason: "hub-unreachable", Message: "no hub"}
	if _, err := d1.cl.Send(ctx, st); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "statuses and events at the broker", func() bool {
		return seqOf(live.last("plant/devices/d1/status")) == 2 && live.last("plant/devices/d2/status") != nil &&
			len(live.all("plant/devices/d1/events")) >= 3
	})
	for _, m := range append(live.all("plant/devices/d1/status"), live.all("plant/devices/d2/status")...) {
		valid(t, statusSchema, m)
	}
	kinds := map[string]bool{}
	for _, m := range live.all("plant/devices/d1/events") {
		valid(t, eventSchema, m)
		var e api.DeviceEvent
		json.Unmarshal(m, &e)
		kinds[e.Kind] = true
		if e.Kind == "state" && (e.From != "converged" || e.To != "degraded" || e.Seq != 2) {
			t.Errorf("state event: %+v", e)
		}
	}
	if !kinds["state"] || !kinds["commit"] || !kinds["problem"] {
		t.Errorf("events: %v", kinds)
	}
	// Retained: a late subscriber gets each device's latest at once.
	late := subscribe(t, b.addr, "plant/devices/+/status")
	waitFor(t, 10*time.Second, "retained statuses", func() bool {
		return seqOf(late.last("plant/devices/d1/status")) == 2 && seqOf(late.last("plant/devices/d2/status")) == 1
	})

	// The broker goes away and comes back with nothing retained.
	b.stop()
	waitFor(t, 30*time.Second, "the relay to notice", func() bool { m := s.relay.Status().MQTT; return m != nil && !m.Connected })
	if _, err := d2.cl.Send(ctx, report("d2", 2)); err != nil { // reports go on meanwhile
		t.Fatal(err)
	}
	b.start()
	waitFor(t, 60*time.Second, "the relay to reconnect", func() bool { return s.relay.Status().MQTT.Connected })
	again := subscribe(t, b.addr, "plant/devices/+/status")
	waitFor(t, 30*time.Second, "statuses republished after the broker's restart", func() bool {
		return seqOf(again.last("plant/devices/d1/status")) == 2 && seqOf(again.last("plant/devices/d2/status")) == 2
	})
	for _, m := range again.all("plant/devices/d1/status") {
		valid(t, statusSchema, m)
		if !strings.Contains(string(m), `"deviceID":"d1"`) {
			t.Fatalf("status without its device: %s", m)
		}
	}
}
