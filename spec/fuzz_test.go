package spec

import (
	"errors"
	"os"
	"path"
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
