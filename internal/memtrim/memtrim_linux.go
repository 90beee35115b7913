//go:build linux && !nomemtrim

package memtrim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func releaseCode() (Stats, error) {
	exe, err := os.Executable()
	if err != nil {
		return Stats{}, fmt.Errorf("release code pages: %w", err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return Stats{}, fmt.Errorf("release code pages: %w", err)
	}
	var st Stats
	var errs []error
	for _, m := range readOnlyMappings(maps, exe) {
		if err := advise(m); err != nil {
			errs = append(errs, err)
			continue
		}
		st.Mappings++
		st.Bytes += int64(m.end - m.start)
	}
	return st, errors.Join(errs...)
}

type mapping struct{ start, end uintptr }

// readOnlyMappings returns the mappings of path in a /proc/PID/maps listing
// that are private and not writable: code and read-only data, which the
// kernel can always read back from the file.
func readOnlyMappings(maps []byte, path string) []mapping {
	var out []mapping
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// start-end perms offset dev inode path
		f := strings.Fields(sc.Text())
		if len(f) < 6 || strings.Join(f[5:], " ") != path {
			continue
		}
		perms := f[1]
		if len(perms) != 4 || perms[0] != 'r' || perms[1] != '-' || perms[3] != 'p' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || b <= a {
			continue
		}
		out = append(out, mapping{uintptr(a), uintptr(b)})
	}
	return out
}

func advise(m mapping) error {
	err := madvise(m, unix.MADV_PAGEOUT)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 5.4: drop the pages from this process only.
		err = madvise(m, unix.MADV_DONTNEED)
	}
	if err != nil {
		return fmt.Errorf("release code pages %#x-%#x: %w", m.start, m.end, err)
	}
	return nil
}

// madvise is the raw system call: the range is this process's own mapping,
// named by address, never dereferenced.
func madvise(m mapping, advice int) error {
	if _, _, e := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, uintptr(advice)); e != 0 {
		return e
	}
	return nil
}
