package reconcile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/spec"
)

// FuzzJSONStream: the Engine's JSON message streams (pull, load) never panic the
// reader, and an error message in them is returned.
func FuzzJSONStream(f *testing.F) {
	f.Add(`{"status":"Loading layer"}` + "\n" + `{"stream":"Loaded image: a:1\n"}`)
	f.Add(`{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}`)
	f.Add(`{"status":`)
	f.Add(``)
	f.Fuzz(func(t *testing.T, s string) {
		err := jsonStreamErr(strings.NewReader(s))
		if strings.Contains(s, `"error":"manifest unknown"`) && strings.HasPrefix(s, `{"errorDetail"`) && err == nil {
			t.Fatal("error in stream not returned")
		}
	})
}

// FuzzImageRecord: a damaged images.json is an error, never a panic or a silent empty record.
func FuzzImageRecord(f *testing.F) {
	f.Add(`{"version":1,"images":{"a:1":{"sha256":"ab","id":"sha256:x"}}}`)
	f.Add(`{"version":2}`)
	f.Add(`not json`)
	f.Fuzz(func(t *testing.T, s string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "images.json"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		st := &imageStore{dir: dir}
		m, err := st.read()
		if err == nil && m == nil {
			t.Fatal("nil record without error")
		}
	})
}

// FuzzContainerConfig: any devices, ports, volumes or restart value from a spec
// becomes a create request or an error naming the field, never a panic.
func FuzzContainerConfig(f *testing.F) {
	f.Add("/dev/null:/dev/x:rw", 80, 8080, "tcp", "bind", "/srv", "always")
	f.Add("relative", -1, 70000, "sctp", "tmpfs", "rel", "sometimes")
	f.Add("/a:/b:/c:/d", 0, 0, "", "", "", "")
	f.Fuzz(func(t *testing.T, device string, host, ctr int, proto, vtype, vsrc, restart string) {
		r, err := New(nil, Options{})
		if err != nil {
			t.Fatal(err)
		}
		app := &spec.App{Name: "a", Image: spec.Image{Ref: "x"}, Devices: []string{device}, Restart: restart,
			Ports:   []spec.Port{{Host: host, Container: ctr, Protocol: proto}},
			Volumes: []spec.Volume{{Type: vtype, Source: vsrc, Target: "/t"}}}
		_, _, _, err = r.containerConfig(&spec.Device{Network: "n"}, app)
		var fe *fieldError
		if err != nil && !errors.As(err, &fe) {
			t.Fatalf("error without a field: %v", err)
		}
	})
}
