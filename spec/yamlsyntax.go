package spec

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/token"
	"cuelang.org/go/encoding/yaml"
	yamlv3 "go.yaml.in/yaml/v3"
)

// The YAML parser under cuelang.org/go (go.yaml.in/yaml/v3) reports a syntax
// error at the line of its parser's *context* (the mapping or sequence being
// read), zero-based, so an indentation error at line 4 of a mapping that
// starts at line 1 comes out as line 1, and an unclosed bracket on the last
// line one line early. Its marks are not exported, so the place is found
// again here by reading prefixes of the file: the problem is on the first
// line at which the file, read from the top, can no longer be valid YAML
// whatever follows. For an unclosed bracket or quote that is the line where
// it opens; for a line that is valid on its own but leaves the next one
// nowhere to fit (an indentation change), it is that next line.

// locateBudget bounds the bytes parsed again to find a syntax error's line
// and column: each candidate prefix is parsed anew, which is quadratic in the
// file's size. Fleet repo files use a small part of it; past it the error
// keeps only the parser's own hint.
const locateBudget = 4 << 20

// yamlValid reports whether b parses as a stream of YAML documents.
func yamlValid(b []byte) error {
	d := yamlv3.NewDecoder(bytes.NewReader(b))
	for {
		var n yamlv3.Node
		if err := d.Decode(&n); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// yamlSyntaxError returns the YAML syntax error of data, at its real line and
// column, or nil if data parses.
func yamlSyntaxError(file string, data []byte) *Error {
	err := yamlValid(data)
	if err == nil {
		return nil
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	hint := "line not known"
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.Index(rest, ": "); i >= 0 {
			hint, msg = "near line "+rest[:i], rest[i+2:]
		}
	}
	e := &Error{File: file, Msg: "YAML syntax: " + msg}
	budget := locateBudget
	valid := func(b []byte) (ok, spent bool) {
		if budget -= len(b); budget < 0 {
			return false, true
		}
		return yamlValid(b) == nil, false
	}
	// Line starts, and the end of the file as one more "start".
	starts := []int{0}
	for i, c := range data {
		if c == '\n' && i+1 < len(data) {
			starts = append(starts, i+1)
		}
	}
	lineEnd := func(i int) int { // exclusive end of line i (0-based), newline included
		if i+1 < len(starts) {
			return starts[i+1]
		}
		return len(data)
	}
	// The last line whose prefix (through it) is still valid YAML.
	bad := 0
	for i := len(starts) - 2; i >= 0; i-- {
		ok, spent := valid(data[:lineEnd(i)])
		if spent {
			e.Msg += " (" + hint + "; the file is too large to locate it exactly)"
			return e
		}
		if ok {
			bad = i + 1
			break
		}
	}
	e.Line = bad + 1
	line := data[starts[bad]:lineEnd(bad)]
	line = bytes.TrimRight(line, "\r\n")
	e.Column = yamlColumn(data[:starts[bad]], line, valid)
	switch t := bytes.IndexByte(line, '\t'); {
	case t >= 0 && len(bytes.TrimLeft(line[:t], " ")) == 0:
		e.Column = t + 1
		e.Msg += " (a tab in indentation: YAML indents with spaces only)"
	case e.Column > 0 && strings.IndexByte("[{", line[e.Column-1]) >= 0:
		e.Msg += fmt.Sprintf(" (the '%c' here is never closed)", line[e.Column-1])
	case e.Column > 0 && strings.IndexByte(`"'`, line[e.Column-1]) >= 0:
		e.Msg += " (the quote here is never closed)"
	case strings.Contains(msg, "did not find expected key"), strings.Contains(msg, "<document start>"):
		e.Msg += " (check the indentation of this line and of the lines above)"
	case strings.Contains(msg, "mapping values are not allowed"):
		e.Msg += " (a ': ' inside a plain value: quote the value, or check the indentation)"
	}
	return e
}

// yamlColumn finds where in line, read after the valid text before, parsing
// stops: one past the longest prefix of the line that still parses. It
// returns 0 (unknown) for very long lines or when even the whole line is
// accepted (the problem shows only with what follows).
func yamlColumn(before, line []byte, valid func([]byte) (ok, spent bool)) int {
	if len(line) > 1024 {
		return 0
	}
	buf := make([]byte, 0, len(before)+len(line))
	buf = append(buf, before...)
	if ok, spent := valid(append(buf, line...)); ok || spent {
		return 0
	}
	for c := len(line) - 1; c >= 0; c-- {
		ok, spent := valid(append(buf[:len(before)], line[:c]...))
		if spent {
			return 0
		}
		if ok {
			// Point at the first character that is not blank from there on.
			for c < len(line) && line[c] == ' ' {
				c++
			}
			if c == len(line) {
				return 0
			}
			return c + 1
		}
	}
	return 1
}

// duplicateKeys reports every key a YAML mapping repeats. YAML forbids them,
// but the decoder hands both to CUE, which would silently unify equal values.
func duplicateKeys(f *ast.File) Errors {
	var errs Errors
	check := func(decls []ast.Decl) {
		seen := map[string]token.Pos{}
		for _, d := range decls {
			fd, ok := d.(*ast.Field)
			if !ok {
				continue
			}
			name, _, err := ast.LabelName(fd.Label)
			if err != nil {
				continue
			}
			p := fd.Label.Pos()
			if first, ok := seen[name]; ok {
				e := &Error{Msg: fmt.Sprintf("duplicate key %q (first at line %d)", name, first.Line())}
				setPos(e, p)
				errs = append(errs, e)
				continue
			}
			seen[name] = p
		}
	}
	check(f.Decls)
	ast.Walk(f, func(n ast.Node) bool {
		if s, ok := n.(*ast.StructLit); ok {
			check(s.Elts)
		}
		return true
	}, nil)
	return errs
}

// ExtractYAML parses a YAML file named file to CUE syntax, positions intact,
// as the loader does: a syntax error is reported at the line and column where
// the file stops being valid YAML (the rule above), and repeated keys are
// errors. Other YAML files of a device, such as the agent's config, are read
// the same way. Its errors are Errors.
func ExtractYAML(file string, data []byte) (*ast.File, error) {
	af, err := yaml.Extract(file, data)
	if err != nil {
		if e := yamlSyntaxError(file, data); e != nil {
			return nil, Errors{e}
		}
		e := &Error{Msg: err.Error()}
		if !plainPos(e, file) {
			e.File = file
		}
		return nil, Errors{e}
	}
	if errs := duplicateKeys(af); len(errs) > 0 {
		return nil, errs
	}
	return af, nil
}
