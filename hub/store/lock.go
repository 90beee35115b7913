package store

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ErrLocked is returned by HubLock when another hub holds the database.
var ErrLocked = errors.New("database in use by another hub")

// HubLock keeps a second hub off a SQLite database: it takes an exclusive
// lock on a file beside it (path + "-hub.lock", holding the holder's pid)
// for as long as the hub runs. The operating system drops the lock when the
// process ends, however it ends. SQLite's own locking serialises writes but
// not the hubs' in-memory state (device cache, fleet index, pokes), so two
// hubs on one file would each serve a stale view. Tools that only read or
// add a token (shoal hub token create, shoal hub ca) take no lock.
//
// A PostgreSQL URL needs no lock: several hubs share one database by design.
// The returned function releases the lock.
func HubLock(dbURL string) (release func() error, err error) {
	path, ok := strings.CutPrefix(dbURL, "sqlite://")
	if !ok {
		return func() error { return nil }, nil
	}
	lockPath := path + "-hub.lock"
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("hub lock: %w", err)
	}
	if err := lockFile(f); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		holder := "another process"
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b[:n]))); perr == nil {
			holder = "process " + strconv.Itoa(pid)
		}
		return nil, fmt.Errorf("%s: %w (%s holds %s): one hub per SQLite database; stop that hub first, or run several hubs on one PostgreSQL database", path, ErrLocked, holder, lockPath)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() error {
		// Removing the file first would let a waiting hub lock an unlinked
		// file while a third creates a new one: leave it in place.
		_ = unlockFile(f)
		return f.Close()
	}, nil
}
