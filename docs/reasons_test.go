package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// troubleshooting is the guide's page of machine reasons. Each reason is the
// backquoted name in a "### " heading; one heading may name several.
const troubleshooting = "guide/troubleshooting.md"

// A reason is a stable machine reason the code can report, and where it is
// declared.
type reason struct {
	value string
	where []string // "pkg.ReasonName (file:line)"
}

// notShoal are the directories whose code the agent and the hub do not run.
var notShoal = map[string]bool{"examples": true, "bench": true, "demo": true, "lab": true}

// file is one parsed Go file and its path relative to the module root.
type file struct {
	rel string
	f   *ast.File
}

// codeReasons parses every non-test Go file of the module under root and
// returns the values of exported string constants whose names start with
// Reason (the convention for machine reasons, in every package), and the
// places where a string literal is used as a reason instead of such a
// constant.
func codeReasons(t *testing.T, root string) (map[string]*reason, []string) {
	t.Helper()
	pkgs := map[string][]file{} // by directory
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin" || name == "node_modules") {
				return filepath.SkipDir
			}
			// Not the agent's or the hub's: the example fleet's workloads,
			// benchmarks, the demo and the VM lab.
			if rel, _ := filepath.Rel(root, path); notShoal[filepath.ToSlash(rel)] {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution|parser.ParseComments)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		pkgs[filepath.Dir(rel)] = append(pkgs[filepath.Dir(rel)], file{filepath.ToSlash(rel), f})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]*reason{}
	var literals []string
	for _, files := range pkgs {
		if helper(files...) {
			continue // test helpers (storetest, testenv…) hold sample reports, not reasons
		}
		params := map[string]int{}
		for _, f := range files {
			reasonParams(f.f, params)
		}
		for _, f := range files {
			collectConsts(fset, f.f, f.rel, reasons)
			literals = append(literals, literalReasons(fset, f.f, f.rel, params)...)
		}
	}
	sort.Strings(literals)
	return reasons, literals
}

// helper reports whether a package is a test helper: one of its files
// imports "testing".
func helper(files ...file) bool {
	for _, f := range files {
		for _, im := range f.f.Imports {
			if im.Path.Value == `"testing"` {
				return true
			}
		}
	}
	return false
}

// reasonParams records, for every function and method of a file (and every
// function literal assigned to a name), the index of its parameter named
// reason or code, if it has one.
func reasonParams(f *ast.File, out map[string]int) {
	index := func(ft *ast.FuncType) int {
		i := 0
		for _, fl := range ft.Params.List {
			for _, n := range fl.Names {
				if n.Name == "reason" || n.Name == "code" {
					return i
				}
				i++
			}
			if len(fl.Names) == 0 {
				i++
			}
		}
		return -1
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.FuncDecl:
			if i := index(n.Type); i >= 0 {
				out[n.Name.Name] = i
			}
		case *ast.AssignStmt:
			for i, rhs := range n.Rhs {
				fl, ok := rhs.(*ast.FuncLit)
				if !ok || i >= len(n.Lhs) {
					continue
				}
				if id, ok := n.Lhs[i].(*ast.Ident); ok {
					if j := index(fl.Type); j >= 0 {
						out[id.Name] = j
					}
				}
			}
		}
		return true
	})
}

// reasonGroup matches the doc comment of a const group of reasons under
// other names ("Wait reasons: …", "Stable reasons of …").
var reasonGroup = regexp.MustCompile(`(?i)\breasons?\b`)

// collectConsts adds the exported string constants of f that are machine
// reasons: named Reason*, or in a const group whose doc comment calls them
// reasons.
func collectConsts(fset *token.FileSet, f *ast.File, rel string, reasons map[string]*reason) {
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		group := gd.Lparen.IsValid() && gd.Doc != nil && reasonGroup.MatchString(gd.Doc.Text())
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !(strings.HasPrefix(n.Name, "Reason") || group) || !n.IsExported() || i >= len(vs.Values) {
					continue
				}
				v, ok := stringLit(vs.Values[i])
				if !ok {
					continue
				}
				r := reasons[v]
				if r == nil {
					r = &reason{value: v}
					reasons[v] = r
				}
				r.where = append(r.where, f.Name.Name+"."+n.Name+" ("+filepath.ToSlash(rel)+":"+strconv.Itoa(fset.Position(n.Pos()).Line)+")")
			}
		}
	}
}

// reasonTypes are the types whose Reason or Code field carries a machine
// reason to the hub, the status page or a person.
var reasonTypes = map[string]bool{"Problem": true, "Error": true, "AppError": true, "ReceiptOutcome": true, "Receipt": true}

