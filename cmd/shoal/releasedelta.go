package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/updater/delta"
)

func newReleaseDeltaCmd() *cobra.Command {
	var (
		image, store, index, indexURL, storeURL, chunkSize, from, keyFile string
		sha512                                                            bool
	)
	cmd := &cobra.Command{
		Use:   "delta --image IMAGE --store DIR releases/NAME.yaml",
		Short: "Make a release's chunk index and chunk store (casync format) and write its delta",
		Long: `delta cuts the release's image into content-defined chunks as casync does,
writes every chunk the store directory lacks (zstd .cacnk files, casync's
layout), writes the chunk index (.caibx), and writes the release file's
delta block: where the index and the store are, and the index's sha256.
Devices then fetch only the chunks their running slot lacks, each checked.

IMAGE is the image as written to a slot (raw; a zstd or gzip file is
decompressed on the way); its size and sha256 must be the release file's.
The store may already hold other releases' chunks: it grows, and chunks
already there are checked, not written again. Publish the index and the
store where devices reach them (--index-url, --store-url; by default the
paths as given, which a fleet repo may hold relative to its root).

With --from OLD.caibx (the index of the release devices run now) it prints
how much a device running it will fetch. The delta block changes what the
signature covers: sign again, or give --key to sign at once.

The index and store are casync's own: casync extract --store=DIR INDEX OUT
rebuilds the image, and casync make --digest=sha256 makes the same index.

Exit codes: 0 written, 1 invalid release, image or key, 2 usage error.`,
		Example: `  shoal release delta --image out/os-1.4.0.img --store site/store \
      --index site/os-1.4.0.caibx --index-url https://updates.example/os-1.4.0.caibx \
      --store-url https://updates.example/store/ --from site/os-1.3.0.caibx \
      --key release-key.pem releases/os-1.4.0.yaml`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if image == "" || store == "" {
				return usageError{errors.New("--image and --store are required")}
			}
			params := delta.DefaultParams
			if chunkSize != "" {
				var err error
				if params, err = delta.ParseParams(chunkSize); err != nil {
					return usageError{fmt.Errorf("--chunk-size: %w", err)}
				}
			}
			var key crypto.Signer
			if keyFile != "" {
				var err error
				if key, err = readSigner(keyFile); err != nil {
					return err
				}
			}
			path := args[0]
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if !signatureLine.Match(data) {
				data = append(data, []byte("\nsignature: unsigned\n")...)
			}
			rel, err := loadReleaseFile(cmd, path, data)
			if err != nil {
				return err
			}
			if index == "" {
				index = strings.TrimSuffix(image, filepath.Ext(image)) + ".caibx"
			}
			res, err := makeDelta(cmd, image, store, params, sha512)
			if err != nil {
				return err
			}
			size, sum := res.Index.Size(), hex.EncodeToString(res.SHA256[:])
			if size != rel.Size || !strings.EqualFold(sum, rel.SHA256) {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: the image has %d bytes and sha256 %s; the release says %d and %s\n", image, size, sum, rel.Size, rel.SHA256)
				return silentError{exitInvalid}
			}
			b, err := res.Index.MarshalBinary()
			if err != nil {
				return err
			}
			if err := atomicfile.WriteFile(index, b, 0o644); err != nil {
				return err
			}
			idxSum := sha256.Sum256(b)
			if indexURL == "" {
				indexURL = index
			}
			if storeURL == "" {
				storeURL = store
			}
			out := setDeltaBlock(data, indexURL, hex.EncodeToString(idxSum[:]), storeURL)
			if _, err := loadReleaseFile(cmd, path, out); err != nil {
				return err
			}
			if err := atomicfile.WriteFile(path, out, 0o644); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: %d bytes in %d chunks (%s, %s); %d new in %s (%d bytes stored), %d there already\n",
				image, size, len(res.Index.Chunks), params.String(), res.Index.Digest(), res.New, store, res.Stored, res.Reused)
			fmt.Fprintf(w, "index %s (sha256 %x)\n", index, idxSum)
			if from != "" {
				if err := printDeltaFrom(w, from, res.Index, store); err != nil {
					return err
				}
			}
			if key != nil {
				if _, err := signReleaseFile(cmd, path, key); err != nil {
					return err
				}
				fmt.Fprintf(w, "wrote the delta into %s and signed it (version %s)\n", path, rel.Version)
				return nil
			}
			fmt.Fprintf(w, "wrote the delta into %s; sign it: shoal release sign --key KEY.pem %s\n", path, path)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "the release's image, as written to a slot (zstd or gzip files are decompressed)")
	f.StringVar(&store, "store", "", "chunk store directory: new chunks are added to it")
	f.StringVar(&index, "index", "", "where to write the chunk index (default: IMAGE with .caibx for its extension)")
	f.StringVar(&indexURL, "index-url", "", "the index's location for devices: URL or path (default: --index)")
	f.StringVar(&storeURL, "store-url", "", "the store's location for devices: URL or directory (default: --store)")
	f.StringVar(&chunkSize, "chunk-size", "", "chunk sizes MIN:AVG:MAX or AVG, as casync --chunk-size (default 16K:64K:256K)")
	f.BoolVar(&sha512, "sha512-256", false, "SHA-512/256 chunk IDs (casync's default digest) instead of SHA-256")
	f.StringVar(&from, "from", "", "index of the release devices run now: print what they will fetch")
	f.StringVar(&keyFile, "key", "", "sign the release file too, with this private key (PEM, PKCS #8)")
	return cmd
}

