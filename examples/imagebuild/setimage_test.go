package main

import (
	"strings"
	"testing"
)

func TestSetImage(t *testing.T) {
	const sum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cases := []struct {
		name, in, want, err string
	}{
		{"adds the source block",
			"# Reads sensors.\nimage:\n  ref: old/name:1  # was pulled\ncommand: [\"--x\"]\n",
			"# Reads sensors.\nimage:\n  ref: ex/app:2\n  source:\n    path: images/app.tar\n    sha256: " + sum + "\ncommand: [\"--x\"]\n", ""},
		{"replaces the source block",
			"image:\n  ref: ex/app:1\n  source:\n    path: images/old.tar\n    sha256: " + strings.Repeat("0", 64) + "\nrestart: always\n",
			"image:\n  ref: ex/app:2\n  source:\n    path: images/app.tar\n    sha256: " + sum + "\nrestart: always\n", ""},
		{"completes a partial source block",
			"image:\n  source:\n    sha256: " + strings.Repeat("0", 64) + "\n  ref: ex/app:1\n",
			"image:\n  source:\n    path: images/app.tar\n    sha256: " + sum + "\n  ref: ex/app:2\n", ""},
		{"comments and blank lines inside the block", "image:\n  # the app\n\n  ref: a:1\n\nports: []\n",
			"image:\n  # the app\n\n  ref: ex/app:2\n  source:\n    path: images/app.tar\n    sha256: " + sum + "\n\nports: []\n", ""},
		{"no image block", "command: [\"x\"]\n", "", "no image block"},
		{"no ref", "image:\n  source:\n    path: x\n", "", "no image.ref"},
		{"a url source", "image:\n  ref: a:1\n  source:\n    url: https://x/a.tar\n    sha256: " + sum + "\n", "", "url"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := setImage([]byte(tc.in), "ex/app:2", "images/app.tar", sum)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}
