package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSimulator(t *testing.T) {
	cases := []struct {
		name, value string
		seed        int64
		err         string
	}{
		{"no seed", "simulator", 0, ""},
		{"seed", "simulator:42", 42, ""},
		{"negative seed", "simulator:-3", -3, ""},
		{"zero seed", "simulator:0", 0, "non-zero"},
		{"not a number", "simulator:abc", 0, "non-zero 64-bit integer"},
		{"empty seed", "simulator:", 0, "non-zero 64-bit integer"},
		{"other value", "simulated", 0, "want simulator or simulator:SEED"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seed, err := parseSimulator(tc.value)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.value) {
					t.Fatalf("parseSimulator(%q) = %d, %v; want an error naming the value and %q", tc.value, seed, err, tc.err)
				}
				return
			}
			if err != nil || seed != tc.seed {
				t.Fatalf("parseSimulator(%q) = %d, %v; want %d", tc.value, seed, err, tc.seed)
			}
		})
	}
}

// TestNextSimulatorBoot: every start counts a boot; a seed made for
// "simulator" is kept; another seed than the state dir's is refused and
// changes nothing; a damaged state file is an error naming it.
func TestNextSimulatorBoot(t *testing.T) {
	dir := t.TempDir()
	var seed int64
	for want := 1; want <= 3; want++ {
		st, err := nextSimulatorBoot(dir, "simulator")
		if err != nil {
			t.Fatal(err)
		}
		if st.Boots != want || st.Seed == 0 || (seed != 0 && st.Seed != seed) {
			t.Fatalf("start %d: %+v (first seed %d)", want, st, seed)
		}
		seed = st.Seed
	}
	before, _ := os.ReadFile(simulatorStatePath(dir))
	if _, err := nextSimulatorBoot(dir, "simulator:12345"); err == nil || !strings.Contains(err.Error(), "another seed") {
		t.Fatalf("another seed: %v", err)
	}
	if after, _ := os.ReadFile(simulatorStatePath(dir)); string(after) != string(before) {
		t.Fatalf("a refused seed changed the state: %s", after)
	}

	seeded := t.TempDir()
	for want := 1; want <= 2; want++ {
		if st, err := nextSimulatorBoot(seeded, "simulator:9"); err != nil || st.Seed != 9 || st.Boots != want {
			t.Fatalf("seed 9, start %d: %+v, %v", want, st, err)
		}
	}

	bad := t.TempDir()
	os.MkdirAll(filepath.Join(bad, "attest"), 0o700)
	os.WriteFile(simulatorStatePath(bad), []byte("{"), 0o600)
	if _, err := nextSimulatorBoot(bad, "simulator"); err == nil || !strings.Contains(err.Error(), "simulator.json") {
		t.Fatalf("damaged state: %v", err)
	}
	os.WriteFile(simulatorStatePath(bad), []byte(`{"version": 2}`), 0o600)
	if _, err := nextSimulatorBoot(bad, "simulator"); err == nil || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("future version: %v", err)
	}
}
