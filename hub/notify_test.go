package hub

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/sdnotify"
)

// pingStore is a store whose Ping fails once broken is set.
type pingStore struct {
	store.Store
	broken chan struct{}
}

func (s pingStore) Ping(ctx context.Context) error {
	select {
	case <-s.broken:
		return errors.New("database gone")
	default:
		return s.Store.Ping(ctx)
	}
}

// TestSystemdNotify holds the hub to its Type=notify unit: READY=1 once it
// serves, WATCHDOG=1 while its database answers and none once it stops
// answering (so systemd restarts it), STOPPING=1 on shutdown; all through a
// real notify socket, as systemd sets it.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", "")
	if sdnotify.WatchdogInterval() != 200*time.Millisecond {
		t.Fatalf("WatchdogInterval = %v", sdnotify.WatchdogInterval())
	}
	st := pingStore{Store: openSQLite(t), broken: make(chan struct{})}
	th := startHub(t, st)
	next := func(d time.Duration) (string, error) {
		buf := make([]byte, 256)
		conn.SetReadDeadline(time.Now().Add(d))
		n, err := conn.Read(buf)
		return string(buf[:n]), err
	}
	want := func(state string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			got, err := next(time.Until(deadline))
			if err != nil {
				t.Fatalf("waiting for %s: %v", state, err)
			}
			if got == state {
				return
			}
		}
		t.Fatalf("no %s within 30s", state)
	}
	want("READY=1")
	want("WATCHDOG=1")
	want("WATCHDOG=1")

	close(st.broken)
	// A ping already under way may still land; after that, silence.
	for {
		if _, err := next(300 * time.Millisecond); err != nil {
			break
		}
	}
	if got, err := next(time.Second); err == nil {
		t.Fatalf("hub sent %q with its database gone", got)
	}
	if err := th.stop(); err != nil {
		t.Fatal(err)
	}
	want("STOPPING=1")
}
