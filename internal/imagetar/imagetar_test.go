package imagetar

import (
	"archive/tar"
	"bytes"
	"errors"
	"testing"
)

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(data))
	}
	tw.Close()
	return b.Bytes()
}

func TestRefsAndHolds(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		want    []string
		holds   []string
		notHeld []string
		err     error
	}{
		{"docker save", map[string]string{"manifest.json": `[{"Config":"c.json","RepoTags":["riverside/app:1.0","app:latest"],"Layers":[]}]`, "c.json": "{}"},
			[]string{"app:latest", "riverside/app:1.0"},
			[]string{"riverside/app:1.0", "riverside/app:1.0@sha256:" + "ab", "docker.io/library/app", "app"},
			[]string{"riverside/app:1.1", "other/app:1.0"}, nil},
		{"oci layout, full names", map[string]string{"oci-layout": `{"imageLayoutVersion":"1.0.0"}`,
			"index.json": `{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/riverside/app:2.0","org.opencontainers.image.ref.name":"2.0"}}]}`},
			[]string{"docker.io/riverside/app:2.0"}, []string{"riverside/app:2.0"}, []string{"riverside/app:2.1"}, nil},
		{"oci layout, bare tag", map[string]string{"./index.json": `{"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"3.0"}}]}`},
			[]string{"*:3.0"}, []string{"riverside/app:3.0"}, []string{"riverside/app:3.1"}, nil},
		{"untagged", map[string]string{"manifest.json": `[{"Config":"c.json","RepoTags":null}]`}, nil, nil, []string{"app:latest"}, nil},
		{"not an image", map[string]string{"hello.txt": "hi"}, nil, nil, nil, ErrNotImage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			refs, err := Refs(bytes.NewReader(tarOf(t, tc.files)))
			if !errors.Is(err, tc.err) || len(refs) != len(tc.want) {
				t.Fatalf("Refs = %q, %v; want %q, %v", refs, err, tc.want, tc.err)
			}
			for i := range refs {
				if refs[i] != tc.want[i] {
					t.Fatalf("Refs = %q, want %q", refs, tc.want)
				}
			}
			for _, r := range tc.holds {
				if !Holds(refs, r) {
					t.Errorf("%q not held by %q", r, refs)
				}
			}
			for _, r := range tc.notHeld {
				if Holds(refs, r) {
					t.Errorf("%q held by %q", r, refs)
				}
			}
		})
	}
	if _, err := Refs(bytes.NewReader([]byte("not a tar at all, just bytes"))); err == nil {
		t.Error("garbage accepted")
	}
}

func FuzzRefs(f *testing.F) {
	f.Add([]byte{})
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Size: 30, Mode: 0o644})
	tw.Write([]byte(`[{"RepoTags":["a/b:1","c:2"]}]`))
	tw.Close()
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		refs, err := Refs(bytes.NewReader(data))
		if err == nil {
			for _, r := range refs {
				Holds(refs, r)
			}
		}
	})
}
