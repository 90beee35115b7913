package ntptest

import (
	"testing"
	"time"

	"github.com/beevik/ntp"
)

func TestResponderOffset(t *testing.T) {
	for _, offset := range []time.Duration{0, 3 * time.Second, -90 * time.Minute} {
		s, err := Start(Responder{Offset: offset, Stratum: 2})
		if err != nil {
			t.Fatal(err)
		}
		r, err := ntp.QueryWithOptions(s.Addr(), ntp.QueryOptions{Timeout: 2 * time.Second})
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("offset %v: %v", offset, err)
		}
		if d := (r.ClockOffset - offset).Abs(); d > 50*time.Millisecond {
			t.Errorf("offset %v: client measured %v", offset, r.ClockOffset)
		}
	}
}
