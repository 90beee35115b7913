// Package proccpu reads the CPU time processes have used, for benchmarks
// that account for every process of a setup (load generator, hubs,
// database server).
package proccpu

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Time sums the user and system CPU time of pids (Linux /proc/PID/stat).
// A process that has exited counts nothing.
func Time(pids ...int) time.Duration {
	const tick = time.Second / 100 // USER_HZ
	var sum time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The command name may hold spaces; the fields after it do not.
		_, rest, _ := strings.Cut(string(b), ") ")
		f := strings.Fields(rest)
		if len(f) < 13 {
			continue
		}
		var ut, st int64
		fmt.Sscan(f[11], &ut)
		fmt.Sscan(f[12], &st)
		sum += time.Duration(ut+st) * tick
	}
	return sum
}
