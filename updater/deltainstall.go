package updater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/shoalfleet/shoal/internal/atomicfile"
	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater/delta"
)

// Machine reasons of installs from a chunk index. The first three are
// failures (Status.Reason); the Full* ones say why an install downloads the
// whole image although its release has a delta (DeltaStatus.Why).
const (
	// ReasonDeltaIndex: the index's sha256 is not the one the release
	// signs, or the index is not a casync blob index of the image.
	ReasonDeltaIndex = "delta-index-invalid"
	// ReasonChunksBad: every store served a chunk that did not match its
	// ID, again and again. The install stops; the env is not touched.
	ReasonChunksBad = "delta-chunks-bad"
	// ReasonBudget: the install would download more than the policy's
	// budget, delta or full; it waits until the policy or release changes.
	ReasonBudget = "download-over-budget"

	ReasonFullDisabled = "delta-disabled"       // the policy turns deltas off
	ReasonFullShare    = "delta-above-share"    // the delta fetches more than fallback_share of the image
	ReasonFullBudget   = "delta-above-budget"   // the delta is above the budget, the full download is not
	ReasonFullMissing  = "delta-chunks-missing" // no store has a chunk: the rest comes from the full image
)

// Delta modes.
const (
	ModeDelta = "delta"
	ModeFull  = "full"
)

// DeltaStatus says how an install of a release with a chunk index gets its
// image: the plan made before the first chunk is fetched, and what has come
// since. Bytes planned to fetch are the chunks' uncompressed sizes (the wire
// carries them compressed, so fewer); the full download is its real length.
type DeltaStatus struct {
	Mode    string `json:"mode"`          // ModeDelta or ModeFull
	Why     string `json:"why,omitempty"` // why full: a ReasonFull* constant
	Image   int64  `json:"image"`         // bytes of the image
	Fetch   int64  `json:"fetch"`         // bytes of the chunks to fetch
	Chunks  int    `json:"chunks"`        // chunks to fetch
	Full    int64  `json:"full"`          // bytes of the full image download
	Seeded  int64  `json:"seeded"`        // bytes taken from the active slot
	InPlace int64  `json:"inPlace"`       // bytes already in place in the target slot
	From    int64  `json:"from,omitempty"`
	Fetched int64  `json:"fetched"`           // bytes downloaded so far, as sent
	Refused int    `json:"refused,omitempty"` // chunks refused as bad and fetched again
	Budget  int64  `json:"budget,omitempty"`  // the policy's budget, if any
}

// Saved is the share of the full download a delta install does not fetch.
func (d *DeltaStatus) Saved() float64 {
	if d == nil || d.Mode != ModeDelta || d.Full <= 0 {
		return 0
	}
	return 1 - float64(d.Fetch)/float64(d.Full)
}

// Summary says in a line how the install gets its image, for a person.
func (d *DeltaStatus) Summary() string {
	var b strings.Builder
	if d.Mode == ModeDelta {
		fmt.Fprintf(&b, "delta: %s to fetch of %s for the full image (%.1f%% saved)", bytesIEC(d.Fetch), bytesIEC(d.Full), 100*d.Saved())
		if d.Seeded > 0 {
			fmt.Fprintf(&b, ", %s from the running slot", bytesIEC(d.Seeded))
		}
		if d.InPlace > 0 {
			fmt.Fprintf(&b, ", %s already in place", bytesIEC(d.InPlace))
		}
	} else {
		fmt.Fprintf(&b, "full image: %s", bytesIEC(d.Full))
		if d.Why != "" {
			fmt.Fprintf(&b, " (%s)", d.Why)
		}
	}
	if d.Fetched > 0 {
		fmt.Fprintf(&b, "; %s fetched", bytesIEC(d.Fetched))
	}
	if d.Refused > 0 {
		fmt.Fprintf(&b, "; %d bad chunks refused", d.Refused)
	}
	return b.String()
}

// errNoDelta sends an install to the full download; st.Delta says why.
var errNoDelta = errors.New("full download")

