// Package tpmsim opens the in-process TPM 2.0 simulator (the Microsoft
// reference TPM from go-tpm-tools) for the demo and for laptops without a TPM.
// The simulator is C code: it is compiled in only with the tpmsim build tag
// and cgo, so device binaries (CGO_ENABLED=0) never carry it; without the tag,
// Open returns ErrUnsupported.
package tpmsim

import "errors"

// ErrUnsupported means this binary was built without the tpmsim tag or without cgo.
var ErrUnsupported = errors.New("TPM simulator not compiled in (build with -tags tpmsim and cgo)")