// makeDelta cuts the image at path into the store.
func makeDelta(cmd *cobra.Command, path, store string, p delta.Params, sha512 bool) (*delta.MakeResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	head, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		r = zr
	}
	res, err := delta.Make(cmd.Context(), r, store, delta.MakeOptions{Params: p, SHA512256: sha512})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}

// printDeltaFrom says how much a device whose slot holds the image indexed
// by from fetches: the chunks of x it lacks, uncompressed and as stored.
func printDeltaFrom(w io.Writer, from string, x *delta.Index, store string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	old, err := delta.ParseIndex(b)
	if err != nil {
		return fmt.Errorf("%s: %w", from, err)
	}
	have := map[delta.ID]bool{}
	if old.Flags&delta.FlagSHA512256 == x.Flags&delta.FlagSHA512256 {
		for _, c := range old.Chunks {
			have[c.ID] = true
		}
	}
	var n int
	var raw, stored int64
	for _, c := range x.Chunks {
		if have[c.ID] {
			continue
		}
		have[c.ID] = true
		n++
		raw += c.Size
		if fi, err := os.Stat(filepath.Join(store, filepath.FromSlash(delta.ChunkPath(c.ID)))); err == nil {
			stored += fi.Size()
		}
	}
	fmt.Fprintf(w, "a device running %s fetches %d chunks: %d bytes stored (%d uncompressed, %.1f%% of the image)\n",
		from, n, stored, raw, 100*float64(raw)/float64(x.Size()))
	return nil
}

// deltaBlock matches a release file's top-level delta block.
var deltaBlock = regexp.MustCompile(`(?m)^delta:[^\n]*\n(?:[ \t]+[^\n]*\n|[ \t]*\n)*`)

// setDeltaBlock writes the delta block into a release file, replacing the
// one it has; comments and the rest of the file stay as they are.
func setDeltaBlock(data []byte, index, sum, store string) []byte {
	block := fmt.Sprintf("delta:\n  index: %s\n  sha256: \"%s\"\n  store: %s\n", yamlString(index), sum, yamlString(store))
	if !bytes.HasSuffix(data, []byte("\n")) {
		data = append(data, '\n')
	}
	if loc := deltaBlock.FindIndex(data); loc != nil {
		return append(append(append([]byte(nil), data[:loc[0]]...), block...), data[loc[1]:]...)
	}
	return append(data, block...)
}

// yamlString quotes s when YAML would read it as something else.
func yamlString(s string) string {
	if s == "" || strings.ContainsAny(s, ": #'\"{}[],&*!|>%@`") {
		return fmt.Sprintf("%q", s)
	}
	return s
}
