package bootenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// ubootFixture creates an env file and a fw_env.config naming it, with one or two copies.
func ubootFixture(t *testing.T, redundant bool) (cfgPath string, env *UBoot, cfg UBootConfig) {
	t.Helper()
	dir := t.TempDir()
	dev := filepath.Join(dir, "env.bin")
	if err := os.WriteFile(dev, make([]byte, 0x10000), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg = UBootConfig{Copies: []Location{{Device: dev, Offset: 0x1000, Size: 0x2000}}}
	if redundant {
		cfg.Copies = append(cfg.Copies, Location{Device: dev, Offset: 0x8000, Size: 0x2000})
	}
	cfgPath = filepath.Join(dir, "fw_env.config")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseFwEnvConfig(strings.NewReader(cfg.String()))
	if err != nil {
		t.Fatal(err)
	}
	env, err = NewUBoot(parsed)
	if err != nil {
		t.Fatal(err)
	}
	return cfgPath, env, parsed
}

func fwTool(t *testing.T, name string) string {
	t.Helper()
	return testenv.LookPath(t, name, "libubootenv-tool")
}

// fwPrintenv returns every variable as fw_printenv -c prints it.
func fwPrintenv(t *testing.T, cfgPath string) map[string]string {
	t.Helper()
	out, err := exec.CommandContext(context.Background(), fwTool(t, "fw_printenv"), "-c", cfgPath).Output()
	if err != nil {
		t.Fatalf("fw_printenv: %v", err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if line == "" {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		vars[k] = v
	}
	return vars
}

func fwGet(t *testing.T, cfgPath, name string) string {
	t.Helper()
	out, err := exec.CommandContext(context.Background(), fwTool(t, "fw_printenv"), "-c", cfgPath, "-n", name).Output()
	if err != nil {
		t.Fatalf("fw_printenv -n %s: %v", name, err)
	}
	return strings.TrimSuffix(string(out), "\n")
}

func fwSetenv(t *testing.T, cfgPath string, args ...string) {
	t.Helper()
	def := filepath.Join(filepath.Dir(cfgPath), "default.env")
	if err := os.WriteFile(def, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(context.Background(), fwTool(t, "fw_setenv"), append([]string{"-c", cfgPath, "-f", def}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fw_setenv %v: %v: %s", args, err, out)
	}
}

var ubootCases = []struct {
	name string
	vars map[string]string
}{
	{"empty", map[string]string{}},
	{"slots", map[string]string{"shoal_slot": "b", "shoal_prev": "a", "upgrade_available": "1", "bootcount": "0", "bootlimit": "3"}},
	{"script", map[string]string{"altbootcmd": "setenv shoal_slot ${shoal_prev}; setenv upgrade_available 0; saveenv; run bootcmd", "bootargs": "console=ttyS0,115200 root=/dev/mmcblk0p2 rw"}},
	{"punctuation", map[string]string{"x": "a=b=c", "y": "é ü \t tab", "z_1.2-3": "#not a comment"}},
}

func TestUBootOursReadByFwPrintenv(t *testing.T) {
	for _, redundant := range []bool{false, true} {
		for _, tc := range ubootCases {
			t.Run(fmt.Sprintf("redundant=%v/%s", redundant, tc.name), func(t *testing.T) {
				cfgPath, env, _ := ubootFixture(t, redundant)
				// Two saves, so a redundant env has both copies valid and must pick the newer.
				if err := env.Save(map[string]string{"old": "1"}); err != nil {
					t.Fatal(err)
				}
				if err := env.Save(tc.vars); err != nil {
					t.Fatal(err)
				}
				got := fwPrintenv(t, cfgPath)
				if !maps.Equal(got, tc.vars) {
					t.Fatalf("fw_printenv read %v, we wrote %v", got, tc.vars)
				}
			})
		}
	}
}

func TestUBootFwSetenvReadByUs(t *testing.T) {
	for _, redundant := range []bool{false, true} {
		for _, tc := range ubootCases {
			if len(tc.vars) == 0 {
				continue
			}
			t.Run(fmt.Sprintf("redundant=%v/%s", redundant, tc.name), func(t *testing.T) {
				cfgPath, env, _ := ubootFixture(t, redundant)
				fwSetenv(t, cfgPath, "old", "1")
				fwSetenv(t, cfgPath, "old") // unset
				for k, v := range tc.vars {
					fwSetenv(t, cfgPath, k, v)
				}
				got, err := env.Load()
				if err != nil {
					t.Fatal(err)
				}
				if !maps.Equal(got, tc.vars) {
					t.Fatalf("we read %v, fw_setenv wrote %v", got, tc.vars)
				}
			})
		}
	}
}

// TestUBootRedundantFlag300 saves 300 times in a row, mostly with our code and
// every fifth time with fw_setenv, so the flag counter wraps past 255 more than
// once; after each save our current copy must be the one fw_printenv reads.
func TestUBootRedundantFlag300(t *testing.T) {
	cfgPath, env, _ := ubootFixture(t, true)
	wraps := 0
	var lastFlag byte
	for i := range 300 {
		want := strconv.Itoa(i)
		if i%5 == 4 {
			fwSetenv(t, cfgPath, "n", want)
		} else {
			vars, err := env.Load()
			if err != nil && i > 0 {
				t.Fatalf("save %d: load: %v", i, err)
			}
			if vars == nil {
				vars = map[string]string{}
			}
			vars["n"] = want
			if err := env.Save(vars); err != nil {
				t.Fatalf("save %d: %v", i, err)
			}
		}
		copies, err := env.readCopies()
		if err != nil {
			t.Fatal(err)
		}
		ours, cur, flag, err := DecodeUBoot(copies)
		if err != nil {
			t.Fatalf("save %d: decode: %v", i, err)
		}
		if flag < lastFlag {
			wraps++
		}
		lastFlag = flag
		theirs := fwGet(t, cfgPath, "n")
		if ours["n"] != want || theirs != want {
			t.Fatalf("save %d: we read n=%q from copy %d (flag %#x), fw_printenv read n=%q; want %q", i, ours["n"], cur, flag, theirs, want)
		}
	}
	if wraps < 1 {
		t.Fatalf("flag counter never wrapped in 300 saves")
	}
	t.Logf("300 saves, flag wrapped %d times, our choice matched fw_printenv every time", wraps)
}

// TestUBootCorruptCopy breaks the current copy's CRC: both readers fall back
// to the other copy, and the next save repairs the broken one.
func TestUBootCorruptCopy(t *testing.T) {
	cfgPath, env, cfg := ubootFixture(t, true)
	for _, v := range []string{"1", "2"} {
		if err := env.Save(map[string]string{"v": v}); err != nil {
			t.Fatal(err)
		}
	}
	cur, err := env.Current()
	if err != nil {
		t.Fatal(err)
	}
	loc := cfg.Copies[cur]
	f, err := os.OpenFile(loc.Device, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{'X'}, loc.Offset+6); err != nil { // inside "v=2"
		t.Fatal(err)
	}
	f.Close()
	got, err := env.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got["v"] != "1" || fwGet(t, cfgPath, "v") != "1" {
		t.Fatalf("after corrupting copy %d: we read %v, fw_printenv %q; want the good copy v=1", cur, got, fwGet(t, cfgPath, "v"))
	}
	if err := env.Save(map[string]string{"v": "3"}); err != nil {
		t.Fatal(err)
	}
	copies, err := env.readCopies()
	if err != nil {
		t.Fatal(err)
	}
	_, now, _, err := DecodeUBoot(copies)
	if err != nil || now != cur {
		t.Fatalf("save after corruption wrote copy %d (err %v), want the broken copy %d repaired", now, err, cur)
	}
	if fwGet(t, cfgPath, "v") != "3" {
		t.Fatalf("fw_printenv does not read the repaired copy")
	}
}

func TestParseFwEnvConfig(t *testing.T) {
	tests := []struct {
		name, in string
		want     []Location
		wantErr  bool
	}{
		{"single", "/dev/mmcblk0 0x3fe000 0x2000\n", []Location{{Device: "/dev/mmcblk0", Offset: 0x3fe000, Size: 0x2000}}, false},
		{"redundant with comments", "# comment\n/dev/mmcblk0 0x3fe000 0x2000 0x200 16\n\n/dev/mmcblk0 4186112 2000\n",
			[]Location{{Device: "/dev/mmcblk0", Offset: 0x3fe000, Size: 0x2000, SectorSize: 0x200, Sectors: 0x16}, {Device: "/dev/mmcblk0", Offset: 4186112, Size: 0x2000}}, false},
		{"size is hex without 0x", "/f 0 4000\n", []Location{{Device: "/f", Size: 0x4000}}, false},
		{"missing size", "/dev/mmcblk0 0x0\n", nil, true},
		{"sizes differ", "/f 0 0x2000\n/f 0x4000 0x1000\n", nil, true},
		{"empty", "# nothing\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseFwEnvConfig(strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && fmt.Sprint(cfg.Copies) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", cfg.Copies, tc.want)
			}
		})
	}
}

// TestUBootLockShared takes the lock file fw_setenv takes, with fw_setenv
// writing through the same env in between.
func TestUBootLockShared(t *testing.T) {
	cfgPath, _, cfg := ubootFixture(t, true)
	cfg.LockPath = filepath.Join(t.TempDir(), "lock", "fw_printenv.lock")
	env, err := NewUBoot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Save(map[string]string{"a": "1"}); err != nil {
		t.Fatal(err)
	}
	fwSetenv(t, cfgPath, "b", "2")
	got, err := env.Load()
	if err != nil || !maps.Equal(got, map[string]string{"a": "1", "b": "2"}) {
		t.Fatalf("after our save and fw_setenv: %v, %v", got, err)
	}
}

func TestUBootTooLarge(t *testing.T) {
	_, err := EncodeUBoot(map[string]string{"x": strings.Repeat("y", 100)}, 64, true, 0)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if _, err := EncodeUBoot(map[string]string{"a=b": "c"}, 64, false, 0); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("err = %v, want ErrInvalidName", err)
	}
}

func grubTool(t *testing.T) string {
	t.Helper()
	return testenv.LookPath(t, "grub-editenv", "grub-common")
}

var grubCases = []struct {
	name string
	vars map[string]string
}{
	{"empty", map[string]string{}},
	{"slots", map[string]string{"shoal_slot": "b", "shoal_prev": "a", "upgrade_available": "1", "bootcount": "2", "bootlimit": "3"}},
	{"escapes", map[string]string{"back": `a\b\\c`, "multi": "line1\nline2", "eq": "x=y", "hash": "#1"}},
}

func TestGRUBOursReadByGrubEditenv(t *testing.T) {
	tool := grubTool(t)
	for _, tc := range grubCases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "grubenv")
			if err := NewGRUB(path).Save(tc.vars); err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(path)
			if fi.Size() != GRUBBlockSize {
				t.Fatalf("block is %d bytes, want %d", fi.Size(), GRUBBlockSize)
			}
			out, err := exec.CommandContext(context.Background(), tool, path, "list").Output()
			if err != nil {
				t.Fatalf("grub-editenv list: %v", err)
			}
			// list prints values raw; rebuild what it should print.
			var want bytes.Buffer
			names, _ := sortedNames(tc.vars, "")
			for _, k := range names {
				fmt.Fprintf(&want, "%s=%s\n", k, tc.vars[k])
			}
			if string(out) != want.String() {
				t.Fatalf("grub-editenv list:\n%s\nwant:\n%s", out, want.String())
			}
			// And the tool accepts our block for writing.
			if out, err := exec.CommandContext(context.Background(), tool, path, "set", "added=1").CombinedOutput(); err != nil {
				t.Fatalf("grub-editenv set on our block: %v: %s", err, out)
			}
			got, err := NewGRUB(path).Load()
			if err != nil {
				t.Fatal(err)
			}
			want2 := maps.Clone(tc.vars)
			want2["added"] = "1"
			if !maps.Equal(got, want2) {
				t.Fatalf("after grub-editenv set: %v, want %v", got, want2)
			}
		})
	}
}

