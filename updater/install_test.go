package updater

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/shoalfleet/shoal/spec"
)

// imageServer serves one image over HTTP with Range support; the first
// cutAfter bytes of the first response are all it sends before dropping the connection.
type imageServer struct {
	*httptest.Server
	mu       sync.Mutex
	ranges   []string
	cutAfter int
	noRange  bool
}

func newImageServer(t *testing.T, img []byte, cutAfter int, noRange bool) *imageServer {
	s := &imageServer{cutAfter: cutAfter, noRange: noRange}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.ranges = append(s.ranges, r.Header.Get("Range"))
		cut := s.cutAfter
		s.cutAfter = 0
		s.mu.Unlock()
		if s.noRange {
			r.Header.Del("Range")
		}
		if cut > 0 {
			w.Header().Set("Content-Length", strconv.Itoa(len(img)))
			w.WriteHeader(http.StatusOK)
			w.Write(img[:cut])
			panic(http.ErrAbortHandler) // drop the connection mid-body
		}
		http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(img))
	}))
	t.Cleanup(s.Close)
	return s
}

// TestResumeHTTP: a download cut mid-way resumes with a Range request from the
// last checkpoint, with and without a chunk manifest; a server that ignores
// Range gets a full download.
func TestResumeHTTP(t *testing.T) {
	tests := []struct {
		name     string
		chunks   int
		noRange  bool
		wantFrom string
	}{
		// 700 KiB arrive: without a manifest all of them are kept (fsynced,
		// hash state saved); with 96 KiB chunks, the last whole verified chunk.
		{"sha256 state checkpoint", 0, false, "bytes=716800-"},
		{"chunk manifest", 96 << 10, false, "bytes=688128-"},
		{"server ignores range", 0, true, "bytes=716800-"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d := newDevice(t, "uboot")
			u := d.updater()
			img := randBytes(t, 1<<20+777)
			rel := d.release("1.1.0", img)
			if tc.chunks > 0 {
				rel.Chunks = chunkManifest(img, tc.chunks)
				d.sign(rel)
			}
			srv := newImageServer(t, img, 700<<10, tc.noRange)
			rel.URL = srv.URL + "/os.img?token=secret"

			st, err := u.Step(ctx, rel, spec.UpdatePolicy{}, pass)
			if err == nil || st.Phase != PhaseDownloading || st.Reason != ReasonDownload {
				t.Fatalf("cut download: %+v, %v", st, err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error leaks the URL's query: %v", err)
			}
			if st.Progress == nil || st.Progress.Bytes == 0 {
				t.Fatalf("no progress kept: %+v", st.Progress)
			}
			st, err = u.Step(ctx, rel, spec.UpdatePolicy{}, pass)
			if err != nil || st.Phase != PhaseRebooting {
				t.Fatalf("resumed download: %+v, %v", st, err)
			}
			srv.mu.Lock()
			got := srv.ranges
			srv.mu.Unlock()
			if len(got) != 2 || got[0] != "" || got[1] != tc.wantFrom {
				t.Fatalf("requests' Range headers %q, want [\"\" %q]", got, tc.wantFrom)
			}
			if !bytes.Equal(fileBytes(t, d.slots[SlotB])[:len(img)], img) {
				t.Fatal("slot b does not hold the image after a resume")
			}
		})
	}
}

