//go:build !cgo

package tpmsim_test

import (
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
)

func TestSimulator(t *testing.T) {
	testenv.Missing(t, "cgo (the TPM simulator is C)", "apt-get install gcc and run tests with CGO_ENABLED=1")
}
