//go:build unix

package store

import (
	"os"
	"syscall"
)

// lockFile takes f's exclusive flock without waiting. flock locks belong to
// the open file, so a second open in the same process is refused too.
func lockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

func unlockFile(f *os.File) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