// TestCompressedImages: gzip and zstd images are decompressed on the fly and
// verified against the uncompressed digest; a cut compressed download starts over.
func TestCompressedImages(t *testing.T) {
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}
	zs := func(b []byte) []byte {
		w, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
		return w.EncodeAll(b, nil)
	}
	tests := []struct {
		name     string
		compress func([]byte) []byte
		cut      bool
	}{
		{"gzip", gz, false},
		{"zstd", zs, false},
		{"zstd cut and restarted", zs, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d := newDevice(t, "grub")
			u := d.updater()
			// Compressible but not trivial: repeated random blocks.
			blk := randBytes(t, 4096)
			img := bytes.Repeat(blk, 300)
			rel := d.release("1.1.0", img)
			packed := tc.compress(img)
			cut := 0
			if tc.cut {
				cut = len(packed) / 2
			}
			srv := newImageServer(t, packed, cut, false)
			rel.URL = srv.URL + "/os.img.z"
			st, err := u.Step(ctx, rel, spec.UpdatePolicy{}, pass)
			if tc.cut {
				if err == nil {
					t.Fatal("cut compressed download succeeded")
				}
				st, err = u.Step(ctx, rel, spec.UpdatePolicy{}, pass)
				srv.mu.Lock()
				if srv.ranges[1] != "" {
					t.Fatalf("compressed resume sent Range %q; it must start over", srv.ranges[1])
				}
				srv.mu.Unlock()
			}
			if err != nil || st.Phase != PhaseRebooting {
				t.Fatalf("%+v, %v", st, err)
			}
			if !bytes.Equal(fileBytes(t, d.slots[SlotB])[:len(img)], img) {
				t.Fatal("slot b does not hold the decompressed image")
			}
		})
	}
}

func TestWindowState(t *testing.T) {
	ber := "Europe/Berlin"
	at := func(s string) time.Time {
		loc, _ := time.LoadLocation(ber)
		tm, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	night := spec.Window{Days: []string{"mon", "tue"}, Start: "23:00", End: "02:00", Timezone: ber}
	tests := []struct {
		name     string
		ws       []spec.Window
		now      string
		open     bool
		nextOpen string
	}{
		{"no windows", nil, "2026-03-02 12:00", true, ""},
		{"inside, same day", []spec.Window{{Start: "02:00", End: "04:00", Timezone: ber}}, "2026-03-02 03:00", true, ""},
		{"before, same day", []spec.Window{{Start: "02:00", End: "04:00", Timezone: ber}}, "2026-03-02 01:00", false, "2026-03-02 02:00"},
		{"after: next day", []spec.Window{{Start: "02:00", End: "04:00", Timezone: ber}}, "2026-03-02 04:00", false, "2026-03-03 02:00"},
		{"crosses midnight, after midnight", []spec.Window{night}, "2026-03-03 01:30", true, ""}, // started Monday 23:00
		{"crosses midnight, started on a day not listed", []spec.Window{night}, "2026-03-02 01:30", false, "2026-03-02 23:00"},
		{"wrong day: next Monday", []spec.Window{night}, "2026-03-04 23:30", false, "2026-03-09 23:00"},
		{"DST spring forward keeps wall clock", []spec.Window{{Start: "03:30", End: "05:00", Timezone: ber}}, "2026-03-29 04:00", true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			open, next, err := windowState(tc.ws, at(tc.now))
			if err != nil {
				t.Fatal(err)
			}
			if open != tc.open {
				t.Fatalf("open = %v, want %v", open, tc.open)
			}
			if tc.nextOpen != "" && !next.Equal(at(tc.nextOpen)) {
				t.Fatalf("next = %v, want %s", next.In(at(tc.now).Location()), tc.nextOpen)
			}
		})
	}
	if _, _, err := windowState([]spec.Window{{Start: "25:00", End: "01:00", Timezone: "UTC"}}, time.Now()); err == nil {
		t.Fatal("bad start accepted")
	}
	if _, _, err := windowState([]spec.Window{{Start: "01:00", End: "02:00", Timezone: "Mars/Olympus"}}, time.Now()); err == nil {
		t.Fatal("bad zone accepted")
	}
}

