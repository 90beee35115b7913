package bootenv

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Location is where one copy of a U-Boot environment lives: a line of fw_env.config.
type Location struct {
	Device     string // block device, partition or file
	Offset     int64  // byte offset of the copy in Device
	Size       int64  // bytes of the copy, header included
	SectorSize int64  // erase size on flash; kept for the config round trip
	Sectors    int64
}

// UBootConfig describes a U-Boot environment: one copy, or two (redundant).
type UBootConfig struct {
	Copies []Location
	// LockPath, when set, is flock'ed around every read and write, so the
	// Debian tools (which use /var/lock/fw_printenv.lock) and we never interleave.
	LockPath string
}

// ParseFwEnvConfig reads the fw_env.config format fw_printenv -c takes: per
// line "device offset size [sector-size [sectors]]"; '#' starts a comment. As
// in libubootenv, the offset is a C integer (0x… hex, 0… octal, else decimal)
// and the sizes are always hexadecimal, with or without 0x.
func ParseFwEnvConfig(r io.Reader) (UBootConfig, error) {
	var cfg UBootConfig
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Fields(text)
		if len(f) < 3 {
			return cfg, fmt.Errorf("fw_env.config line %d: want device, offset and size, got %q", line, text)
		}
		loc := Location{Device: f[0]}
		var err error
		if loc.Offset, err = strconv.ParseInt(f[1], 0, 64); err != nil || loc.Offset < 0 {
			return cfg, fmt.Errorf("fw_env.config line %d: offset %q: not a non-negative integer", line, f[1])
		}
		hex := func(s string) (int64, error) {
			return strconv.ParseInt(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"), 16, 64)
		}
		if loc.Size, err = hex(f[2]); err != nil || loc.Size <= 8 {
			return cfg, fmt.Errorf("fw_env.config line %d: size %q: not a hex size above 8", line, f[2])
		}
		if len(f) > 3 {
			if loc.SectorSize, err = hex(f[3]); err != nil || loc.SectorSize < 0 {
				return cfg, fmt.Errorf("fw_env.config line %d: sector size %q: not a hex size", line, f[3])
			}
		}
		if len(f) > 4 {
			if loc.Sectors, err = hex(f[4]); err != nil || loc.Sectors < 0 {
				return cfg, fmt.Errorf("fw_env.config line %d: sectors %q: not a hex count", line, f[4])
			}
		}
		cfg.Copies = append(cfg.Copies, loc)
		if len(cfg.Copies) == 2 {
			break // libubootenv reads at most two copies
		}
	}
	if err := sc.Err(); err != nil {
		return cfg, fmt.Errorf("read fw_env.config: %w", err)
	}
	if len(cfg.Copies) == 0 {
		return cfg, fmt.Errorf("fw_env.config: no environment location")
	}
	if len(cfg.Copies) == 2 && cfg.Copies[0].Size != cfg.Copies[1].Size {
		return cfg, fmt.Errorf("fw_env.config: redundant copies differ in size (%#x, %#x)", cfg.Copies[0].Size, cfg.Copies[1].Size)
	}
	return cfg, nil
}

