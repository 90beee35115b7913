// Package sdnotify speaks systemd's service notification protocol: READY=1
// when a Type=notify service has started, WATCHDOG=1 while it is alive. The
// agent and the hub import it.
//
// It is written here rather than taken from go-systemd: it is one datagram,
// and the device binary stays smaller for it.
package sdnotify

import (
	"errors"
	"net"
	"os"
	"strconv"
	"time"
)

// Notify sends state (e.g. "READY=1", "WATCHDOG=1") to systemd's notify
// socket; without NOTIFY_SOCKET it does nothing.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:] // abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return errors.Join(errors.New("sd_notify"), err)
	}
	return nil
}

// WatchdogInterval returns systemd's WatchdogSec for this process, or 0 when
// no watchdog is set.
func WatchdogInterval() time.Duration {
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	us, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || us <= 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond
}
