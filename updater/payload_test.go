package updater

import (
	"testing"
	"time"

	"github.com/shoalfleet/shoal/spec"
)

// TestSignedPayloadGolden pins the signed payload byte for byte: changing it
// invalidates every signed release in every fleet. The chunks digest is
// printf '11\n22\n' | sha256sum.
func TestSignedPayloadGolden(t *testing.T) {
	rel := &spec.Release{
		Name: "os-2", Version: "2.0.0", MinVersion: "1.5.0", URL: "https://ignored.example/os.img",
		Size: 1048576, SHA256: "AB" + "cd0000000000000000000000000000000000000000000000000000000000",
		Built:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)),
		PCRs:   map[string]string{"10": "EE", "7": "aa", "0": "01"},
		Chunks: &spec.ChunkManifest{Size: 524288, SHA256: []string{"11", "22"}},
	}
	want := "shoal-release-v1\n" +
		"version=2.0.0\n" +
		"min-version=1.5.0\n" +
		"size=1048576\n" +
		"sha256=abcd0000000000000000000000000000000000000000000000000000000000\n" +
		"chunk-size=524288\n" +
		"chunks-sha256=78b2f295ac05dfd8027e38cfee97a6932a1b4480e4528333a8d78ce9031e7f35\n" +
		"built=2026-01-02T02:04:05Z\n" +
		"pcrs=0=01,7=aa,10=ee\n"
	if got := string(SignedPayload(rel)); got != want {
		t.Fatalf("payload:\n%s\nwant:\n%s", got, want)
	}
}

// TestSignedPayloadV2Golden: a release with a delta signs v2, which adds the
// index's digest; the index and store locations are not signed.
func TestSignedPayloadV2Golden(t *testing.T) {
	rel := &spec.Release{
		Version: "2.0.0", Size: 10, SHA256: "ab",
		Delta: &spec.Delta{Index: "https://ignored.example/os.caibx", Store: "https://ignored.example/store/", SHA256: "CD01"},
	}
	want := "shoal-release-v2\n" +
		"version=2.0.0\n" +
		"min-version=\n" +
		"size=10\n" +
		"sha256=ab\n" +
		"chunk-size=0\n" +
		"chunks-sha256=\n" +
		"built=\n" +
		"pcrs=\n" +
		"delta-index-sha256=cd01\n"
	if got := string(SignedPayload(rel)); got != want {
		t.Fatalf("payload:\n%s\nwant:\n%s", got, want)
	}
}
