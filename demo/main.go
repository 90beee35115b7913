// Command demo runs a simulated factory fleet end to end on one machine: a
// real shoal hub on SQLite, a fleet repo in a local Git repository and N real
// shoal-agent processes sharing the local Docker Engine. It narrates each
// step in one line. `make demo` runs it; DEMO_STEPS=1 runs the script once.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := 0
	if err := runMain(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		code = 1
	}
	stop()
	os.Exit(code)
}

func runMain(ctx context.Context, out io.Writer) error {
	o := Options{Devices: 7, Out: out, Hold: os.Getenv("DEMO_STEPS") != "1"}
	if s := os.Getenv("DEMO_DEVICES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > len(fleetDevices) {
			return fmt.Errorf("DEMO_DEVICES=%q: want 1..%d", s, len(fleetDevices))
		}
		o.Devices = n
	}
	err := Run(ctx, o)
	if errors.Is(err, context.Canceled) && o.Hold {
		return nil // Ctrl-C after the script: a normal end.
	}
	return err
}
