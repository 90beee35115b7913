package updater

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater/bootenv"
)

// The power-cut test runs the update in a child process (this test binary,
// re-executed) that kills itself with SIGKILL at fault point N: every state
// transition, every env write (before it, torn half-way for U-Boot, after it)
// and every checkpoint of the slot write. The parent then powers the device on
// as the bootloader would and runs the agent again, boot after boot, until the
// update converges. Every boot must start a slot holding a verified image,
// with an env both our code and the Debian tool read.

const (
	pcDir  = "SHOAL_POWERCUT_DIR"
	pcAt   = "SHOAL_POWERCUT_AT"
	pcKind = "SHOAL_POWERCUT_KIND"
	pcSick = "SHOAL_POWERCUT_UNHEALTHY"
)

func unhealthy(context.Context) error { return errors.New("container web: unhealthy") }

var pcPolicy = spec.UpdatePolicy{BootLimit: 3, TrialTimeout: spec.Duration(time.Minute)}

// faultCounter counts fault points across child processes in a file.
type faultCounter struct {
	path string
	at   int
}

// hit counts one fault point and reports whether the power goes out here.
func (c faultCounter) hit(point string) bool {
	if f, err := os.OpenFile(c.path+".log", os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
		fmt.Fprintln(f, point)
		f.Close()
	}
	n := 0
	if b, err := os.ReadFile(c.path); err == nil {
		n, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	n++
	if err := os.WriteFile(c.path, []byte(strconv.Itoa(n)), 0o644); err != nil {
		panic(err)
	}
	return n == c.at
}

func powerCut() {
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

// faultEnv is an env whose writes may be cut: before, torn half-way, or after.
type faultEnv struct {
	inner bootenv.Env
	c     faultCounter
	path  string // the file holding the env
	torn  bool   // whether a torn write is meaningful (U-Boot writes in place)
}

func (e *faultEnv) Load() (map[string]string, error) { return e.inner.Load() }

func (e *faultEnv) Save(v map[string]string) error {
	if e.c.hit("env:before") {
		powerCut()
	}
	if e.torn && e.c.hit("env:torn") {
		before, err := os.ReadFile(e.path)
		if err != nil {
			return err
		}
		if err := e.inner.Save(v); err != nil {
			return err
		}
		after, err := os.ReadFile(e.path)
		if err != nil {
			return err
		}
		first, last := -1, -1
		for i := range after {
			if after[i] != before[i] {
				if first < 0 {
					first = i
				}
				last = i
			}
		}
		if first >= 0 { // only the first half of the changed bytes reached the medium
			mid := first + (last-first+1)/2
			f, err := os.OpenFile(e.path, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			f.WriteAt(before[mid:last+1], int64(mid))
			f.Sync()
			f.Close()
		}
		powerCut()
	}
	if err := e.inner.Save(v); err != nil {
		return err
	}
	if e.c.hit("env:after") {
		powerCut()
	}
	return nil
}

// TestPowerCutChild is the child side: the entry point TestPowerCut execs.
// Run on its own it has no device to update and returns at once.
func TestPowerCutChild(t *testing.T) {
	dir := os.Getenv(pcDir)
	if dir == "" {
		return
	}
	at, _ := strconv.Atoi(os.Getenv(pcAt))
	d := &device{t: t, dir: dir, kind: os.Getenv(pcKind)}
	d.slots = map[string]string{SlotA: filepath.Join(dir, "slot-a.img"), SlotB: filepath.Join(dir, "slot-b.img")}
	d.openEnv()
	seed, err := os.ReadFile(filepath.Join(dir, "key"))
	if err != nil {
		t.Fatal(err)
	}
	d.key = ed25519.NewKeyFromSeed(seed)
	var rel spec.Release
	if err := json.Unmarshal(fileBytes(t, filepath.Join(dir, "release.json")), &rel); err != nil {
		t.Fatal(err)
	}
	c := faultCounter{path: filepath.Join(dir, "faults"), at: at}
	o := d.options()
	o.Env = &faultEnv{inner: d.env, c: c, path: d.envPath, torn: d.kind == "uboot"}
	o.Now = time.Now
	o.BootedSlot = func() (string, error) {
		return strings.TrimSpace(string(fileBytes(t, filepath.Join(dir, "booted")))), nil
	}
	o.BootID = func() (string, error) {
		return strings.TrimSpace(string(fileBytes(t, filepath.Join(dir, "bootid")))), nil
	}
	rebooted := false
	o.Rebooter = rebootFunc(func(context.Context) error {
		rebooted = true
		return os.WriteFile(filepath.Join(dir, "rebooted"), nil, 0o644)
	})
	u, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	u.fault = func(point string) {
		if c.hit(point) {
			powerCut()
		}
	}
	gate, pol := pass, pcPolicy
	if os.Getenv(pcSick) == "1" {
		gate, pol.TrialTimeout = unhealthy, 1
	}
	for range 4 {
		st, err := u.Step(context.Background(), &rel, pol, gate)
		if rebooted || (err == nil && st.Phase == PhaseCommitted) || errors.Is(err, ErrReleaseBad) {
			return
		}
		if err != nil && !errors.Is(err, ErrRolledBack) {
			t.Logf("step: %v", err)
		}
	}
}

// pcSetup builds a fresh device for one power-cut case. With withDelta the
// release comes with a chunk index and store, and the device runs an image
// it shares most chunks with.
func pcSetup(t *testing.T, kind string, withDelta bool) (*device, []byte) {
	d := newDevice(t, kind)
	img := randBytes(t, 1<<20+5000)
	rel := d.release("1.1.0", img)
	if withDelta {
		old := append(append([]byte(nil), img[:300<<10]...), randBytes(t, 200<<10)...)
		d.setFactory(append(old, img[500<<10:]...))
		rel, _ = d.deltaRelease("1.1.0", img)
	}
	b, _ := json.Marshal(rel)
	writeFile(t, filepath.Join(d.dir, "release.json"), b)
	writeFile(t, filepath.Join(d.dir, "key"), d.key.Seed())
	return d, img
}

// pcRun powers the device on and runs the agent until the update converges;
// it returns how many fault points the runs passed.
func pcRun(t *testing.T, d *device, img []byte, at int, sick bool) int {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cuts := 0
	for boot := 0; boot < 12; boot++ {
		if boot > 0 || d.bootN > 0 {
			d.boot() // checks the started slot verifies and the Debian tool reads the env
		} else {
			d.bootN++
		}
		writeFile(t, filepath.Join(d.dir, "booted"), []byte(d.booted))
		writeFile(t, filepath.Join(d.dir, "bootid"), []byte(fmt.Sprint("boot-", d.bootN)))
		os.Remove(filepath.Join(d.dir, "rebooted"))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, exe, "-test.run=^TestPowerCutChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), pcDir+"="+d.dir, pcAt+"="+strconv.Itoa(at), pcKind+"="+d.kind)
		if sick {
			cmd.Env = append(cmd.Env, pcSick+"=1")
		}
		out, err := cmd.CombinedOutput()
		cancel()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled():
			cuts++
			continue // power cut: the next loop is the next boot
		case err != nil:
			t.Fatalf("child: %v\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(d.dir, "rebooted")); err == nil {
			continue
		}
		st, err := loadState(filepath.Join(d.dir, "state", "update.json"))
		if err != nil {
			t.Fatal(err)
		}
		wantSlot := SlotB
		done := st != nil && st.Phase == PhaseCommitted && st.Committed.Version == "1.1.0"
		if sick {
			wantSlot = SlotA
			done = st != nil && st.Phase == PhaseRolledBack && st.Target != nil && st.Bad[st.Target.SHA256] != ""
		}
		if done {
			d.boot()
			if d.booted != wantSlot || d.readVars()[VarUpgrade] != "0" || d.toolGet(VarSlot) != wantSlot {
				t.Fatalf("converged state %s, but the next boot started %s with env %v", st.Phase, d.booted, d.readVars())
			}
			n, _ := strconv.Atoi(strings.TrimSpace(string(fileBytes(t, filepath.Join(d.dir, "faults")))))
			if at > 0 && cuts != 1 {
				t.Fatalf("fault point %d: %d power cuts happened, want 1", at, cuts)
			}
			return n
		}
	}
	st, _ := loadState(filepath.Join(d.dir, "state", "update.json"))
	t.Fatalf("fault point %d: no convergence after 12 boots; state %+v", at, st)
	return 0
}

func TestPowerCut(t *testing.T) {
	for _, tc := range []struct {
		kind  string
		sick  bool
		delta bool
	}{{"uboot", false, false}, {"uboot", true, false}, {"grub", false, false}, {"grub", true, false}, {"grub", false, true}} {
		kind, name := tc.kind, tc.kind+"/commit"
		if tc.sick {
			name = tc.kind + "/rollback"
		}
		if tc.delta {
			name += "/delta"
		}
		t.Run(name, func(t *testing.T) {
			d, img := pcSetup(t, kind, tc.delta)
			total := pcRun(t, d, img, 0, tc.sick)
			t.Logf("fault points: %s", strings.Join(strings.Fields(string(fileBytes(t, filepath.Join(d.dir, "faults.log")))), " "))
			if total < 10 {
				t.Fatalf("only %d fault points in a whole update", total)
			}
			safe := 0
			for at := 1; at <= total; at++ {
				ok := t.Run(fmt.Sprintf("cut-%02d", at), func(t *testing.T) {
					d, img := pcSetup(t, kind, tc.delta)
					pcRun(t, d, img, at, tc.sick)
				})
				if ok {
					safe++
				}
			}
			t.Logf("%s: %d of %d safe", name, safe, total)
			fmt.Printf("power cut (%s): %d of %d safe\n", name, safe, total)
			if safe != total {
				t.Fail()
			}
		})
	}
}
