package attest_test

import (
	"testing"

	"github.com/shoalfleet/shoal/attest"
	"github.com/shoalfleet/shoal/attest/noncetest"
)

func TestMemNonceStore(t *testing.T) {
	noncetest.Run(t, func(*testing.T) attest.NonceStore { return &attest.MemNonceStore{} })
}
