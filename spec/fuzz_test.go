package spec

import (
	"bytes"
	"errors"
	"os"
	"path"
	"strings"
	"testing"
	"testing/fstest"
)

// FuzzLoad feeds arbitrary bytes as a device, group or app file (YAML or CUE):
// the loader must never panic, and every error must name a file.
func FuzzLoad(f *testing.F) {
	for _, dir := range []string{"apps", "groups", "devices"} {
		entries, err := os.ReadDir(path.Join("../fleet-repo-example", dir))
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(path.Join("../fleet-repo-example", dir, e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(len(dir)), false, b)
		}
	}
	f.Add(uint8(0), true, []byte(`spec: apps: web: env: X: "1"`))
	f.Add(uint8(1), false, []byte("selector: {match_labels: {role: web}}\nspec: {hold: true}"))
	f.Add(uint8(2), false, []byte("- a\n- b\n"))
	f.Add(uint8(2), false, []byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, kind uint8, asCUE bool, data []byte) {
		fsys := base()
		name := []string{"devices/d1", "groups/web", "apps/web"}[int(kind)%3]
		ext := ".yaml"
		if asCUE {
			ext = ".cue"
		}
		delete(fsys, name+".yaml")
		fsys[name+ext] = &fstest.MapFile{Data: data}
		fl, err := Load(fsys)
		if err == nil {
			_, err = fl.Render("d1")
		}
		if err == nil {
			return
		}
		var errs Errors
		if !errors.As(err, &errs) {
			t.Fatalf("error is not spec.Errors: %v", err)
		}
		for _, e := range errs {
			if e.File == "" {
				t.Fatalf("error without a file: %v", e)
			}
		}
	})
}

// FuzzYAMLSyntax checks where a YAML syntax error is reported: on a line of
// the file, with every line above it valid YAML and the lines through it not
// (the rule in yamlsyntax.go), at a column inside that line.
func FuzzYAMLSyntax(f *testing.F) {
	for _, dir := range []string{"apps", "groups", "devices", "releases"} {
		entries, err := os.ReadDir(path.Join("../fleet-repo-example", dir))
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(path.Join("../fleet-repo-example", dir, e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	for _, s := range []string{
		"image:\n  ref: x\ncommand: [a, b\n",
		"image:\n  ref: x\ncommand: [a, b",
		"a:\n  b: 1\n c: 2\n",
		"a: \"x\nb: 1\n",
		"a:\n\tb: 1\n",
		"a: b: c\n",
		"- a\nb: 1\n",
		"a: {b: [1, {c: d}\n",
		"a: |\n  x\n y: 1\n",
		"*x\n",
		"\xff\xfe",
		"a: 'x\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e := yamlSyntaxError("f.yaml", data)
		if yamlValid(data) == nil {
			if e != nil {
				t.Fatalf("valid YAML reported as %v", e)
			}
			return
		}
		if e == nil || e.File != "f.yaml" || e.Msg == "" {
			t.Fatalf("invalid YAML reported as %v", e)
		}
		if e.Line == 0 && strings.Contains(e.Msg, "too large to locate") {
			return
		}
		lines := bytes.SplitAfter(data, []byte("\n"))
		if len(lines[len(lines)-1]) == 0 {
			lines = lines[:len(lines)-1]
		}
		if e.Line < 1 || e.Line > len(lines) {
			t.Fatalf("line %d of a %d-line file: %v", e.Line, len(lines), e)
		}
		if err := yamlValid(bytes.Join(lines[:e.Line-1], nil)); err != nil {
			t.Fatalf("%v: but the lines above it do not parse either: %v", e, err)
		}
		if err := yamlValid(bytes.Join(lines[:e.Line], nil)); err == nil {
			t.Fatalf("%v: but the lines through it parse", e)
		}
		if e.Column < 0 || e.Column > len(lines[e.Line-1]) {
			t.Fatalf("column %d of a %d-byte line: %v", e.Column, len(lines[e.Line-1]), e)
		}
	})
}
