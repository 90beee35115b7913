package attest

import (
	"bytes"
	"encoding/hex"
	"slices"
	"sync"
)

// lockedBuffer collects a child process's output safely.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func bytesHex(b []byte) string { return hex.EncodeToString(b) }

func equalInts(a, b []int) bool { return slices.Equal(a, b) }
