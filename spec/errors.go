package spec

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel categories, checked with errors.Is.
var (
	// ErrInvalid marks a fleet repo that does not validate: a person must fix it.
	ErrInvalid = errors.New("invalid fleet spec")
	// ErrUnknownDevice means no devices/<id> file exists for the device asked for.
	ErrUnknownDevice = errors.New("unknown device")
)

// Error is one problem in a fleet repo, at a place a person can open.
type Error struct {
	File   string // path relative to the fleet repo root; empty if not tied to a file
	Line   int    // 1-based; 0 if unknown
	Column int    // 1-based; 0 if unknown
	Path   string // field path, e.g. apps.web.ports[0].host
	Msg    string
	// Also names a second place involved, e.g. the other side of a conflict.
	Also string
}

// Pos returns "file:line:col", or as much of it as is known.
func (e *Error) Pos() string {
	switch {
	case e.File == "":
		return ""
	case e.Line == 0:
		return e.File
	case e.Column == 0:
		return fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	return fmt.Sprintf("%s:%d:%d", e.File, e.Line, e.Column)
}

func (e *Error) Error() string {
	var b strings.Builder
	if p := e.Pos(); p != "" {
		b.WriteString(p)
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Also != "" {
		b.WriteString(" (and ")
		b.WriteString(e.Also)
		b.WriteString(")")
	}
	return b.String()
}

// Is makes every Error match ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Errors is every problem found in one run, in file order.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Is makes Errors match ErrInvalid.
func (es Errors) Is(target error) bool { return target == ErrInvalid }
