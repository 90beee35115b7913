package provision

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"strings"
	"testing"
)

// fuzzKey is fixed so seeds signed with it stay valid across runs.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

// fuzzBundle makes a small well-formed bundle with the given members.
func fuzzBundle(tb testing.TB, members map[string][]byte, order []string) []byte {
	pub, _ := MarshalPublicKey(fuzzKey.Public().(ed25519.PublicKey))
	m := &Manifest{Version: FormatVersion, Seq: 1, Devices: []string{"dev-1"}, Commit: strings.Repeat("a", 40),
		Ref: "refs/heads/main", Trust: TrustRoots{BundleKeys: []string{string(pub)}}}
	for _, n := range order {
		kind := KindImage
		if strings.HasPrefix(n, "git/") {
			kind = KindGit
		}
		m.Members = append(m.Members, Member{Name: n, Kind: kind, Size: int64(len(members[n])), SHA256: sha(members[n])})
	}
	env, _, err := sign(m, fuzzKey)
	if err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	write := func(name string, b []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			tb.Fatal(err)
		}
		tw.Write(b)
	}
	write(EnvelopeName, env)
	for _, n := range order {
		write(n, members[n])
	}
	tw.Close()
	return buf.Bytes()
}

// FuzzReader feeds arbitrary bytes to the manifest and archive reader: it
// must never panic, and whatever it accepts must hold every member the
// signed manifest lists with the right hashes.
func FuzzReader(f *testing.F) {
	good := fuzzBundle(f, map[string][]byte{"git/fleet.bundle": []byte("# v2 git bundle\n"), "images/a.tar": []byte("image")},
		[]string{"git/fleet.bundle", "images/a.tar"})
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(fuzzBundle(f, map[string][]byte{"git/fleet.bundle": nil}, []string{"git/fleet.bundle"}))
	f.Add([]byte{})
	f.Add([]byte("not a tar"))
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1100] ^= 1
	f.Add(flipped)
	trusted := []ed25519.PublicKey{fuzzKey.Public().(ed25519.PublicKey)}
	f.Fuzz(func(t *testing.T, b []byte) {
		br, err := Verify(context.Background(), bytes.NewReader(b), trusted)
		if err != nil {
			return
		}
		if err := br.Manifest.Validate(); err != nil {
			t.Fatalf("accepted a manifest that does not validate: %v", err)
		}
		if br.next != len(br.Manifest.Members) {
			t.Fatalf("accepted with %d of %d members read", br.next, len(br.Manifest.Members))
		}
	})
}
