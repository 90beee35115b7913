package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// maxSensorName bounds a sensor's name; longer names are malformed.
const maxSensorName = 128

// validSensor: 1..128 bytes of letters, digits and . _ - : /
func validSensor(s string) bool {
	if s == "" || len(s) > maxSensorName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-', c == ':', c == '/':
		default:
			return false
		}
	}
	return true
}

func checkReading(r Reading) error {
	if !validSensor(r.Sensor) {
		return fmt.Errorf("sensor %q: want 1 to %d letters, digits or . _ - : /", r.Sensor, maxSensorName)
	}
	if math.IsNaN(r.Value) || math.IsInf(r.Value, 0) {
		return fmt.Errorf("sensor %q: value is not a finite number", r.Sensor)
	}
	return nil
}

// ParseJSON reads an HTTP body: one reading object or an array of them.
// Each element that is not a valid reading is an error naming its index;
// the valid ones are returned too.
func ParseJSON(body []byte) ([]Reading, []error, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, nil, errors.New("empty body: want a reading object or an array of them")
	}
	var raw []json.RawMessage
	if body[0] == '[' {
		if err := json.Unmarshal(body, &raw); err != nil {
			return nil, nil, fmt.Errorf("body: %w", err)
		}
	} else {
		raw = []json.RawMessage{body}
	}
	out := make([]Reading, 0, len(raw))
	var bad []error
	for i, m := range raw {
		r, err := decodeReading(m)
		if err != nil {
			bad = append(bad, fmt.Errorf("reading %d: %w", i, err))
			continue
		}
		out = append(out, r)
	}
	return out, bad, nil
}

// decodeReading decodes one reading object: sensor and value are required,
// nothing may follow it.
func decodeReading(m []byte) (Reading, error) {
	var w struct {
		Sensor string    `json:"sensor"`
		Value  *float64  `json:"value"`
		Time   time.Time `json:"time"`
	}
	dec := json.NewDecoder(bytes.NewReader(m))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return Reading{}, err
	}
	if dec.More() {
		return Reading{}, errors.New("data after the reading (send several as a JSON array)")
	}
	if w.Value == nil {
		return Reading{}, fmt.Errorf("sensor %q: no value", w.Sensor)
	}
	r := Reading{Sensor: w.Sensor, Value: *w.Value, Time: w.Time}
	return r, checkReading(r)
}

// ParseLines reads a UDP datagram: one reading a line, "SENSOR VALUE" or
// "SENSOR VALUE UNIX_MILLIS", separated by spaces; blank lines are skipped.
// A datagram that starts with '{' or '[' is JSON as for HTTP.
func ParseLines(b []byte) ([]Reading, []error) {
	if t := bytes.TrimSpace(b); len(t) > 0 && (t[0] == '{' || t[0] == '[') {
		rs, bad, err := ParseJSON(t)
		if err != nil {
			bad = append(bad, err)
		}
		return rs, bad
	}
	var out []Reading
	var bad []error
	for n, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 2 || len(f) > 3 {
			bad = append(bad, fmt.Errorf("line %d: want SENSOR VALUE [UNIX_MILLIS]", n+1))
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			bad = append(bad, fmt.Errorf("line %d: value %q is not a number", n+1, f[1]))
			continue
		}
		r := Reading{Sensor: f[0], Value: v}
		if len(f) == 3 {
			ms, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil || ms <= 0 {
				bad = append(bad, fmt.Errorf("line %d: time %q is not positive Unix milliseconds", n+1, f[2]))
				continue
			}
			r.Time = time.UnixMilli(ms)
		}
		if err := checkReading(r); err != nil {
			bad = append(bad, fmt.Errorf("line %d: %w", n+1, err))
			continue
		}
		out = append(out, r)
	}
	return out, bad
}
