// Package delta installs an OS image from content-defined chunks in casync's
// format: a chunk index (.caibx) that lists the image's chunks by SHA-256 (or
// SHA-512/256) ID, and a chunk store of zstd-compressed .cacnk files, on disk
// or over HTTP. It chunks data with casync's buzhash rolling hash, so an index
// made here and one made by `casync make --digest=sha256` for the same image
// and chunk sizes are byte-for-byte the same, and either tool reads the other's
// stores.
//
// On a device the updater seeds an install from what it already has (the
// active slot, and whatever the inactive slot holds in place), fetches only
// the chunks it lacks, and checks every chunk's ID before a byte of it is
// used. The operator CLI makes indexes and stores (Make).
//
// The updater and the operator CLI import it; it imports none of Shoal's
// packages.
package delta
