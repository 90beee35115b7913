package attest

import (
	"encoding/hex"
	"slices"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// lockedBuffer collects a child process's output safely.
type lockedBuffer = testenv.Buffer

func bytesHex(b []byte) string { return hex.EncodeToString(b) }

func equalInts(a, b []int) bool { return slices.Equal(a, b) }