// String renders cfg in the fw_env.config format.
func (c UBootConfig) String() string {
	var b strings.Builder
	for _, l := range c.Copies {
		fmt.Fprintf(&b, "%s 0x%x 0x%x", l.Device, l.Offset, l.Size)
		if l.SectorSize > 0 || l.Sectors > 0 {
			fmt.Fprintf(&b, " 0x%x", l.SectorSize)
			if l.Sectors > 0 {
				fmt.Fprintf(&b, " 0x%x", l.Sectors)
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// UBoot is a U-Boot environment on block devices or files.
type UBoot struct {
	cfg UBootConfig
}

// NewUBoot returns the U-Boot environment cfg describes. Raw MTD flash
// (/dev/mtd*) needs erase handling and is refused with ErrUnsupported.
func NewUBoot(cfg UBootConfig) (*UBoot, error) {
	if n := len(cfg.Copies); n < 1 || n > 2 {
		return nil, fmt.Errorf("u-boot env: %d copies configured, want 1 or 2", n)
	}
	for _, l := range cfg.Copies {
		if strings.HasPrefix(l.Device, "/dev/mtd") {
			return nil, fmt.Errorf("u-boot env on %s: %w: raw MTD flash", l.Device, ErrUnsupported)
		}
		if l.Size <= 8 || l.Offset < 0 {
			return nil, fmt.Errorf("u-boot env on %s: bad offset %d or size %d", l.Device, l.Offset, l.Size)
		}
	}
	if len(cfg.Copies) == 2 && cfg.Copies[0].Size != cfg.Copies[1].Size {
		return nil, fmt.Errorf("u-boot env: redundant copies differ in size")
	}
	return &UBoot{cfg: cfg}, nil
}

// Redundant reports whether the environment has two copies.
func (u *UBoot) Redundant() bool { return len(u.cfg.Copies) == 2 }

// Load reads the environment; with two copies it uses the current one (the
// valid copy, or of two valid copies the one with the newer flag), as U-Boot
// and fw_printenv do.
func (u *UBoot) Load() (map[string]string, error) {
	unlock, err := u.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	copies, err := u.readCopies()
	if err != nil {
		return nil, err
	}
	vars, _, _, err := DecodeUBoot(copies)
	return vars, err
}

// Current reports which copy (0 or 1) Load reads, for a redundant environment.
func (u *UBoot) Current() (int, error) {
	copies, err := u.readCopies()
	if err != nil {
		return 0, err
	}
	_, cur, _, err := DecodeUBoot(copies)
	return cur, err
}

// Save writes vars into one copy: the only copy, or with two copies the one
// that is not current, with the flag counter advanced (wrapping at 255), so a
// power cut during the write leaves the previous copy in use. A copy with a bad
// checksum is never current, so it is the one the next Save repairs.
func (u *UBoot) Save(vars map[string]string) error {
	unlock, err := u.lock()
	if err != nil {
		return err
	}
	defer unlock()
	target, flag := 0, byte(0)
	if u.Redundant() {
		copies, err := u.readCopies()
		if err != nil {
			return err
		}
		_, cur, curFlag, err := DecodeUBoot(copies)
		switch {
		case err == nil:
			target, flag = 1-cur, curFlag+1
		default: // no valid copy: start over in copy 0
			target, flag = 0, 1
		}
	}
	loc := u.cfg.Copies[target]
	block, err := EncodeUBoot(vars, int(loc.Size), u.Redundant(), flag)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(loc.Device, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("u-boot env: open %s: %w", loc.Device, err)
	}
	defer f.Close()
	if _, err := f.WriteAt(block, loc.Offset); err != nil {
		return fmt.Errorf("u-boot env: write %s at %#x: %w", loc.Device, loc.Offset, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("u-boot env: sync %s: %w", loc.Device, err)
	}
	return f.Close()
}

func (u *UBoot) readCopies() ([][]byte, error) {
	out := make([][]byte, len(u.cfg.Copies))
	for i, l := range u.cfg.Copies {
		f, err := os.Open(l.Device)
		if err != nil {
			return nil, fmt.Errorf("u-boot env: open %s: %w", l.Device, err)
		}
		buf := make([]byte, l.Size)
		_, err = f.ReadAt(buf, l.Offset)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("u-boot env: read %s at %#x: %w", l.Device, l.Offset, err)
		}
		out[i] = buf
	}
	return out, nil
}

func (u *UBoot) lock() (func(), error) {
	if u.cfg.LockPath == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(filepath.Dir(u.cfg.LockPath), 0o755); err != nil {
		return nil, fmt.Errorf("u-boot env: lock %s: %w", u.cfg.LockPath, err)
	}
	f, err := os.OpenFile(u.cfg.LockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("u-boot env: lock %s: %w", u.cfg.LockPath, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("u-boot env: lock %s: %w", u.cfg.LockPath, err)
	}
	return func() { f.Close() }, nil
}

// EncodeUBoot renders vars as one environment copy of size bytes: CRC32 (little
// endian) over the data area, then for a redundant copy the flag byte, then
// "name=value\0" entries sorted by name, a closing NUL and zero padding.
func EncodeUBoot(vars map[string]string, size int, redundant bool, flag byte) ([]byte, error) {
	names, err := sortedNames(vars, "\x00")
	if err != nil {
		return nil, err
	}
	hdr := 4
	if redundant {
		hdr = 5
	}
	block := make([]byte, size)
	data := block[hdr:]
	n := 0
	for _, k := range names {
		e := k + "=" + vars[k]
		if n+len(e)+2 > len(data) { // entry, its NUL, and the closing NUL
			return nil, fmt.Errorf("%w: %d bytes of data do not fit %d", ErrTooLarge, n+len(e)+2, len(data))
		}
		n += copy(data[n:], e) + 1
	}
	binary.LittleEndian.PutUint32(block, crc32.ChecksumIEEE(data))
	if redundant {
		block[4] = flag
	}
	return block, nil
}

// DecodeUBoot reads one or two environment copies (each the full block as in
// the config). It returns the variables of the current copy, its index and
// its flag byte. With two valid copies the current one is chosen as U-Boot's
// env_check_redund does: a flag of 0 follows 0xff (the counter wraps), else
// the larger flag wins, and equal flags pick copy 0.
func DecodeUBoot(copies [][]byte) (vars map[string]string, current int, flag byte, err error) {
	if len(copies) < 1 || len(copies) > 2 {
		return nil, 0, 0, fmt.Errorf("u-boot env: %d copies, want 1 or 2", len(copies))
	}
	hdr := 4
	if len(copies) == 2 {
		hdr = 5
	}
	var ok [2]bool
	var flags [2]byte
	for i, c := range copies {
		if len(c) <= hdr {
			return nil, 0, 0, fmt.Errorf("%w: copy %d is %d bytes", ErrCorrupt, i, len(c))
		}
		ok[i] = binary.LittleEndian.Uint32(c) == crc32.ChecksumIEEE(c[hdr:])
		if hdr == 5 {
			flags[i] = c[4]
		}
	}
	switch {
	case len(copies) == 1 && ok[0], len(copies) == 2 && ok[0] && !ok[1]:
		current = 0
	case len(copies) == 2 && !ok[0] && ok[1]:
		current = 1
	case len(copies) == 2 && ok[0] && ok[1]:
		current = newerCopy(flags[0], flags[1])
	default:
		return nil, 0, 0, fmt.Errorf("%w: bad CRC in every copy", ErrCorrupt)
	}
	vars, err = parseUBootData(copies[current][hdr:])
	if err != nil {
		return nil, 0, 0, fmt.Errorf("u-boot env copy %d: %w", current, err)
	}
	return vars, current, flags[current], nil
}

func newerCopy(f0, f1 byte) int {
	switch {
	case f0 == 0xff && f1 == 0:
		return 1
	case f1 == 0xff && f0 == 0:
		return 0
	case f1 > f0:
		return 1
	default:
		return 0
	}
}

func parseUBootData(data []byte) (map[string]string, error) {
	vars := make(map[string]string)
	for len(data) > 0 {
		end := bytes.IndexByte(data, 0)
		if end < 0 {
			return nil, fmt.Errorf("%w: entry not NUL-terminated", ErrCorrupt)
		}
		if end == 0 {
			return vars, nil // the closing NUL
		}
		entry := data[:end]
		data = data[end+1:]
		k, v, found := bytes.Cut(entry, []byte("="))
		if !found || len(k) == 0 {
			continue // U-Boot's import skips such entries too
		}
		vars[string(k)] = string(v)
	}
	return nil, fmt.Errorf("%w: no closing NUL", ErrCorrupt)
}
