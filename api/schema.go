package api

import (
	"encoding/json"
	"reflect"
	"strings"
	"time"
)

// DeviceEvent is a change in a device's state that a relay publishes to the
// site's MQTT broker, derived from two consecutive status reports.
type DeviceEvent struct {
	APIVersion string    `json:"apiVersion"`
	DeviceID   string    `json:"deviceID"`
	Seq        uint64    `json:"seq"` // the report that showed the change
	Time       time.Time `json:"time"`
	// Kind is what changed: state, commit (the applied commit), update (the
	// A/B updater's state) or problem (a new reason, or "" when cleared).
	Kind    string `json:"kind"`
	From    string `json:"from,omitempty"`
	To      string `json:"to,omitempty"`
	Message string `json:"message,omitempty"`
}

// Event kinds.
var EventKinds = []string{"state", "commit", "update", "problem"}

// Validate checks an event's shape.
func (e *DeviceEvent) Validate() error {
	if e == nil {
		return invalid("event: empty")
	}
	if err := checkVersion(e.APIVersion); err != nil {
		return err
	}
	if !ValidDeviceID(e.DeviceID) {
		return invalid("deviceID %q", e.DeviceID)
	}
	for _, k := range EventKinds {
		if e.Kind == k {
			return nil
		}
	}
	return invalid("kind %q", e.Kind)
}

// StatusSchema returns a JSON Schema (draft 2020-12) for Status, derived
// from the Go type and its json tags, with the constraints Validate checks
// where a schema can state them (version, seq range, states, problem kinds,
// device ID). A consumer of Shoal's JSON outside Go (an MQTT subscriber at
// a site) checks messages against it.
func StatusSchema() []byte {
	s := schemaOf(reflect.TypeFor[Status]())
	p := s["properties"].(map[string]any)
	p["apiVersion"] = map[string]any{"const": Version}
	p["deviceID"] = map[string]any{"type": "string", "pattern": idRE.String()}
	p["seq"] = map[string]any{"type": "integer", "minimum": 1, "maximum": uint64(1) << 62}
	states := make([]any, len(States))
	for i, st := range States {
		states[i] = string(st)
	}
	p["state"] = map[string]any{"enum": states}
	prob := p["problem"].(map[string]any)
	prob["properties"].(map[string]any)["kind"] = map[string]any{"enum": []any{"stalled", "waiting"}}
	return marshalSchema(s, "https://shoal.dev/schemas/status.json", "A Shoal device status report ("+Version+")")
}

// EventSchema returns a JSON Schema (draft 2020-12) for DeviceEvent.
func EventSchema() []byte {
	s := schemaOf(reflect.TypeFor[DeviceEvent]())
	p := s["properties"].(map[string]any)
	p["apiVersion"] = map[string]any{"const": Version}
	p["deviceID"] = map[string]any{"type": "string", "pattern": idRE.String()}
	kinds := make([]any, len(EventKinds))
	for i, k := range EventKinds {
		kinds[i] = k
	}
	p["kind"] = map[string]any{"enum": kinds}
	return marshalSchema(s, "https://shoal.dev/schemas/event.json", "A change in a Shoal device's state ("+Version+")")
}

func marshalSchema(s map[string]any, id, title string) []byte {
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["$id"] = id
	s["title"] = title
	b, _ := json.MarshalIndent(s, "", "  ")
	return b
}

var (
	timeType     = reflect.TypeFor[time.Time]()
	durationType = reflect.TypeFor[time.Duration]()
)

// schemaOf describes t as encoding/json writes it.
func schemaOf(t reflect.Type) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t == durationType:
		return map[string]any{"type": "integer", "description": "nanoseconds"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		s := schemaOf(t.Elem())
		return map[string]any{"anyOf": []any{s, map[string]any{"type": "null"}}}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return map[string]any{"type": "integer"}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer", "minimum": 0}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "contentEncoding": "base64"}
		}
		return map[string]any{"type": []any{"array", "null"}, "items": schemaOf(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": []any{"object", "null"}, "additionalProperties": schemaOf(t.Elem())}
	case reflect.Struct:
		props := map[string]any{}
		var req []any
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			ps := schemaOf(f.Type)
			if f.Type.Kind() == reflect.Pointer && strings.Contains(opts, "omitempty") {
				ps = schemaOf(f.Type.Elem()) // omitted, never null
			}
			props[name] = ps
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				req = append(req, name)
			}
		}
		s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(req) > 0 {
			s["required"] = req
		}
		return s
	}
	return map[string]any{}
}
