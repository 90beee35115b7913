package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestValidateImageTars: `shoal validate` checks the image tars a fleet repo
// holds, here one written by the real Docker Engine (docker save) and one OCI
// image layout: a tar with another sha256, without the ref's tag, or missing
// is an error at the app file's line.
func TestValidateImageTars(t *testing.T) {
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	tag := "shoal-validate-test/app:" + label[len(label)-12:]
	dockertest.Image(t, cli, tag, label, nil)
	rc, err := cli.ImageSave(t.Context(), []string{tag})
	if err != nil {
		t.Fatal(err)
	}
	saved, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	// An OCI image layout naming its image with the containerd annotation.
	var oci bytes.Buffer
	tw := tar.NewWriter(&oci)
	for name, data := range map[string]string{
		"oci-layout": `{"imageLayoutVersion":"1.0.0"}`,
		"index.json": `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("0", 64) +
			`","size":1,"annotations":{"io.containerd.image.name":"docker.io/riverside/oci-app:2.0","org.opencontainers.image.ref.name":"2.0"}}]}`,
	} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write([]byte(data))
	}
	tw.Close()
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	app := func(ref, path, sha string) string {
		return "# an app loaded from a tar in the repo\nimage:\n  ref: " + ref + "\n  source:\n    path: " + path + "\n    sha256: " + sha + "\n"
	}
	tests := []struct {
		name  string
		app   string
		wants []string
	}{
		{"docker save tar", app(tag, "images/app.tar", sum(saved)), nil},
		{"oci layout", app("riverside/oci-app:2.0", "images/oci.tar", sum(oci.Bytes())), nil},
		{"wrong sha256", app(tag, "images/app.tar", strings.Repeat("a", 64)),
			[]string{"apps/metrics-exporter.yaml:6:5: image.source.sha256: images/app.tar has sha256 " + sum(saved) + ", not " + strings.Repeat("a", 64)}},
		{"tag not in the tar", app("riverside/other:9", "images/app.tar", sum(saved)),
			[]string{"apps/metrics-exporter.yaml:3:3: image.ref: images/app.tar does not hold riverside/other:9 (it holds " + tag + ")", "docker save -o images/app.tar riverside/other:9"}},
		{"missing tar", app(tag, "images/gone.tar", sum(saved)),
			[]string{"apps/metrics-exporter.yaml:5:5: image.source.path: images/gone.tar: no such file in the fleet repo"}},
		{"not an image tar", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := testenv.ExampleFleet(t, "../../fleet-repo-example")
			os.MkdirAll(filepath.Join(dir, "images"), 0o755)
			os.WriteFile(filepath.Join(dir, "images/app.tar"), saved, 0o644)
			os.WriteFile(filepath.Join(dir, "images/oci.tar"), oci.Bytes(), 0o644)
			data := tc.app
			if tc.name == "not an image tar" {
				readme, _ := os.ReadFile(filepath.Join(dir, "README.md"))
				data = app(tag, "README.md", sum(readme))
				tc.wants = []string{"apps/metrics-exporter.yaml:5:5: image.source.path: README.md: not an image tar"}
			}
			if err := os.WriteFile(filepath.Join(dir, "apps/metrics-exporter.yaml"), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, errs := shoal(t, "validate", dir)
			if len(tc.wants) == 0 {
				if code != 0 {
					t.Fatalf("exit %d\n%s%s", code, out, errs)
				}
				return
			}
			if code != 1 {
				t.Fatalf("exit %d, want 1\n%s%s", code, out, errs)
			}
			for _, w := range tc.wants {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
		})
	}
}
