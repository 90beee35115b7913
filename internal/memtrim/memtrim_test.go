//go:build linux && !nomemtrim

package memtrim

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestReadOnlyMappings(t *testing.T) {
	maps := `00400000-00fb8000 r-xp 00000000 fe:00 9986260                            /usr/bin/shoal-agent
00fb8000-01c27000 r--p 00bb8000 fe:00 9986260                            /usr/bin/shoal-agent
01c27000-01d0a000 rw-p 01827000 fe:00 9986260                            /usr/bin/shoal-agent
01d0a000-03d5a000 rw-p 00000000 00:00 0
7f00000000-7f00001000 r--p 00000000 fe:00 1234                           /usr/lib/other.so
7f00002000-7f00003000 r-xs 00000000 fe:00 9986260                            /usr/bin/shoal-agent
7f00004000-7f00005000 rwxp 00000000 fe:00 9986260                            /usr/bin/shoal-agent
7f00006000-7f00007000 r-xp 00000000 fe:00 77                             /opt/my agent/shoal-agent
garbage line
zz-yy r-xp 00000000 fe:00 9986260                            /usr/bin/shoal-agent
`
	tests := []struct {
		path string
		want []mapping
	}{
		{"/usr/bin/shoal-agent", []mapping{{0x400000, 0xfb8000}, {0xfb8000, 0x1c27000}}},
		{"/opt/my agent/shoal-agent", []mapping{{0x7f00006000, 0x7f00007000}}},
		{"/nonexistent", nil},
	}
	for _, tt := range tests {
		got := readOnlyMappings([]byte(maps), tt.path)
		if len(got) != len(tt.want) {
			t.Fatalf("%s: got %v, want %v", tt.path, got, tt.want)
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%s: mapping %d = %#x, want %#x", tt.path, i, got[i], tt.want[i])
			}
		}
	}
}

// TestReleaseDropsCodePages checks on this test binary that Release gives
// back file-backed pages and that the process runs on afterwards.
func TestReleaseDropsCodePages(t *testing.T) {
	before := rssFile(t)
	st, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	t.Logf("advised %d mappings, %d MiB; RssFile %d -> %d KiB", st.Mappings, st.Bytes>>20, before, after)
	if st.Mappings < 1 {
		t.Fatalf("no read-only mapping of the executable found")
	}
	if after >= before {
		t.Errorf("RssFile did not drop: %d -> %d KiB", before, after)
	}
	// Code runs again after its pages were released.
	if s := strings.Repeat("x", 3); s != "xxx" {
		t.Fatal("unreachable")
	}
}

func rssFile(t *testing.T) uint64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssFile:"); ok {
			n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}
