package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/shoalfleet/shoal/api"
)

// MQTTOptions configure publishing to the site's MQTT broker.
//
// Each device's latest status goes to TOPIC/devices/ID/status, retained,
// QoS 1: a dashboard or SCADA system that subscribes gets every device's
// current state at once. Changes (state, applied commit, update state,
// problem) go to TOPIC/devices/ID/events, QoS 1, not retained. Both are the
// API's own JSON (api.StatusSchema, api.EventSchema describe them). The
// client reconnects on its own and republishes every retained status on
// each connection, so a broker that lost its retained messages has them again.
type MQTTOptions struct {
	// Broker is tcp://host:1883, ssl://host:8883 or ws://host/path.
	Broker string
	// Topic is the topic prefix (default "shoal").
	Topic string
	// ClientID defaults to "shoal-relay-" + the relay's ID.
	ClientID string
	// Username and PasswordFile authenticate to the broker (optional).
	Username, PasswordFile string
}

// mqttPub publishes through paho's client, from a queue so a slow broker
// never holds up a device's report.
type mqttPub struct {
	o    MQTTOptions
	c    mqtt.Client
	devs *devices
	m    *relayMetrics
	log  *slog.Logger
	q    chan mqttMsg
	up   atomic.Bool

	mu   sync.Mutex
	last map[string]*api.Status // each device's latest, for events
}

type mqttMsg struct {
	topic    string
	retained bool
	kind     string
	body     []byte
}

func newMQTT(o MQTTOptions, relayID string, devs *devices, m *relayMetrics, log *slog.Logger) *mqttPub {
	if o.Topic == "" {
		o.Topic = "shoal"
	}
	o.Topic = strings.TrimRight(o.Topic, "/")
	if o.ClientID == "" {
		o.ClientID = "shoal-relay-" + relayID
	}
	p := &mqttPub{o: o, devs: devs, m: m, log: log, q: make(chan mqttMsg, 4096), last: map[string]*api.Status{}}
	co := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(o.ClientID).
		SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(2 * time.Second).SetMaxReconnectInterval(30 * time.Second).
		SetKeepAlive(30 * time.Second).SetOrderMatters(false).SetCleanSession(true).
		SetWriteTimeout(10 * time.Second)
	if o.Username != "" {
		co.SetUsername(o.Username)
	}
	if o.PasswordFile != "" {
		co.SetCredentialsProvider(func() (string, string) {
			b, err := os.ReadFile(o.PasswordFile)
			if err != nil {
				log.Warn("mqtt password file", "err", err)
			}
			return o.Username, strings.TrimSpace(string(b))
		})
	}
	co.SetOnConnectHandler(func(mqtt.Client) {
		p.up.Store(true)
		m.mqttUp.Set(1)
		log.Info("mqtt connected; republishing retained statuses", "broker", redact(o.Broker))
		// From paho's own goroutine: the queue may be full, and this must not block it.
		go p.republish()
	})
	co.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		p.up.Store(false)
		m.mqttUp.Set(0)
		log.Warn("mqtt connection lost; reconnecting", "err", err)
	})
	p.c = mqtt.NewClient(co)
	return p
}

func (p *mqttPub) connected() bool { return p.up.Load() }

func (p *mqttPub) statusTopic(id string) string { return p.o.Topic + "/devices/" + id + "/status" }
func (p *mqttPub) eventTopic(id string) string  { return p.o.Topic + "/devices/" + id + "/events" }

// status queues a device's report and the events it shows.
func (p *mqttPub) status(id string, s *api.Status, body []byte) {
	p.mu.Lock()
	prev := p.last[id]
	if prev != nil && s.Seq <= prev.Seq {
		p.mu.Unlock()
		return // an older report resent: the retained status stays the newest
	}
	p.last[id] = s
	p.mu.Unlock()
	p.enqueue(mqttMsg{p.statusTopic(id), true, "status", body})
	for _, e := range events(prev, s) {
		b, err := json.Marshal(e)
		if err == nil {
			p.enqueue(mqttMsg{p.eventTopic(id), false, "event", b})
		}
	}
}

func (p *mqttPub) enqueue(m mqttMsg) {
	select {
	case p.q <- m:
	default:
		p.m.mqtt.WithLabelValues(m.kind, "dropped").Inc()
	}
}

// events lists what changed from prev to s (nothing for a device's first report here).
func events(prev, s *api.Status) []*api.DeviceEvent {
	if prev == nil {
		return nil
	}
	var out []*api.DeviceEvent
	add := func(kind, from, to, msg string) {
		if from != to {
			out = append(out, &api.DeviceEvent{APIVersion: api.Version, DeviceID: s.DeviceID, Seq: s.Seq, Time: s.Time, Kind: kind, From: from, To: to, Message: msg})
		}
	}
	add("state", string(prev.State), string(s.State), "")
	add("commit", prev.Commit.Applied, s.Commit.Applied, "")
	us := func(u *api.UpdateStatus) string {
		if u == nil {
			return ""
		}
		return u.State
	}
	add("update", us(prev.Update), us(s.Update), "")
	pr := func(p *api.Problem) (string, string) {
		if p == nil {
			return "", ""
		}
		return p.Reason, p.Message
	}
	pf, _ := pr(prev.Problem)
	pt, msg := pr(s.Problem)
	add("problem", pf, pt, msg)
	return out
}

// republish queues every device's latest status again (after a connect).
func (p *mqttPub) republish() {
	for id, body := range p.devs.statuses() {
		var s api.Status
		if json.Unmarshal(body, &s) != nil {
			continue
		}
		p.mu.Lock()
		if p.last[id] == nil || p.last[id].Seq < s.Seq {
			p.last[id] = &s
		}
		p.mu.Unlock()
		p.enqueue(mqttMsg{p.statusTopic(id), true, "status", body})
	}
}

// run connects (retrying on its own) and publishes the queue until ctx ends.
func (p *mqttPub) run(ctx context.Context) {
	p.c.Connect() // with ConnectRetry, it keeps trying in the background
	defer p.c.Disconnect(250)
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-p.q:
			p.publish(ctx, m)
		}
	}
}

func (p *mqttPub) publish(ctx context.Context, m mqttMsg) {
	for ctx.Err() == nil {
		t := p.c.Publish(m.topic, 1, m.retained, m.body)
		ok := t.WaitTimeout(10 * time.Second)
		if ok && t.Error() == nil {
			p.m.mqtt.WithLabelValues(m.kind, "ok").Inc()
			return
		}
		if m.kind != "status" {
			// An event missed while the broker is away is not sent late;
			// the retained status says where each device is.
			p.m.mqtt.WithLabelValues(m.kind, "failed").Inc()
			return
		}
		// A status waits for the broker: the reconnect republishes it
		// anyway, so this one is dropped once the link is down.
		if !p.c.IsConnectionOpen() {
			p.m.mqtt.WithLabelValues(m.kind, "failed").Inc()
			return
		}
		p.log.Debug("mqtt publish", "topic", m.topic, "err", fmt.Sprint(t.Error()))
	}
}
