package delta

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

// BenchmarkSplit: casync's chunker alone (buzhash, cut points), no hashing.
func BenchmarkSplit(b *testing.B) {
	img := testImage(7, 64<<20)
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if err := Split(bytes.NewReader(img), DefaultParams, func([]byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSHA256 is the baseline for BenchmarkSplit: hashing the same bytes.
func BenchmarkSHA256(b *testing.B) {
	img := testImage(7, 64<<20)
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		sha256.Sum256(img)
	}
}
