//go:build !unix

package store

import "os"

// lockFile does nothing where flock is missing: the hub runs on Linux; this
// keeps the package building elsewhere for tools and tests.
func lockFile(*os.File) error { return nil }

func unlockFile(*os.File) error { return nil }
