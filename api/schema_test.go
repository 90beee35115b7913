package api

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

func compileSchema(t *testing.T, b []byte) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func validateJSON(s *jsonschema.Schema, b []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return err
	}
	return s.Validate(v)
}

// TestStatusSchema: a full report as the agent writes it validates; what
// Validate refuses, and fields the type does not have, the schema refuses too.
func TestStatusSchema(t *testing.T) {
	s := compileSchema(t, StatusSchema())
	now := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	full := &Status{APIVersion: Version, DeviceID: "gw-01", Seq: 7, Time: now, Agent: "shoal-agent 1.0", Groups: []string{"edge"},
		Labels: map[string]string{"site": "a"}, Stages: []StageStatus{{Name: "containers", Ran: true, Converged: true}},
		Resources: &Resources{Load1: 0.5, CPUs: 4, MemTotal: 1 << 30, UptimeSeconds: 10}, State: StateDegraded,
		Commit: CommitStatus{Attempted: "a", Applied: "b", SpecHash: "c"},
		Apps:   []AppStatus{{Name: "web", State: "running", Rollback: &Rollback{Check: "health", LogTail: []string{"x"}}}},
		Update: &UpdateStatus{State: "trial", Since: now, Rollback: &Rollback{Check: "boot"}}, Clock: &ClockStatus{State: "ok", Trusted: true, Skew: time.Millisecond},
		Attest: &AttestStatus{OK: true, Time: now}, Problem: &Problem{Kind: "waiting", Reason: "hub-unreachable", Message: "m"}, Offline: true}
	mustMarshal := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if err := validateJSON(s, mustMarshal(full)); err != nil {
		t.Fatalf("full report: %v", err)
	}
	if err := validateJSON(s, mustMarshal(&Status{APIVersion: Version, Seq: 1, Time: now, State: StateConverged})); err != nil {
		t.Fatalf("minimal report: %v", err)
	}
	bad := map[string]string{
		"wrong version":  `{"apiVersion":"v0","seq":1,"time":"2026-11-03T10:00:00Z","state":"converged","commit":{}}`,
		"seq 0":          `{"apiVersion":"shoal.api/v1","seq":0,"time":"2026-11-03T10:00:00Z","state":"converged","commit":{}}`,
		"bad state":      `{"apiVersion":"shoal.api/v1","seq":1,"time":"2026-11-03T10:00:00Z","state":"happy","commit":{}}`,
		"bad time":       `{"apiVersion":"shoal.api/v1","seq":1,"time":"yesterday","state":"converged","commit":{}}`,
		"unknown field":  `{"apiVersion":"shoal.api/v1","seq":1,"time":"2026-11-03T10:00:00Z","state":"converged","commit":{},"mood":"ok"}`,
		"bad device id":  `{"apiVersion":"shoal.api/v1","deviceID":"GW 1","seq":1,"time":"2026-11-03T10:00:00Z","state":"converged","commit":{}}`,
		"bad problem":    `{"apiVersion":"shoal.api/v1","seq":1,"time":"2026-11-03T10:00:00Z","state":"converged","commit":{},"problem":{"kind":"sad","reason":"r","message":"m"}}`,
		"missing commit": `{"apiVersion":"shoal.api/v1","seq":1,"time":"2026-11-03T10:00:00Z","state":"converged"}`,
	}
	for name, b := range bad {
		if err := validateJSON(s, []byte(b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Every field of the type is in the schema.
	var doc map[string]any
	if err := json.Unmarshal(StatusSchema(), &doc); err != nil {
		t.Fatal(err)
	}
	props := doc["properties"].(map[string]any)
	st := reflect.TypeFor[Status]()
	for i := range st.NumField() {
		name, _, _ := strings.Cut(st.Field(i).Tag.Get("json"), ",")
		if _, ok := props[name]; !ok {
			t.Errorf("schema lacks %s", name)
		}
	}
	es := compileSchema(t, EventSchema())
	if err := validateJSON(es, mustMarshal(&DeviceEvent{APIVersion: Version, DeviceID: "gw-01", Seq: 3, Time: now, Kind: "state", From: "converged", To: "degraded"})); err != nil {
		t.Fatalf("event: %v", err)
	}
	if err := validateJSON(es, []byte(`{"apiVersion":"shoal.api/v1","deviceID":"gw-01","seq":3,"time":"2026-11-03T10:00:00Z","kind":"mood"}`)); err == nil {
		t.Error("event of an unknown kind accepted")
	}
}