// deltaInstall installs st.Release from its chunk index into the target
// slot. It returns errNoDelta when the image should come whole instead. The
// first call of an install only plans and reports (unless through): the
// status says how many bytes the install will fetch before it fetches any.
func (u *Updater) deltaInstall(ctx context.Context, s *session, pol spec.UpdatePolicy) error {
	st := s.st
	rel := st.Release
	first := st.Delta == nil
	full := u.fullSize(ctx, rel)
	d := &DeltaStatus{Mode: ModeFull, Image: rel.Size, Full: full, Budget: int64(pol.Delta.Budget)}
	if st.Delta != nil {
		d.Fetched, d.Refused = st.Delta.Fetched, st.Delta.Refused
	}
	if !pol.Delta.On() {
		d.Why = ReasonFullDisabled
		return u.decided(s, d, first)
	}
	x, err := u.deltaIndex(ctx, rel)
	if err != nil {
		if errors.Is(err, ErrDeltaIndex) {
			st.Reason, st.Error = ReasonDeltaIndex, err.Error()
		} else {
			st.Reason, st.Error = ReasonDownload, err.Error()
		}
		return err
	}
	from := st.Check.Offset
	if st.Compressed {
		from = 0
	}
	seed, err := u.seed(ctx, s, x)
	if err != nil {
		return err
	}
	if seed != nil {
		defer seed.R.(io.Closer).Close()
	}
	target, err := os.Open(u.o.Slots[st.Target.Slot])
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("open slot %s: %w", st.Target.Slot, err)
	}
	var targetR io.ReaderAt
	if target != nil {
		defer target.Close()
		targetR = target
	}
	var seeds []delta.Seed
	if seed != nil {
		seeds = []delta.Seed{*seed}
	}
	plan, err := delta.NewPlan(ctx, x, from, seeds, targetR)
	if err != nil {
		return err
	}
	d.From, d.Fetch, d.Chunks = from, plan.Fetch.Bytes, plan.Fetch.Chunks
	d.Seeded, d.InPlace = plan.Seeded.Bytes, plan.InPlace.Bytes
	d.Mode = ModeDelta
	// The share decides once, over the whole image: a resumed install keeps
	// its mode, whatever share of the rest is left to fetch.
	if deciding := first || st.Reason == ReasonBudget; deciding && float64(plan.Fetch.Bytes) > pol.Delta.Share()*float64(plan.Bytes()) {
		d.Mode, d.Why = ModeFull, ReasonFullShare
	}
	if b := d.Budget; b > 0 {
		cost := map[string]int64{ModeDelta: d.Fetch, ModeFull: full - from}
		other := map[string]string{ModeDelta: ModeFull, ModeFull: ModeDelta}[d.Mode]
		if cost[d.Mode] > b {
			if cost[other] > b {
				st.Delta = d
				st.Reason = ReasonBudget
				st.Error = fmt.Sprintf("waiting: the install needs %s (delta) or %s (full image), above the budget of %s", bytesIEC(d.Fetch), bytesIEC(full-from), bytesIEC(b))
				u.m.setDelta(d)
				return u.save(st)
			}
			if d.Mode == ModeDelta {
				d.Why = ReasonFullBudget
			} else {
				d.Why = ""
			}
			d.Mode = other
		}
	}
	if d.Mode == ModeFull {
		return u.decided(s, d, first)
	}
	st.Delta, st.Reason, st.Error = d, "", ""
	u.m.setDelta(d)
	if err := u.save(st); err != nil {
		return err
	}
	u.fault("state:delta-planned")
	u.log.Info("delta install planned", "version", rel.Version, "fetch_bytes", d.Fetch, "fetch_chunks", d.Chunks,
		"image_bytes", d.Image, "full_download_bytes", full, "seeded_bytes", d.Seeded, "in_place_bytes", d.InPlace, "from", from)
	if first && !s.through {
		return nil // said before starting; the next step fetches
	}

	stores, err := u.stores(rel, x)
	if err != nil {
		return err
	}
	var fetched atomic.Int64
	var refused atomic.Int32
	base, baseRefused := d.Fetched, d.Refused
	r, err := delta.NewReader(ctx, plan, seeds, targetR, delta.FetchOptions{
		Stores: stores,
		OnFetch: func(_ delta.Chunk, n int) {
			fetched.Add(int64(n))
			u.m.deltaFetched.Add(float64(n))
		},
		OnBad: func(c delta.Chunk, s delta.Store, err error) {
			refused.Add(1)
			u.m.deltaRefused.Inc()
			u.log.Warn("chunk refused; fetching it again", "chunk", c.ID.String(), "store", s.String(), "err", err)
		},
	})
	if err != nil {
		return err
	}
	defer r.Close()
	note := func() { d.Fetched, d.Refused = base+fetched.Load(), baseRefused+int(refused.Load()) }
	start := st.Check
	if from == 0 {
		start = checkpoint{}
	}
	err = u.writeSlot(ctx, st, r, start, note)
	note()
	switch {
	case err == nil:
		slot := st.Target.Slot
		if err := u.installed(st); err != nil {
			return err
		}
		u.keepSeedIndex(slot, rel, x)
		return nil
	case errors.Is(err, ErrVerify):
		return u.verifyFailed(st, err)
	case errors.Is(err, delta.ErrNotFound):
		d.Mode, d.Why = ModeFull, ReasonFullMissing
		u.log.Warn("a chunk is in no store; the rest comes from the full image", "err", err)
		return u.decided(s, d, false)
	case errors.Is(err, delta.ErrChunk):
		st.Reason, st.Error = ReasonChunksBad, err.Error()
	default:
		st.Reason, st.Error = ReasonDownload, err.Error()
	}
	if serr := u.save(st); serr != nil {
		return errors.Join(err, serr)
	}
	return err
}

