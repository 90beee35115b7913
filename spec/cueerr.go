package spec

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"cuelang.org/go/cue"
	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/token"
)

// toErrors turns a CUE (or YAML) error into positioned Errors. Positions in
// the embedded schema are dropped in favour of those in the fleet repo;
// fallback names the file when CUE gives no position at all.
func toErrors(err error, fallback string) Errors {
	var ours Errors
	if errors.As(err, &ours) {
		return ours
	}
	var out Errors
	for _, ce := range cueerrors.Errors(err) {
		format, args := ce.Msg()
		msg := fmt.Sprintf(format, args...)
		if strings.Contains(msg, "%!") || strings.TrimSpace(msg) == "" {
			msg = ce.Error()
			if strings.TrimSpace(msg) == "" {
				msg = err.Error()
			}
		}
		e := &Error{Path: fieldPath(ce.Path()), Msg: cleanMsg(msg)}
		var places []token.Pos
		seen := map[string]bool{}
		for _, p := range append([]token.Pos{ce.Position()}, ce.InputPositions()...) {
			if !p.IsValid() || p.Filename() == schemaFile {
				continue
			}
			k := posString(p)
			if seen[k] {
				continue
			}
			seen[k] = true
			places = append(places, p)
		}
		sort.SliceStable(places, func(i, j int) bool { return posString(places[i]) < posString(places[j]) })
		if len(places) > 0 {
			setPos(e, places[0])
			var also []string
			for _, p := range places[1:] {
				also = append(also, posString(p))
			}
			e.Also = strings.Join(also, ", ")
		} else if !plainPos(e, fallback) {
			e.File = fallback
		}
		out = append(out, e)
	}
	if len(out) == 0 && err != nil {
		out = append(out, &Error{File: fallback, Msg: err.Error()})
	}
	return foldDisjunctions(out)
}

var (
	disjunctionHeader = regexp.MustCompile(`^\d+ errors in empty disjunction:?$`)
	conflict          = regexp.MustCompile(`^conflicting values (.+) and (.+?)( \(mismatched types .*\))?$`)
)

// foldDisjunctions turns CUE's report of a value that matches no branch of a
// disjunction ("4 errors in empty disjunction", then one conflict per branch)
// into one error that lists what is allowed, e.g.
// restart: "sometimes" is not one of "always", "no", "on-failure", "unless-stopped".
func foldDisjunctions(es Errors) Errors {
	out := es[:0]
	for i := 0; i < len(es); i++ {
		e := es[i]
		if !disjunctionHeader.MatchString(e.Msg) {
			out = append(out, e)
			continue
		}
		// The branches follow the header, at the same path.
		j := i + 1
		for j < len(es) && es[j].Path == e.Path && !disjunctionHeader.MatchString(es[j].Msg) {
			j++
		}
		branches := es[i+1 : j]
		var allowed []string
		bad := ""
		for _, b := range branches {
			m := conflict.FindStringSubmatch(b.Msg)
			if m == nil || (bad != "" && m[2] != bad) {
				allowed = nil
				break
			}
			bad = m[2]
			allowed = append(allowed, m[1])
		}
		if len(allowed) == 0 || len(branches) == 0 {
			// Branches of different kinds: keep them, drop the header.
			out = append(out, branches...)
		} else {
			f := *branches[0]
			f.Msg = fmt.Sprintf("%s is not one of %s", bad, strings.Join(allowed, ", "))
			f.Also = ""
			out = append(out, &f)
		}
		i = j - 1
	}
	return out
}

// plainPos takes the position from a message such as the YAML parser's
// "apps/web.yaml:3: did not find expected key".
func plainPos(e *Error, file string) bool {
	if file == "" || !strings.HasPrefix(e.Msg, file+":") {
		return false
	}
	rest := e.Msg[len(file)+1:]
	i := strings.IndexByte(rest, ':')
	if i < 0 {
		return false
	}
	line, err := strconv.Atoi(rest[:i])
	if err != nil {
		return false
	}
	e.File, e.Line, e.Msg = file, line, strings.TrimSpace(rest[i+1:])
	return true
}

// errorAt makes an Error at the source position of v.
func errorAt(v cue.Value, fieldPath, msg string) *Error {
	e := &Error{Path: fieldPath, Msg: msg}
	if e.Path == "" {
		e.Path = fieldPath2(v.Path())
	}
	if p := v.Pos(); p.IsValid() && p.Filename() != schemaFile {
		setPos(e, p)
	}
	return e
}

func setPos(e *Error, p token.Pos) {
	e.File, e.Line, e.Column = p.Filename(), p.Line(), p.Column()
}

func posString(p token.Pos) string {
	return fmt.Sprintf("%s:%d:%d", p.Filename(), p.Line(), p.Column())
}

// fieldPath formats CUE path elements as apps.web.ports[0].host.
func fieldPath(elems []string) string {
	var b strings.Builder
	for _, el := range elems {
		if _, err := strconv.Atoi(el); err == nil {
			b.WriteString("[" + el + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strings.Trim(el, `"`))
	}
	return b.String()
}

func fieldPath2(p cue.Path) string {
	var elems []string
	for _, s := range p.Selectors() {
		switch s.Type() {
		case cue.IndexLabel:
			elems = append(elems, s.String())
		default:
			elems = append(elems, s.Unquoted())
		}
	}
	return fieldPath(elems)
}

// cleanMsg rewrites CUE's wording where it would puzzle someone who writes YAML.
func cleanMsg(s string) string {
	s = strings.ReplaceAll(s, "field not allowed", "unknown field")
	s = strings.Replace(s, "incomplete value", "missing value", 1)
	return s
}

// sortErrors orders errors by file, line and column, and drops exact repeats.
func sortErrors(es Errors) Errors {
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	out := es[:0]
	seen := map[string]bool{}
	for _, e := range es {
		k := e.Error()
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, e)
	}
	return out
}

// compareSemver compares two versions the schema accepted: -1, 0 or 1.
// Pre-releases sort before their release; build metadata is ignored.
func compareSemver(a, b string) int {
	pa, pb := splitSemver(a), splitSemver(b)
	for i := 0; i < 3; i++ {
		if pa.n[i] != pb.n[i] {
			if pa.n[i] < pb.n[i] {
				return -1
			}
			return 1
		}
	}
	switch {
	case pa.pre == pb.pre:
		return 0
	case pa.pre == "":
		return 1
	case pb.pre == "":
		return -1
	case pa.pre < pb.pre:
		return -1
	}
	return 1
}

type semver struct {
	n   [3]int
	pre string
}

func splitSemver(s string) semver {
	s = strings.TrimPrefix(s, "v")
	if i := strings.IndexByte(s, '+'); i >= 0 {
		s = s[:i]
	}
	var v semver
	if i := strings.IndexByte(s, '-'); i >= 0 {
		v.pre, s = s[i+1:], s[:i]
	}
	for i, part := range strings.SplitN(s, ".", 3) {
		v.n[i], _ = strconv.Atoi(part)
	}
	return v
}

// CompareVersions compares two semantic versions as releases order them: -1, 0 or 1.
func CompareVersions(a, b string) int { return compareSemver(a, b) }
