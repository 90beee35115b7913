//go:build !(tpmsim && cgo)

package tpmsim

import "github.com/google/go-tpm/tpm2/transport"

// TPM is a running simulator; in this build there is none.
type TPM struct{}

// Open returns ErrUnsupported: the simulator is not compiled in.
func Open() (*TPM, error) { return nil, ErrUnsupported }

// Send returns ErrUnsupported.
func (*TPM) Send([]byte) ([]byte, error) { return nil, ErrUnsupported }

// Reset returns ErrUnsupported.
func (*TPM) Reset() error { return ErrUnsupported }

// Close does nothing.
func (*TPM) Close() error { return nil }

var _ transport.TPMCloser = (*TPM)(nil)

// OpenSeeded returns ErrUnsupported: the simulator is not compiled in.
func OpenSeeded(int64) (*TPM, error) { return nil, ErrUnsupported }

// Boot returns ErrUnsupported.
func (*TPM) Boot(int) error { return ErrUnsupported }