// decided records that the install downloads the full image, and why.
func (u *Updater) decided(s *session, d *DeltaStatus, first bool) error {
	st := s.st
	d.Mode, d.Fetch, d.Chunks = ModeFull, d.Full, 0
	st.Delta = d
	u.m.setDelta(d)
	u.m.deltaFull.WithLabelValues(d.Why).Inc()
	if err := u.save(st); err != nil {
		return err
	}
	u.log.Warn("downloading the full image instead of the delta", "why", d.Why, "version", st.Release.Version, "full_download_bytes", d.Full)
	if first && !s.through {
		return nil
	}
	return errNoDelta
}

// fullSize is the length of the full image download: the file's size, or an
// HTTP HEAD's Content-Length; the image's size when the source does not say.
func (u *Updater) fullSize(ctx context.Context, rel *spec.Release) int64 {
	loc := rel.URL
	if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, loc, nil)
		if err == nil {
			if resp, err := u.o.HTTPClient.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK && resp.ContentLength > 0 {
					return resp.ContentLength
				}
			}
		}
		return rel.Size
	}
	path := strings.TrimPrefix(loc, "file://")
	if !filepath.IsAbs(path) && u.o.BaseDir != "" {
		path = filepath.Join(u.o.BaseDir, path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
		return fi.Size()
	}
	return rel.Size
}

func (u *Updater) deltaDir() string { return filepath.Join(u.o.StateDir, "delta") }

// deltaIndex returns the release's chunk index, checked against the signed
// sha256 before it is parsed, from the state dir's cache or its source.
func (u *Updater) deltaIndex(ctx context.Context, rel *spec.Release) (*delta.Index, error) {
	want := strings.ToLower(rel.Delta.SHA256)
	cache := filepath.Join(u.deltaDir(), "index-"+want+".caibx")
	b, err := os.ReadFile(cache)
	if err != nil || hexSHA(b) != want {
		raw, _, _, err := openRaw(ctx, u.o.HTTPClient, rel.Delta.Index, u.o.BaseDir, 0)
		if err != nil {
			return nil, fmt.Errorf("delta index: %w", err)
		}
		b, err = io.ReadAll(io.LimitReader(raw, delta.MaxIndexSize+1))
		raw.Close()
		if err != nil {
			return nil, fmt.Errorf("delta index %s: %w", redact(rel.Delta.Index), err)
		}
		if got := hexSHA(b); got != want {
			return nil, fmt.Errorf("%w: %s has sha256 %s, the release signs %s", ErrDeltaIndex, redact(rel.Delta.Index), got, want)
		}
	}
	x, err := delta.ParseIndex(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrDeltaIndex, redact(rel.Delta.Index), err)
	}
	if x.Size() != rel.Size {
		return nil, fmt.Errorf("%w: %s describes %d bytes, the release %d", ErrDeltaIndex, redact(rel.Delta.Index), x.Size(), rel.Size)
	}
	if err := os.MkdirAll(u.deltaDir(), 0o755); err != nil {
		return nil, fmt.Errorf("delta: %w", err)
	}
	if err := u.prune("index-", filepath.Base(cache)); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(cache, b, 0o644); err != nil {
		return nil, fmt.Errorf("delta: %w", err)
	}
	return x, nil
}

// prune removes the state dir's delta files named prefix* but keep.
func (u *Updater) prune(prefix, keep string) error {
	ms, _ := filepath.Glob(filepath.Join(u.deltaDir(), prefix+"*"))
	for _, m := range ms {
		if filepath.Base(m) != keep {
			if err := atomicfile.Remove(m); err != nil {
				return fmt.Errorf("delta: %w", err)
			}
		}
	}
	return nil
}

