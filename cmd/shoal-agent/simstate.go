package main

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shoalfleet/shoal/internal/atomicfile"
)

// isSimulator reports whether trust.tpm names the TPM simulator.
func isSimulator(value string) bool {
	return value == "simulator" || strings.HasPrefix(value, "simulator:")
}

// parseSimulator reads "simulator" or "simulator:SEED"; the seed is 0 when
// none is given (one is then made and kept in the state dir).
func parseSimulator(value string) (seed int64, err error) {
	s, ok := strings.CutPrefix(value, "simulator:")
	if !ok {
		if value != "simulator" {
			return 0, fmt.Errorf("tpm %q: want simulator or simulator:SEED", value)
		}
		return 0, nil
	}
	seed, err = strconv.ParseInt(s, 10, 64)
	if err != nil || seed == 0 {
		return 0, fmt.Errorf("tpm %q: the seed must be a non-zero 64-bit integer", value)
	}
	return seed, nil
}

// simulatorState is what the simulated TPM keeps across agent restarts: the
// seed it is manufactured from and how many times the device has booted.
type simulatorState struct {
	Version int   `json:"version"`
	Seed    int64 `json:"seed"`
	Boots   int   `json:"boots"`
}

func simulatorStatePath(stateDir string) string {
	return filepath.Join(stateDir, "attest", "simulator.json")
}

// nextSimulatorBoot counts one more boot in the state dir and returns the
// state to start the simulator with. The count is saved before the simulator
// starts, so a crash can only skip a count, never repeat one.
func nextSimulatorBoot(stateDir, value string) (simulatorState, error) {
	seed, err := parseSimulator(value)
	if err != nil {
		return simulatorState{}, err
	}
	path := simulatorStatePath(stateDir)
	st := simulatorState{Version: 1}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return st, err
	default:
		if err := json.Unmarshal(b, &st); err != nil {
			return st, fmt.Errorf("%s: %w", path, err)
		}
		if st.Version != 1 {
			return st, fmt.Errorf("%s: version %d, want 1", path, st.Version)
		}
	}
	switch {
	case seed != 0 && st.Seed != 0 && seed != st.Seed:
		return st, fmt.Errorf("tpm %q: the state dir's simulator was made from seed %d; "+
			"another seed is another TPM, whose keys this device's enrolment does not know (remove %s to start anew)", value, st.Seed, path)
	case seed != 0:
		st.Seed = seed
	case st.Seed == 0:
		var r [8]byte
		for st.Seed == 0 {
			rand.Read(r[:])
			st.Seed = int64(binary.LittleEndian.Uint64(r[:]) >> 1)
		}
	}
	st.Boots++
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return st, err
	}
	b, err = json.MarshalIndent(st, "", "  ")
	if err != nil {
		return st, err
	}
	return st, atomicfile.WriteFile(path, b, 0o600)
}