func TestGRUBEditenvReadByUs(t *testing.T) {
	tool := grubTool(t)
	for _, tc := range grubCases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "grubenv")
			if out, err := exec.CommandContext(context.Background(), tool, path, "create").CombinedOutput(); err != nil {
				t.Fatalf("grub-editenv create: %v: %s", err, out)
			}
			args := []string{path, "set"}
			for k, v := range tc.vars {
				args = append(args, k+"="+v)
			}
			if len(tc.vars) > 0 {
				if out, err := exec.CommandContext(context.Background(), tool, args...).CombinedOutput(); err != nil {
					t.Fatalf("grub-editenv set: %v: %s", err, out)
				}
			}
			got, err := NewGRUB(path).Load()
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.vars) {
				t.Fatalf("we read %v, grub-editenv wrote %v", got, tc.vars)
			}
		})
	}
}

func TestDecodeGRUBErrors(t *testing.T) {
	pad := func(s string) []byte { return []byte(s + strings.Repeat("#", 64)) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"no signature", pad("x=1\n")},
		{"no equals", pad(grubSignature + "novalue\n")},
		{"runs off", []byte(grubSignature + "x=1")},
		{"escape at end", []byte(grubSignature + `x=\`)},
		{"empty name", pad(grubSignature + "=1\n")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeGRUB(tc.in); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
		})
	}
}

func FuzzDecodeUBoot(f *testing.F) {
	one, _ := EncodeUBoot(map[string]string{"a": "1", "bootcmd": "run x"}, 64, false, 0)
	r0, _ := EncodeUBoot(map[string]string{"a": "1"}, 64, true, 0xff)
	r1, _ := EncodeUBoot(map[string]string{"a": "2"}, 64, true, 0)
	f.Add(one, false)
	f.Add(append(r0, r1...), true)
	f.Add([]byte{0, 0, 0, 0, 0}, false)
	f.Fuzz(func(t *testing.T, b []byte, redundant bool) {
		copies := [][]byte{b}
		if redundant {
			copies = [][]byte{b[:len(b)/2], b[len(b)/2:]}
		}
		vars, cur, flag, err := DecodeUBoot(copies)
		if err != nil {
			return
		}
		size := len(copies[cur])
		block, err := EncodeUBoot(vars, size, redundant, flag)
		if err != nil {
			return // a block U-Boot wrote may be full after our closing NUL
		}
		again, _, _, err := DecodeUBoot([][]byte{block, block}[:len(copies)])
		maps.DeleteFunc(vars, func(_, v string) bool { return v == "" }) // Save unsets empty values
		if err != nil || !maps.Equal(again, vars) {
			t.Fatalf("round trip: %v, %v != %v", err, again, vars)
		}
	})
}

func FuzzDecodeGRUB(f *testing.F) {
	seed, _ := EncodeGRUB(map[string]string{"a": `x\y`, "b": "1\n2"}, GRUBBlockSize)
	f.Add(seed)
	f.Add([]byte(grubSignature + "x=1\n#"))
	f.Add([]byte(grubSignature))
	f.Fuzz(func(t *testing.T, b []byte) {
		vars, err := DecodeGRUB(b)
		if err != nil {
			return
		}
		block, err := EncodeGRUB(vars, len(b)+len(grubWarning))
		if err != nil {
			return
		}
		again, err := DecodeGRUB(block)
		maps.DeleteFunc(vars, func(_, v string) bool { return v == "" }) // Save unsets empty values
		if err != nil || !maps.Equal(again, vars) {
			t.Fatalf("round trip: %v, %v != %v", err, again, vars)
		}
	})
}

func FuzzParseFwEnvConfig(f *testing.F) {
	f.Add("/dev/mmcblk0 0x3fe000 0x2000\n/dev/mmcblk0 0x400000 0x2000\n")
	f.Add("# c\n/f 010 4000 200 2\n")
	f.Add("/f -1 0x0\n")
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := ParseFwEnvConfig(strings.NewReader(s))
		if err != nil {
			return
		}
		again, err := ParseFwEnvConfig(strings.NewReader(cfg.String()))
		if err != nil || fmt.Sprint(again.Copies) != fmt.Sprint(cfg.Copies) {
			t.Fatalf("round trip of %q: %v, %v != %v", s, err, again.Copies, cfg.Copies)
		}
	})
}