func hexSHA(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// seedKey names the seed index of slot holding release ref (as far as the
// state knows it), cut like x.
func seedKey(slot string, ref *ReleaseRef, size int64, x *delta.Index) string {
	what := "unknown"
	if ref != nil && ref.SHA256 != "" {
		what = strings.ToLower(ref.SHA256)
	} else if ref != nil && ref.Version != "" {
		what = "v" + ref.Version
	}
	k := sha256.Sum256(fmt.Appendf(nil, "%s|%d|%#x|%v", what, size, x.Flags&delta.FlagSHA512256, x.Params))
	return "seed-" + slot + "-" + hex.EncodeToString(k[:8]) + ".caibx"
}

// seed opens the booted slot as the install's seed, with an index of its
// content cut like x: from the state dir's cache (the index the slot was
// installed from, or an earlier cut), else cut now and kept. Seed chunks are
// checked when they are read, so a stale index only costs fetches.
func (u *Updater) seed(ctx context.Context, s *session, x *delta.Index) (*delta.Seed, error) {
	slot := s.booted
	f, err := os.Open(u.o.Slots[slot])
	if err != nil {
		u.log.Warn("no seed: the booted slot does not open", "slot", slot, "err", err)
		return nil, nil
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("seed slot %s: %w", slot, err)
	}
	ref := s.st.Committed
	if ref != nil && ref.Slot != slot {
		ref = nil
	}
	if ref != nil && ref.Size > 0 && ref.Size <= size {
		size = ref.Size
	}
	name := seedKey(slot, ref, size, x)
	path := filepath.Join(u.deltaDir(), name)
	if b, err := os.ReadFile(path); err == nil {
		if sx, err := delta.ParseIndex(b); err == nil && sx.Params == x.Params && sx.Flags == x.Flags {
			return &delta.Seed{Name: "slot " + slot, R: f, Index: sx}, nil
		}
	}
	u.log.Info("cutting the booted slot into chunks for a seed", "slot", slot, "bytes", size)
	sx, err := delta.IndexSeed(ctx, f, size, x)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("seed slot %s: %w", slot, err)
	}
	if err := u.saveSeedIndex(slot, name, sx); err != nil {
		f.Close()
		return nil, err
	}
	return &delta.Seed{Name: "slot " + slot, R: f, Index: sx, Cut: true}, nil
}

func (u *Updater) saveSeedIndex(slot, name string, sx *delta.Index) error {
	b, err := sx.MarshalBinary()
	if err != nil {
		return fmt.Errorf("seed index: %w", err)
	}
	if err := os.MkdirAll(u.deltaDir(), 0o755); err != nil {
		return fmt.Errorf("delta: %w", err)
	}
	if err := u.prune("seed-"+slot+"-", name); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(u.deltaDir(), name), b, 0o644); err != nil {
		return fmt.Errorf("delta: %w", err)
	}
	return nil
}

// keepSeedIndex keeps the index a slot was just installed from as that
// slot's seed index, so the next update need not cut it.
func (u *Updater) keepSeedIndex(slot string, rel *spec.Release, x *delta.Index) {
	ref := refOf(rel, slot)
	if err := u.saveSeedIndex(slot, seedKey(slot, ref, rel.Size, x), x); err != nil {
		u.log.Warn("keeping the seed index", "err", err)
	}
}

// stores are where chunks come from, in order: the configured local stores
// (a USB bundle's, a relay's), then the release's own.
func (u *Updater) stores(rel *spec.Release, x *delta.Index) ([]delta.Store, error) {
	var out []delta.Store
	for _, loc := range append(append([]string(nil), u.o.ChunkStores...), rel.Delta.Store) {
		switch {
		case strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://"):
			out = append(out, &delta.HTTPStore{URL: loc, Client: u.o.HTTPClient, MaxChunk: x.Params.Max})
		case loc != "":
			p := strings.TrimPrefix(loc, "file://")
			if !filepath.IsAbs(p) && u.o.BaseDir != "" {
				p = filepath.Join(u.o.BaseDir, p)
			}
			out = append(out, delta.DirStore(p))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("release %q: %w: its delta names no chunk store", rel.Version, ErrInvalidRelease)
	}
	return out, nil
}

// bytesIEC formats n bytes for a person: 12.3 MiB.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
