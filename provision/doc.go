// Package provision makes and applies offline bundles: one tar file, carried
// on a USB stick, that provisions a new device or updates one with no network
// at all, and the signed receipts a device leaves next to it for the hub.
//
// A bundle's first member is a signed envelope (ed25519, the operator's bundle
// key) around a manifest that lists every other member with its size and
// sha256, in order. Apply reads the file once, checking each member against
// the manifest as it streams into a temp area of the state dir, and only
// then moves anything into place, so a bad bundle leaves the state dir as it
// was.
//
// The operator CLI (create, inspect, keys, receipts import) and the device
// agent (apply) import it; it imports spec and source.
package provision