// literalReasons finds string literals (or strings built with +) used as a
// machine reason where a Reason constant belongs: in a Reason or Code field
// of reasonTypes, in a Reasons list, assigned to a variable named reason or a
// Code field, returned by a function named Reason, or passed to a parameter
// named reason or code of a function of the same package (params). Those
// would escape the troubleshooting check.
func literalReasons(fset *token.FileSet, f *ast.File, rel string, params map[string]int) []string {
	var out []string
	report := func(e ast.Expr, what string) {
		if !literalish(e) {
			return
		}
		out = append(out, filepath.ToSlash(rel)+":"+strconv.Itoa(fset.Position(e.Pos()).Line)+": "+what)
	}
	listOf := func(e ast.Expr, what string) {
		if cl, ok := e.(*ast.CompositeLit); ok {
			for _, el := range cl.Elts {
				report(el, what)
			}
		}
	}
	var inReason int // depth inside a func named Reason
	var walk func(n ast.Node) bool
	walk = func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.FuncDecl:
			if n.Name.Name == "Reason" && n.Body != nil {
				inReason++
				ast.Inspect(n.Body, walk)
				inReason--
				return false
			}
		case *ast.ReturnStmt:
			if inReason > 0 {
				for _, r := range n.Results {
					report(r, "a function named Reason returns a literal")
				}
			}
		case *ast.CompositeLit:
			typ := typeName(n.Type)
			for _, el := range n.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				switch {
				case key == nil:
				case key.Name == "Reasons":
					listOf(kv.Value, "a literal in a Reasons list")
				case (key.Name == "Reason" || key.Name == "Code") && reasonTypes[typ]:
					report(kv.Value, typ+"."+key.Name+" set to a literal")
				}
			}
		case *ast.AssignStmt:
			for i, lhs := range n.Lhs {
				if len(n.Rhs) != len(n.Lhs) || (n.Tok != token.ASSIGN && n.Tok != token.DEFINE) {
					break
				}
				switch l := lhs.(type) {
				case *ast.Ident:
					if l.Name == "reason" {
						report(n.Rhs[i], "a literal assigned to reason")
					}
				case *ast.SelectorExpr:
					switch l.Sel.Name {
					case "Code":
						report(n.Rhs[i], "a literal assigned to a Code field")
					case "Reasons":
						listOf(n.Rhs[i], "a literal in a Reasons list")
					}
				}
			}
		case *ast.CallExpr:
			name := typeName(n.Fun) // a function, or a method by its name
			// Only hyphenated literals here: a parameter named reason also
			// takes words and phrases for people (Trigger("poke"), a plan
			// action's "new app").
			if i, ok := params[name]; ok && i < len(n.Args) && fragment(n.Args[i]) && !plainWord(n.Args[i]) {
				report(n.Args[i], name+" called with a literal reason")
			}
		}
		return true
	}
	ast.Inspect(f, walk)
	return out
}

// reasonPart matches what a piece of a reason built with + looks like:
// "-failed", "image-".
var reasonPart = regexp.MustCompile(`^-?[a-z0-9]+(-[a-z0-9]+)*-?$`)

// literalish: a non-empty string literal, or a + expression with a piece of
// a reason in it ("-failed"; not ": ", which joins a reason to a message).
func literalish(e ast.Expr) bool {
	switch e := e.(type) {
	case *ast.BasicLit:
		v, ok := stringLit(e)
		return ok && v != ""
	case *ast.BinaryExpr:
		return e.Op == token.ADD && (fragment(e.X) || fragment(e.Y))
	case *ast.ParenExpr:
		return literalish(e.X)
	}
	return false
}

// plainWord: a string literal without a hyphen.
func plainWord(e ast.Expr) bool {
	v, ok := stringLit(e)
	return ok && !strings.Contains(v, "-")
}

func fragment(e ast.Expr) bool {
	if v, ok := stringLit(e); ok {
		return reasonPart.MatchString(v)
	}
	if b, ok := e.(*ast.BinaryExpr); ok {
		return literalish(b)
	}
	return false
}

func stringLit(e ast.Expr) (string, bool) {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	v, err := strconv.Unquote(bl.Value)
	return v, err == nil
}

func typeName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return e.Sel.Name
	}
	return ""
}

var headingReason = regexp.MustCompile("`([^`]+)`")

// documentedReasons returns the reasons named in the page's "### " headings,
// with their line numbers.
func documentedReasons(t *testing.T, path string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	inFence := false
	for i, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if inFence || !strings.HasPrefix(line, "### ") {
			continue
		}
		for _, m := range headingReason.FindAllStringSubmatch(line, -1) {
			out[m[1]] = i + 1
		}
	}
	return out
}

// TestTroubleshootingListsEveryReason fails when a machine reason exists in
// the code (an exported Reason* string constant in any package, or one in a
// const group documented as reasons) and is not
// explained in docs/guide/troubleshooting.md, when the page explains a
// reason the code no longer has, or when code reports a reason as a bare
// string literal that this test cannot see.
func TestTroubleshootingListsEveryReason(t *testing.T) {
	reasons, literals := codeReasons(t, "..")
	if len(reasons) < 50 {
		t.Fatalf("found only %d reasons in the code: the scan is broken", len(reasons))
	}
	for _, l := range literals {
		t.Errorf("%s: declare the machine reason as an exported Reason* string constant (and explain it in docs/%s)", l, troubleshooting)
	}
	doc := documentedReasons(t, troubleshooting)
	var values []string
	for v := range reasons {
		values = append(values, v)
	}
	sort.Strings(values)
	for _, v := range values {
		if _, ok := doc[v]; !ok {
			t.Errorf("reason %q (%s) is not explained in docs/%s: add a ### heading naming it in backquotes, what it means and what to do", v, strings.Join(reasons[v].where, ", "), troubleshooting)
			continue
		}
	}
	for v, line := range doc {
		if reasons[v] == nil {
			t.Errorf("docs/%s:%d: %q is not a reason any Reason* constant in the code has (renamed? removed?)", troubleshooting, line, v)
		}
	}
}
