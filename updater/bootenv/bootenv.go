// Package bootenv reads and writes bootloader environments: U-Boot env blocks
// (one copy, or two redundant copies with a flag byte) and the GRUB
// environment block. Both formats are byte-compatible with the Debian tools
// (fw_printenv/fw_setenv from libubootenv-tool, grub-editenv from grub-common).
//
// An environment is read and written as a whole: Save replaces every variable
// in one write, so one state change is never split across several writes.
// The updater imports it; tools that inspect a device may too.
package bootenv

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Env is a bootloader environment: a flat set of string variables.
type Env interface {
	// Load returns every variable.
	Load() (map[string]string, error)
	// Save replaces the whole environment with vars in one write. A variable
	// with an empty value is left out, as fw_setenv does when unsetting it.
	Save(vars map[string]string) error
}

// Errors by category; check with errors.Is.
var (
	// ErrCorrupt means no copy of the environment has a valid checksum or header.
	ErrCorrupt = errors.New("bootenv: environment corrupt")
	// ErrTooLarge means the variables do not fit the environment's size.
	ErrTooLarge = errors.New("bootenv: environment too large")
	// ErrInvalidName means a variable name is empty or holds '=' or a NUL byte.
	ErrInvalidName = errors.New("bootenv: invalid variable name")
	// ErrUnsupported means the configured storage is not supported (e.g. raw MTD flash).
	ErrUnsupported = errors.New("bootenv: unsupported")
)

// sortedNames returns the names of vars with a non-empty value, sorted, after
// checking each name and value against the format's forbidden bytes.
func sortedNames(vars map[string]string, forbidValue string) ([]string, error) {
	names := make([]string, 0, len(vars))
	for k, v := range vars {
		if k == "" || strings.ContainsAny(k, "=\x00\n") {
			return nil, fmt.Errorf("%w: %q", ErrInvalidName, k)
		}
		if forbidValue != "" && strings.ContainsAny(v, forbidValue) {
			return nil, fmt.Errorf("bootenv: variable %q: value holds a forbidden byte", k)
		}
		if v == "" {
			continue
		}
		names = append(names, k)
	}
	sort.Strings(names)
	return names, nil
}
