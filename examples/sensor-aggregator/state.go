package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// stateVersion is the version of the saved-windows file.
const stateVersion = 1

type stateFile struct {
	Version int                        `json:"version"`
	Sensors map[string]SensorAggregate `json:"sensors"`
}

// loadState reads windows saved by saveState.
func loadState(path string) (map[string]SensorAggregate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s stateFile
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("%s: version %d, want %d", path, s.Version, stateVersion)
	}
	return s.Sensors, nil
}

// saveState writes the windows atomically (temp file, fsync, rename, fsync
// the directory), so a power cut leaves the old file or the new one.
func saveState(path string, sensors map[string]SensorAggregate) error {
	b, err := json.Marshal(stateFile{Version: stateVersion, Sensors: sensors})
	if err != nil {
		return fmt.Errorf("save windows: %w", err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return fmt.Errorf("save windows: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("save windows: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save windows: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save windows: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save windows: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("save windows: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save windows: %w", err)
	}
	return nil
}
