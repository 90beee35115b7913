package spec

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// Canonical returns the canonical JSON of d: fields in a fixed order, map keys
// sorted, no insignificant whitespace. Equivalent YAML or CUE input, in any key
// order and layout, renders to the same bytes.
func (d *Device) Canonical() []byte {
	b, err := json.Marshal(d)
	if err != nil {
		// Device holds only strings, numbers, bools, maps and slices of them.
		panic("spec: marshal device: " + err.Error())
	}
	return b
}

// Hash is the hex sha256 of d's canonical JSON. The agent compares hashes to detect change.
func (d *Device) Hash() string {
	sum := sha256.Sum256(d.Canonical())
	return hex.EncodeToString(sum[:])
}

// Hash is the hex sha256 of the app's canonical JSON. The reconciler labels each
// container with it and recreates the container when it changes.
func (a *App) Hash() string {
	b, err := json.Marshal(a)
	if err != nil {
		panic("spec: marshal app: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// App returns the app named name, or nil.
func (d *Device) App(name string) *App {
	for i := range d.Apps {
		if d.Apps[i].Name == name {
			return &d.Apps[i]
		}
	}
	return nil
}
