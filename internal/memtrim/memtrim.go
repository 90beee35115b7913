// Package memtrim gives memory an idle process no longer needs back to the
// system: the heap a pass allocated, and the pages of the program's own code
// and read-only data that the pass brought in.
//
// A Go binary's code pages are file-backed: the kernel reads them from the
// executable on first touch, and maps neighbours around each fault (fault-
// around, readahead), so after one pass that touched Git, CUE, Docker, TPM
// and TLS code most of the binary is resident and stays so. For an agent that
// is idle for minutes between passes that is memory held for nothing. Code
// hands those pages back with MADV_PAGEOUT (Linux 5.4+; MADV_DONTNEED
// before that): they are reclaimed, and the next pass faults back in what it
// runs. Only read-only mappings of the executable are touched, never data.
//
// Building with -tags nomemtrim leaves code pages alone (Release then only
// returns the free heap): bench/agentrss uses it to show the difference.
package memtrim

import "runtime/debug"

// Stats is what a Release did.
type Stats struct {
	Mappings int   // read-only mappings of the executable advised
	Bytes    int64 // their total size
}

// Release returns the free heap to the OS and advises the kernel that the
// executable's read-only pages may be reclaimed. It is cheap (a read of
// /proc/self/maps and a few system calls) and safe at any time: a page
// needed again is faulted back in from the executable.
func Release() (Stats, error) {
	debug.FreeOSMemory()
	return releaseCode()
}