// TestWindowAndHold: outside the window the slot is written (when the policy
// allows) but the env and reboot wait; a hold stops new installs.
func TestWindowAndHold(t *testing.T) {
	ctx := context.Background()
	win := []spec.Window{{Start: "02:00", End: "04:00", Timezone: "UTC"}}
	t.Run("download outside, flip inside", func(t *testing.T) {
		d := newDevice(t, "uboot")
		u := d.updater()
		rel := d.release("1.1.0", randBytes(t, 50<<10))
		envBefore := fileBytes(t, d.envPath)
		pol := spec.UpdatePolicy{Windows: win, DownloadOutsideWindow: true}
		st, err := u.Step(ctx, rel, pol, pass)
		if err != nil || st.Phase != PhaseInstalled || st.Waiting != ReasonWindow || !strings.Contains(st.Message, "waiting for window") ||
			!st.NextWindow.Equal(time.Date(2026, 3, 5, 2, 0, 0, 0, time.UTC)) {
			t.Fatalf("outside the window: %+v, %v", st, err)
		}
		if d.rebooted != 0 || !bytes.Equal(fileBytes(t, d.envPath), envBefore) {
			t.Fatal("env written or reboot outside the window")
		}
		d.now = time.Date(2026, 3, 5, 2, 30, 0, 0, time.UTC)
		if st, err = u.Step(ctx, rel, pol, pass); err != nil || st.Phase != PhaseRebooting || d.rebooted != 1 {
			t.Fatalf("inside the window: %+v, %v", st, err)
		}
	})
	t.Run("download waits for the window", func(t *testing.T) {
		d := newDevice(t, "uboot")
		rel := d.release("1.1.0", randBytes(t, 50<<10))
		st, err := d.updater().Step(ctx, rel, spec.UpdatePolicy{Windows: win}, pass)
		if err != nil || st.Phase != PhaseIdle || st.Reason != ReasonWindow {
			t.Fatalf("%+v, %v", st, err)
		}
		if len(fileBytes(t, d.slots[SlotB])) != 0 {
			t.Fatal("slot written outside the window")
		}
	})
	t.Run("held", func(t *testing.T) {
		d := newDevice(t, "grub")
		u := d.updater()
		rel := d.release("1.1.0", randBytes(t, 50<<10))
		st, err := u.Step(ctx, rel, spec.UpdatePolicy{Hold: true}, pass)
		if err != nil || st.Phase != PhaseIdle || st.Waiting != ReasonHeld || !strings.Contains(st.Message, "held") || len(fileBytes(t, d.slots[SlotB])) != 0 {
			t.Fatalf("held: %+v, %v", st, err)
		}
		if st, err = u.Step(ctx, rel, spec.UpdatePolicy{}, pass); err != nil || st.Phase != PhaseRebooting {
			t.Fatalf("hold lifted: %+v, %v", st, err)
		}
	})
}

// countingEnv counts writes, to show each transition is at most one env write.
type countingEnv struct {
	inner interface {
		Load() (map[string]string, error)
		Save(map[string]string) error
	}
	saves int
}

func (c *countingEnv) Load() (map[string]string, error) { return c.inner.Load() }
func (c *countingEnv) Save(v map[string]string) error   { c.saves++; return c.inner.Save(v) }

func TestOneEnvWritePerTransition(t *testing.T) {
	for _, kind := range bootloaders {
		for _, healthy := range []bool{true, false} {
			name := kind + "/commit"
			if !healthy {
				name = kind + "/rollback"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				d := newDevice(t, kind)
				ce := &countingEnv{inner: d.env}
				o := d.options()
				o.Env = ce
				u, err := New(o)
				if err != nil {
					t.Fatal(err)
				}
				rel := d.release("1.1.0", randBytes(t, 50<<10))
				gate := pass
				if !healthy {
					gate = func(context.Context) error { return errors.New("unhealthy") }
				}
				pol := spec.UpdatePolicy{TrialTimeout: 1}
				var phases []Phase
				for i := range 4 {
					d.now = d.now.Add(time.Minute)
					ce.saves = 0
					st, _ := u.Step(ctx, rel, pol, gate)
					phases = append(phases, st.Phase)
					if ce.saves > 1 {
						t.Fatalf("step %d (%s) wrote the env %d times", i, st.Phase, ce.saves)
					}
					if d.rebooted > 0 {
						d.rebooted = 0
						d.boot()
					}
				}
				want := PhaseCommitted
				if !healthy {
					want = PhaseRolledBack
				}
				if !slices.Contains(phases, want) {
					t.Fatalf("phases %v", phases)
				}
			})
		}
	}
}
