package proccpu

import (
	"os"
	"testing"
	"time"
)

// TestTime: this process's CPU time grows while it spins, and a process
// that does not exist counts nothing.
func TestTime(t *testing.T) {
	before := Time(os.Getpid())
	for end := time.Now().Add(150 * time.Millisecond); time.Now().Before(end); {
	}
	if after := Time(os.Getpid()); after <= before {
		t.Fatalf("CPU time %v after spinning, %v before", after, before)
	}
	if got := Time(1 << 30); got != 0 {
		t.Fatalf("CPU time of a missing process: %v", got)
	}
}
