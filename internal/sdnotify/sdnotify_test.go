package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestNotify(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr func(dir string) (listen, env string)
	}{
		{"path", func(dir string) (string, string) { p := filepath.Join(dir, "notify"); return p, p }},
		{"abstract", func(dir string) (string, string) {
			n := "shoal-sdnotify-test-" + strconv.Itoa(os.Getpid())
			return "\x00" + n, "@" + n
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen, env := tc.addr(t.TempDir())
			conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: listen, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			t.Setenv("NOTIFY_SOCKET", env)
			if err := Notify("READY=1"); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := conn.Read(buf)
			if err != nil || string(buf[:n]) != "READY=1" {
				t.Fatalf("got %q, %v", buf[:n], err)
			}
		})
	}
	t.Run("no socket", func(t *testing.T) {
		t.Setenv("NOTIFY_SOCKET", "")
		if err := Notify("READY=1"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name, usec, pid string
		want            time.Duration
	}{
		{"unset", "", "", 0},
		{"for us", "30000000", self, 30 * time.Second},
		{"no pid given", "500000", "", 500 * time.Millisecond},
		{"for another process", "30000000", "1", 0},
		{"garbage", "soon", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", tc.usec)
			t.Setenv("WATCHDOG_PID", tc.pid)
			if got := WatchdogInterval(); got != tc.want {
				t.Fatalf("WatchdogInterval = %v, want %v", got, tc.want)
			}
		})
	}
}
