package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseLines(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []Reading
		bad  []string // each error must contain these, in order
	}{
		{"one", "t1 21.5\n", []Reading{{Sensor: "t1", Value: 21.5}}, nil},
		{"several, blank lines, spaces", "\n t1  1 \n\nt2 -3e2\n", []Reading{{Sensor: "t1", Value: 1}, {Sensor: "t2", Value: -300}}, nil},
		{"with time", "t1 2 1764756000000", []Reading{{Sensor: "t1", Value: 2, Time: time.UnixMilli(1764756000000)}}, nil},
		{"bad value", "t1 warm\nt2 3", []Reading{{Sensor: "t2", Value: 3}}, []string{`line 1: value "warm" is not a number`}},
		{"bad time", "t1 2 yesterday", nil, []string{`line 1: time "yesterday"`}},
		{"negative time", "t1 2 -5", nil, []string{`line 1: time "-5"`}},
		{"too many fields", "t1 2 3 4", nil, []string{"line 1: want SENSOR VALUE"}},
		{"name only", "t1", nil, []string{"line 1: want SENSOR VALUE"}},
		{"bad sensor name", "t1;drop 2", nil, []string{`line 1: sensor "t1;drop"`}},
		{"infinity", "t1 +Inf", nil, []string{"not a finite number"}},
		{"json object", `{"sensor":"t1","value":4}`, []Reading{{Sensor: "t1", Value: 4}}, nil},
		{"json array", `[{"sensor":"t1","value":4},{"sensor":"","value":1}]`, []Reading{{Sensor: "t1", Value: 4}}, []string{"reading 1: sensor"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, bad := ParseLines([]byte(tc.in))
			if len(got) != len(tc.want) {
				t.Fatalf("readings %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i].Sensor != tc.want[i].Sensor || got[i].Value != tc.want[i].Value || !got[i].Time.Equal(tc.want[i].Time) {
					t.Errorf("reading %d: %+v, want %+v", i, got[i], tc.want[i])
				}
			}
			if len(bad) != len(tc.bad) {
				t.Fatalf("errors %v, want %d", bad, len(tc.bad))
			}
			for i, want := range tc.bad {
				if !strings.Contains(bad[i].Error(), want) {
					t.Errorf("error %q, want %q", bad[i], want)
				}
			}
		})
	}
}

func TestParseJSON(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		n       int
		bad     int
		wantErr string
	}{
		{"object", `{"sensor":"a","value":1}`, 1, 0, ""},
		{"object with time", `{"sensor":"a","value":1,"time":"2026-12-03T10:00:00Z"}`, 1, 0, ""},
		{"array", `[{"sensor":"a","value":1},{"sensor":"b","value":2}]`, 2, 0, ""},
		{"unknown field", `{"sensor":"a","value":1,"unit":"C"}`, 0, 1, ""},
		{"value not a number", `{"sensor":"a","value":"1"}`, 0, 1, ""},
		{"empty", `  `, 0, 0, "empty body"},
		{"broken array", `[{"sensor":"a"`, 0, 0, "body:"},
		{"not json", `hello`, 0, 1, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, bad, err := ParseJSON([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(got) != tc.n || len(bad) != tc.bad {
				t.Fatalf("%d readings, %d bad (%v), err %v; want %d, %d", len(got), len(bad), bad, err, tc.n, tc.bad)
			}
		})
	}
}

// FuzzParseLines: any datagram parses without a panic, and every reading
// it yields is valid.
func FuzzParseLines(f *testing.F) {
	for _, s := range []string{"t1 21.5\n", "t1 2 1764756000000", `{"sensor":"t1","value":4}`, `[{"sensor":"t1","value":4}]`, "a b c d", "\x00\xff", "t1 NaN", "t1 1e400"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, _ := ParseLines(b)
		for _, r := range rs {
			if !validSensor(r.Sensor) || math.IsNaN(r.Value) || math.IsInf(r.Value, 0) {
				t.Fatalf("invalid reading %+v from %q", r, b)
			}
		}
	})
}

// FuzzParseJSON: any body parses without a panic, and every reading it
// yields is valid.
func FuzzParseJSON(f *testing.F) {
	for _, s := range []string{`{"sensor":"a","value":1}`, `[{"sensor":"a","value":1},{"sensor":"b","value":2}]`, `[`, `{"sensor":"a","value":1e999}`, `[[]]`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, _, _ := ParseJSON(b)
		for _, r := range rs {
			if !validSensor(r.Sensor) || math.IsNaN(r.Value) || math.IsInf(r.Value, 0) {
				t.Fatalf("invalid reading %+v from %q", r, b)
			}
		}
	})
}
