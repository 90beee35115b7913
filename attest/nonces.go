package attest

import (
	"context"
	"sync"
	"time"
)

// MemNonceStore is an in-memory NonceStore for a single hub process and tests.
// Entries are kept for Retain after they expire so a late replay is still
// recognised as stale rather than unknown. The zero value is ready to use.
type MemNonceStore struct {
	Retain time.Duration // default 10 minutes

	mu     sync.Mutex
	m      map[string]*memNonce
	issued int
}

type memNonce struct {
	expires time.Time
	used    bool
}

func nonceKey(deviceID string, nonce []byte) string { return deviceID + "\x00" + string(nonce) }

// Issue records nonce for deviceID until expires.
func (s *MemNonceStore) Issue(ctx context.Context, deviceID string, nonce []byte, expires time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*memNonce{}
	}
	retain := s.Retain
	if retain <= 0 {
		retain = 10 * time.Minute
	}
	// Prune now and then, relative to the newest expiry: the store keeps no
	// clock of its own.
	if s.issued++; s.issued%256 == 0 {
		for k, n := range s.m {
			if expires.Sub(n.expires) > retain {
				delete(s.m, k)
			}
		}
	}
	s.m[nonceKey(deviceID, nonce)] = &memNonce{expires: expires}
	return nil
}

// Consume uses nonce up; see NonceStore.
func (s *MemNonceStore) Consume(ctx context.Context, deviceID string, nonce []byte, now time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.m[nonceKey(deviceID, nonce)]
	switch {
	case !ok:
		return ErrWrongNonce
	case n.used:
		return ErrReplay
	case now.After(n.expires):
		n.used = true
		return ErrStaleNonce
	}
	n.used = true
	return nil
}

// MemCounterStore is an in-memory CounterStore. The zero value is ready to use.
type MemCounterStore struct {
	mu sync.Mutex
	m  map[string]Counters
}

// LastCounters returns the device's last saved counters, or nil.
func (s *MemCounterStore) LastCounters(ctx context.Context, deviceID string) (*Counters, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.m[deviceID]
	if !ok {
		return nil, nil
	}
	return &c, nil
}

// SaveCounters records the device's counters.
func (s *MemCounterStore) SaveCounters(ctx context.Context, deviceID string, c Counters) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]Counters{}
	}
	s.m[deviceID] = c
	return nil
}
