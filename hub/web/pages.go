package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/hub/store"
)

// Device is one device as the page and the JSON API show it.
type Device struct {
	ID          string            `json:"id"`
	State       string            `json:"state"` // api.State, "" if never reported
	Revoked     bool              `json:"revoked,omitempty"`
	Groups      []string          `json:"groups,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Attempted   string            `json:"attemptedCommit,omitempty"`
	Commit      string            `json:"appliedCommit,omitempty"`
	SpecHash    string            `json:"specHash,omitempty"`
	Release     string            `json:"release,omitempty"`
	Target      string            `json:"targetRelease,omitempty"`
	Slot        string            `json:"slot,omitempty"`
	UpdateState string            `json:"updateState,omitempty"`
	UpdateSince time.Time         `json:"updateSince,omitzero"`
	AppsHealthy int               `json:"appsHealthy"`
	AppsTotal   int               `json:"appsTotal"`
	Drifted     bool              `json:"drifted,omitempty"`
	Seq         uint64            `json:"seq"`
	LastSeen    time.Time         `json:"lastSeen,omitzero"`
	Offline     bool              `json:"offline,omitempty"`
	Attestation string            `json:"attestation"` // one of the Attest* values
	KeyKind     string            `json:"keyKind"`
	Weak        bool              `json:"weakIdentity,omitempty"`
	Relay       string            `json:"relay,omitempty"` // the site relay its latest report came through

	ClockTrusted *bool `json:"clockTrusted,omitempty"`
	// ClockState is ok, skewed, unknown (no time server answered) or
	// untrusted (below a verified lower bound); "" when none was reported.
	ClockState string        `json:"clockState,omitempty"`
	Skew       time.Duration `json:"skewNs"`
	// SkewBad: skewed by the device's policy, or its offset beyond the page's bound.
	SkewBad bool         `json:"clockSkewed,omitempty"`
	Problem *api.Problem `json:"problem,omitempty"`
	// LastReceipt is the latest receipt from an offline bundle; Offline
	// work is set when it is newer than the device's last report, so work
	// done with no network shows before the device reports it.
	LastReceipt *Receipt `json:"lastReceipt,omitempty"`
	OfflineWork bool     `json:"offlineWork,omitempty"`
}

// Device.Attestation values: the hub's last verdict on the device's quote.
const (
	AttestOK             = "ok"               // passed, and the boot PCRs held to the release's values
	AttestPCRsNotChecked = "pcrs-not-checked" // passed, but the hub had no PCR values to hold the quote to
	AttestUnverified     = "unverified"       // no verdict of the hub's; the device reports it passed
	AttestFailed         = "failed"
	AttestNone           = "none"
)

// AttestText says an Attestation value for a person.
func AttestText(a string) string {
	switch a {
	case AttestOK:
		return "passed"
	case AttestPCRsNotChecked:
		return "PCRs not checked"
	case AttestUnverified:
		return "not verified by the hub"
	}
	return a
}

// Receipt is a device's receipt for an offline bundle, as the hub recorded it.
type Receipt struct {
	Applied    time.Time `json:"applied"` // the device's clock
	BundleHash string    `json:"bundleHash,omitempty"`
	Commit     string    `json:"commit,omitempty"`
	Release    string    `json:"release,omitempty"`
	Result     string    `json:"result"` // applied | refused | failed
	Reason     string    `json:"reason,omitempty"`
	Errors     []string  `json:"errors,omitempty"`
	Received   time.Time `json:"received"`
}

// receiptReader is the part of the hub store that keeps receipts.
type receiptReader interface {
	Receipts(ctx context.Context, id string, limit int) ([]store.Receipt, error)
	LatestReceipts(ctx context.Context, ids []string) (map[string]store.Receipt, error)
}

func receipt(r store.Receipt) *Receipt {
	return &Receipt{Applied: r.Applied, BundleHash: r.BundleHash, Commit: r.Commit, Release: r.Release, Result: r.Result,
		Reason: r.Reason, Errors: r.Errors, Received: r.Received}
}

// withReceipt sets d's last receipt, and marks offline work when the
// receipt is newer than the device's last report.
func (d *Device) withReceipt(r store.Receipt) {
	d.LastReceipt = receipt(r)
	d.OfflineWork = r.Applied.After(d.LastSeen)
}

func (s *server) device(r store.FleetRow) Device {
	d := Device{ID: r.ID, State: r.State, Revoked: !r.Revoked.IsZero(), Groups: r.Groups, Labels: r.Labels,
		Attempted: r.Attempted, Commit: r.Commit, SpecHash: r.SpecHash, Release: r.Release, Target: r.Target,
		Slot: r.Slot, UpdateState: r.UpdateState, UpdateSince: r.UpdateSince, AppsHealthy: r.AppsHealthy,
		AppsTotal: r.AppsTotal, Drifted: r.Drifted, Seq: r.LatestSeq, LastSeen: r.LastSeen, Offline: r.Offline,
		KeyKind: r.KeyKind, Weak: r.Weak, ClockTrusted: r.ClockTrusted, ClockState: r.ClockState, Skew: r.Skew, Attestation: AttestNone, Relay: r.Relay}
	switch {
	case r.AttestOK != nil && *r.AttestOK && r.AttestPCRs:
		d.Attestation = AttestOK
	case r.AttestOK != nil && *r.AttestOK:
		d.Attestation = AttestPCRsNotChecked
	case r.AttestOK == nil && r.ReportAttestOK != nil && *r.ReportAttestOK:
		d.Attestation = AttestUnverified
	case r.AttestOK != nil, r.ReportAttestOK != nil:
		d.Attestation = AttestFailed
	}
	d.SkewBad = r.ClockState == "skewed" || r.ClockState == "ok" && (r.Skew > s.o.MaxSkew || r.Skew < -s.o.MaxSkew)
	if r.ProblemReason != "" || r.ProblemMessage != "" {
		d.Problem = &api.Problem{Reason: r.ProblemReason, Message: r.ProblemMessage}
	}
	return d
}

// Fleet is the JSON of one page of the fleet.
type Fleet struct {
	Counts  map[string]int `json:"counts"`
	Stamp   string         `json:"stamp"`
	Total   int            `json:"total"`
	Offset  int            `json:"offset"`
	Limit   int            `json:"limit"`
	Devices []Device       `json:"devices"`
}

// Live is the small JSON the overview polls.
type Live struct {
	Counts map[string]int `json:"counts"`
	Stamp  string         `json:"stamp"`
}

// query reads the overview's URL parameters: state, group, label, q, sort,
// desc, page and per.
func (s *server) query(v url.Values) store.FleetQuery {
	q := store.FleetQuery{Filter: v.Get("state"), Group: v.Get("group"), Label: v.Get("label"), Search: v.Get("q"),
		Sort: v.Get("sort"), Desc: v.Get("desc") == "1", Now: s.o.Now(), OfflineAfter: s.o.OfflineAfter, MaxSkew: s.o.MaxSkew}
	q.Limit, _ = strconv.Atoi(v.Get("per"))
	if q.Limit <= 0 || q.Limit > 500 {
		q.Limit = 50
	}
	if p, _ := strconv.Atoi(v.Get("page")); p > 1 && p < 1e6 {
		q.Offset = (p - 1) * q.Limit
	}
	if o, _ := strconv.Atoi(v.Get("offset")); o > 0 && v.Get("page") == "" {
		q.Offset = o
	}
	return q
}

func (s *server) fleet(r *http.Request, q store.FleetQuery) (Fleet, error) {
	page, err := s.st.FleetPage(r.Context(), q)
	if err != nil {
		return Fleet{}, err
	}
	counts, err := s.st.FleetCounts(r.Context(), q)
	if err != nil {
		return Fleet{}, err
	}
	f := Fleet{Counts: counts.Counts, Stamp: counts.Stamp, Total: page.Total, Offset: q.Offset, Limit: q.Limit, Devices: []Device{}}
	if f.Limit == 0 {
		f.Limit = 50
	}
	ids := make([]string, 0, len(page.Rows))
	for _, row := range page.Rows {
		f.Devices = append(f.Devices, s.device(row))
		ids = append(ids, row.ID)
	}
	if rr, ok := s.st.(receiptReader); ok && len(ids) > 0 {
		last, err := rr.LatestReceipts(r.Context(), ids)
		if err != nil {
			return Fleet{}, err
		}
		for i := range f.Devices {
			if rc, ok := last[f.Devices[i].ID]; ok {
				f.Devices[i].withReceipt(rc)
			}
		}
	}
	return f, nil
}

func (s *server) apiFleet(w http.ResponseWriter, r *http.Request) {
	f, err := s.fleet(r, s.query(r.URL.Query()))
	if err != nil {
		s.failJSON(w, r, err)
		return
	}
	writeJSON(w, f)
}

func (s *server) apiLive(w http.ResponseWriter, r *http.Request) {
	c, err := s.st.FleetCounts(r.Context(), s.query(r.URL.Query()))
	if err != nil {
		s.failJSON(w, r, err)
		return
	}
	writeJSON(w, Live{Counts: c.Counts, Stamp: c.Stamp})
}

// --- overview

type chip struct {
	Filter, Label, Href, Title string
	Count                      int
	Active, Bad                bool
}

type column struct {
	Key, Label, Href, Class string
	Sorted, Desc            bool
}

type overview struct {
	Q          store.FleetQuery
	Fleet      Fleet
	Chips      []chip
	Columns    []column
	Live       string
	Interval   int
	Prev, Next string
	From, To   int
	Filtered   bool
}

// filterLabels name the chips: a device state by its api.State label, the
// conditions by their own.
var filterLabels = func() map[string]string {
	m := map[string]string{store.FilterAll: "All", store.FilterTrial: "In trial", store.FilterRolledBack: "Rolled back",
		store.FilterDrifted: "Drifted", store.FilterOffline: "Offline", store.FilterAttestFailed: "Attestation failed",
		store.FilterClockSkewed: "Clock skewed", store.FilterClockUntrust: "Clock untrusted", store.FilterWeakIdentity: "Software identity", store.FilterNeverSeen: "Never reported"}
	for _, st := range api.States {
		m[string(st)] = st.Label()
	}
	return m
}()

// badFilters are drawn in the warning colour when non-zero.
var badFilters = map[string]bool{store.FilterDegraded: true, store.FilterStalled: true, store.FilterRolledBack: true, store.FilterDrifted: true,
	store.FilterOffline: true, store.FilterAttestFailed: true, store.FilterClockSkewed: true, store.FilterClockUntrust: true}

// stateTitle is the tooltip of a state: what it means.
func stateTitle(s string) string {
	if st := api.State(s); st.Valid() {
		return st.Meaning()
	}
	return "the device has not reported since it enrolled"
}

// link is the overview URL for q with one parameter changed.
func link(v url.Values, set map[string]string) string {
	u := url.Values{}
	for k, vs := range v {
		if k == "partial" || len(vs) == 0 || vs[0] == "" {
			continue
		}
		u.Set(k, vs[0])
	}
	for k, val := range set {
		if val == "" {
			u.Del(k)
		} else {
			u.Set(k, val)
		}
	}
	if len(u) == 0 {
		return "/"
	}
	return "/?" + u.Encode()
}

func (s *server) handleOverview(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q := s.query(v)
	f, err := s.fleet(r, q)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if q.Filter == "" {
		q.Filter = store.FilterAll
	}
	if q.Sort == "" {
		q.Sort = "id"
	}
	ov := overview{Q: q, Fleet: f, Interval: int(s.o.LiveInterval / time.Millisecond),
		Filtered: q.Group != "" || q.Label != "" || q.Search != ""}
	for _, fl := range store.Filters {
		n := f.Counts[fl]
		if n == 0 && fl != q.Filter && fl == store.FilterNeverSeen {
			continue
		}
		val := fl
		if fl == store.FilterAll {
			val = ""
		}
		title := ""
		if api.State(fl).Valid() || fl == store.FilterNeverSeen {
			title = stateTitle(fl)
		}
		ov.Chips = append(ov.Chips, chip{Filter: fl, Label: filterLabels[fl], Title: title, Count: n, Active: fl == q.Filter,
			Bad: badFilters[fl] && n > 0, Href: link(v, map[string]string{"state": val, "page": ""})})
	}
	for _, c := range []struct{ key, label, class string }{
		{"id", "Device", ""}, {"", "Groups", "wide"}, {"state", "State", ""}, {"commit", "Commit", ""}, {"", "Spec", "wide"},
		{"release", "Release · slot", ""}, {"apps", "Apps", ""}, {"seen", "Last seen", ""}, {"attest", "Attestation", "wide"}, {"skew", "Clock", "wide"},
	} {
		col := column{Key: c.key, Label: c.label, Class: c.class}
		if c.key != "" {
			col.Sorted = q.Sort == c.key
			col.Desc = col.Sorted && q.Desc
			desc := ""
			if col.Sorted && !q.Desc {
				desc = "1"
			}
			col.Href = link(v, map[string]string{"sort": c.key, "desc": desc, "page": ""})
		}
		ov.Columns = append(ov.Columns, col)
	}
	page := q.Offset/q.Limit + 1
	if q.Offset > 0 {
		ov.Prev = link(v, map[string]string{"page": strconv.Itoa(page - 1)})
	}
	if q.Offset+q.Limit < f.Total {
		ov.Next = link(v, map[string]string{"page": strconv.Itoa(page + 1)})
	}
	if len(f.Devices) > 0 {
		ov.From, ov.To = q.Offset+1, q.Offset+len(f.Devices)
	}
	lv := url.Values{}
	for _, k := range []string{"group", "label", "q"} {
		if v.Get(k) != "" {
			lv.Set(k, v.Get(k))
		}
	}
	ov.Live = "/api/v1/live"
	if len(lv) > 0 {
		ov.Live += "?" + lv.Encode()
	}
	name := "overview"
	if v.Get("partial") == "1" {
		name = "overview-live"
	}
	s.render(w, r, name, http.StatusOK, &layout{Title: "Fleet", Nav: "fleet", Body: ov})
}

// --- device

// App is one container app as the device page shows it.
type App struct {
	api.AppStatus
	// Restarts is read from the report when the agent sends it.
	Restarts *int `json:"restarts,omitempty"`
}

// Transition is one step of the A/B update state machine, from the report history.
type Transition struct {
	State   string    `json:"state"`
	Slot    string    `json:"slot,omitempty"`
	Version string    `json:"version,omitempty"`
	Target  string    `json:"target,omitempty"`
	Since   time.Time `json:"since"`
	Seq     uint64    `json:"seq"`
}

// ClockPoint is the clock offset one report gave.
type ClockPoint struct {
	Time    time.Time     `json:"time"`
	Seq     uint64        `json:"seq"`
	Trusted bool          `json:"trusted"`
	Skew    time.Duration `json:"skewNs"`
	Source  string        `json:"source,omitempty"`
}

// Verdict is one hub attestation verdict. CheckedPCRs are the PCRs held to
// expected values; a passed verdict without them did not check the boot PCRs.
type Verdict struct {
	Time        time.Time `json:"time"`
	OK          bool      `json:"ok"`
	Reasons     []string  `json:"reasons,omitempty"`
	CheckedPCRs []int     `json:"checkedPCRs,omitempty"`
	// Unchecked: what the hub's policy did not check in a pass.
	Unchecked []string `json:"unchecked,omitempty"`
}

// ReportRow is one recent report.
type ReportRow struct {
	Seq      uint64       `json:"seq"`
	Time     time.Time    `json:"time"`
	Received time.Time    `json:"received"`
	State    string       `json:"state"`
	Attempt  string       `json:"attemptedCommit,omitempty"`
	Problem  *api.Problem `json:"problem,omitempty"`
	Offline  bool         `json:"offline,omitempty"`
}

// DeviceDetail is the JSON of the device page.
type DeviceDetail struct {
	Device       Device            `json:"device"`
	Refused      bool              `json:"refused"` // the newest commit was not applied
	Apps         []App             `json:"apps"`
	Update       *api.UpdateStatus `json:"update,omitempty"`
	Transitions  []Transition      `json:"transitions"`
	Attest       *api.AttestStatus `json:"attest,omitempty"` // the device's own view
	Verdicts     []Verdict         `json:"verdicts"`
	Clock        *api.ClockStatus  `json:"clock,omitempty"`
	ClockHistory []ClockPoint      `json:"clockHistory"`
	Reports      []ReportRow       `json:"reports"`
	Receipts     []Receipt         `json:"receipts"` // latest first
	Enrolled     time.Time         `json:"enrolled"`
	AttestTime   time.Time         `json:"attestTime,omitzero"`
}

type reportBody struct {
	api.Status
	Apps []App `json:"apps,omitempty"`
}

const (
	historyReports  = 50
	historyReceipts = 20
)

func (s *server) detail(r *http.Request, id string) (DeviceDetail, error) {
	q := s.query(nil)
	row, err := s.st.FleetDevice(r.Context(), id, q)
	if err != nil {
		return DeviceDetail{}, err
	}
	dd := DeviceDetail{Device: s.device(row), Apps: []App{}, Transitions: []Transition{}, Verdicts: []Verdict{}, ClockHistory: []ClockPoint{},
		Reports: []ReportRow{}, Receipts: []Receipt{}, Enrolled: row.Enrolled, AttestTime: row.AttestTime}
	dd.Refused = row.Attempted != "" && row.Attempted != row.Commit
	reps, err := s.st.Reports(r.Context(), id, historyReports)
	if err != nil {
		return DeviceDetail{}, err
	}
	var bodies []reportBody
	for _, rep := range reps { // newest first
		var b reportBody
		if err := json.Unmarshal(rep.Body, &b); err != nil {
			continue
		}
		bodies = append(bodies, b)
		dd.Reports = append(dd.Reports, ReportRow{Seq: rep.Seq, Time: rep.Time, Received: rep.Received, State: rep.State,
			Attempt: b.Commit.Attempted, Problem: b.Problem, Offline: b.Offline})
		if b.Clock != nil {
			dd.ClockHistory = append(dd.ClockHistory, ClockPoint{Time: rep.Time, Seq: rep.Seq, Trusted: b.Clock.Trusted, Skew: b.Clock.Skew, Source: b.Clock.Source})
		}
	}
	if len(bodies) > 0 && bodies[0].Seq == row.LatestSeq {
		latest := bodies[0]
		if latest.Apps != nil {
			dd.Apps = latest.Apps
		}
		dd.Update, dd.Attest, dd.Clock = latest.Update, latest.Attest, latest.Clock
	}
	// The state machine's steps: each change of update state, oldest first.
	for i := len(bodies) - 1; i >= 0; i-- {
		u := bodies[i].Update
		if u == nil {
			continue
		}
		if n := len(dd.Transitions); n > 0 && dd.Transitions[n-1].State == u.State && dd.Transitions[n-1].Target == u.Target {
			continue
		}
		since := u.Since
		if since.IsZero() {
			since = bodies[i].Time
		}
		dd.Transitions = append(dd.Transitions, Transition{State: u.State, Slot: u.Slot, Version: u.Version, Target: u.Target, Since: since, Seq: bodies[i].Seq})
	}
	if rr, ok := s.st.(receiptReader); ok {
		rs, err := rr.Receipts(r.Context(), id, historyReceipts)
		if err != nil {
			return DeviceDetail{}, err
		}
		for _, rc := range rs {
			dd.Receipts = append(dd.Receipts, *receipt(rc))
		}
		if len(rs) > 0 {
			dd.Device.withReceipt(rs[0])
		}
	}
	atts, err := s.st.Attestations(r.Context(), id, 10)
	if err != nil {
		return DeviceDetail{}, err
	}
	for _, a := range atts {
		v := Verdict{Time: a.Time, OK: a.OK}
		var res api.AttestResult
		if json.Unmarshal(a.Result, &res) == nil {
			v.Reasons, v.CheckedPCRs, v.Unchecked = res.Reasons, res.CheckedPCRs, res.Unchecked
		}
		dd.Verdicts = append(dd.Verdicts, v)
	}
	return dd, nil
}

type devicePage struct {
	D        DeviceDetail
	MaxSkew  time.Duration
	Chart    []bar
	ChartW   int
	Limit    int
	Reasons  []string // failed attestation conditions, newest verdict or the device's view
	LogLines []string
}

// bar is one clock-offset bar of the device page's chart (SVG attributes, no inline style).
type bar struct {
	X, Y, W, H int
	Bad        bool
	Title      string
}

func (s *server) handleDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	dd, err := s.detail(r, id)
	if errors.Is(err, store.ErrNotFound) {
		s.render(w, r, "notfound", http.StatusNotFound, &layout{Title: "Not found", Nav: "fleet", Body: id})
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := devicePage{D: dd, MaxSkew: s.o.MaxSkew}
	if len(dd.Verdicts) > 0 && !dd.Verdicts[0].OK {
		p.Reasons = dd.Verdicts[0].Reasons
	} else if len(dd.Verdicts) == 0 && dd.Attest != nil && !dd.Attest.OK {
		p.Reasons = dd.Attest.Reasons
	}
	// Clock chart: oldest left, |offset| against max skew; the bound sits at half height.
	const h = 60
	pts := slices.Clone(dd.ClockHistory)
	slices.Reverse(pts)
	p.ChartW = 6 * len(pts)
	for i, c := range pts {
		frac := math.Abs(float64(c.Skew)) / float64(2*s.o.MaxSkew)
		if frac > 1 {
			frac = 1
		}
		bh := max(int(frac*h), 1)
		bad := !c.Trusted || c.Skew > s.o.MaxSkew || c.Skew < -s.o.MaxSkew
		p.Chart = append(p.Chart, bar{X: i * 6, Y: h - bh, W: 4, H: bh, Bad: bad,
			Title: fmt.Sprintf("#%d %s: %s%s", c.Seq, c.Time.UTC().Format("2006-01-02 15:04:05"), fmtSkew(c.Skew), map[bool]string{true: "", false: " (untrusted)"}[c.Trusted])})
	}
	s.render(w, r, "device", http.StatusOK, &layout{Title: id, Nav: "fleet", Body: p})
}

func (s *server) apiDevice(w http.ResponseWriter, r *http.Request) {
	dd, err := s.detail(r, r.PathValue("id"))
	if err != nil {
		s.failJSON(w, r, err)
		return
	}
	writeJSON(w, dd)
}

// --- rollout

// notFound reports whether err says there is no such rollout or wave
// (Rollouts' errors have a NotFound method saying so).
func notFound(err error) bool {
	var nf interface{ NotFound() bool }
	return errors.As(err, &nf) && nf.NotFound()
}

// RolloutCount is one group's progress on a commit or release.
type RolloutCount struct {
	Group      string `json:"group"`
	Converged  int    `json:"converged"`
	InProgress int    `json:"inProgress"`
	Failed     int    `json:"failed"`
}

// RolloutItem is one commit or release. A device in several groups counts
// in each of its groups and once in Total.
type RolloutItem struct {
	Kind   string         `json:"kind"`
	Name   string         `json:"name"`
	Total  RolloutCount   `json:"total"`
	Groups []RolloutCount `json:"groups"`
}

// Rollout is the JSON of the rollout view.
type Rollout struct {
	// Staged is the hub's newest staged rollout (waves, gates, budgets), if any.
	Staged       *api.RolloutView `json:"staged,omitempty"`
	NewestCommit *RolloutItem     `json:"newestCommit,omitempty"`
	Releases     []RolloutItem    `json:"releases"`
	// Act: the viewer may approve, pause, resume and abort (an operator
	// session, not open access). Error is what the last action said.
	Act   bool   `json:"-"`
	Error string `json:"-"`
	CSRF  string `json:"-"`
}

func rolloutItem(it store.RolloutItem) RolloutItem {
	out := RolloutItem{Kind: it.Kind, Name: it.Name,
		Total: RolloutCount{Group: "all", Converged: it.Total.Converged, InProgress: it.Total.InProgress, Failed: it.Total.Failed}}
	for _, g := range it.Groups {
		out.Groups = append(out.Groups, RolloutCount{Group: g.Group, Converged: g.Converged, InProgress: g.InProgress, Failed: g.Failed})
	}
	return out
}

func (s *server) rollout(r *http.Request) (Rollout, error) {
	ro, err := s.st.Rollout(r.Context())
	if err != nil {
		return Rollout{}, err
	}
	out := Rollout{Releases: []RolloutItem{}}
	if s.o.Rollouts != nil {
		v, err := s.o.Rollouts.RolloutView(r.Context(), "", false)
		if err == nil {
			out.Staged = &v
		} else if !notFound(err) {
			return Rollout{}, err
		}
	}
	if ro.NewestCommit != nil {
		it := rolloutItem(*ro.NewestCommit)
		out.NewestCommit = &it
	}
	for _, rel := range ro.Releases {
		out.Releases = append(out.Releases, rolloutItem(rel))
	}
	return out, nil
}

func (s *server) handleRollout(w http.ResponseWriter, r *http.Request) {
	s.rolloutPage(w, r, http.StatusOK, "")
}

func (s *server) rolloutPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	ro, err := s.rollout(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ro.Error = msg
	if ok, err := s.operatorSession(r); err == nil && ok {
		ro.Act = true
	}
	ro.CSRF = csrfToken(w, r)
	s.render(w, r, "rollout", status, &layout{Title: "Rollout", Nav: "rollout", CSRF: ro.CSRF, Body: ro})
}

// handleRolloutAction takes an approve, pause, resume or abort from the
// rollout page's buttons (an operator session and the CSRF token, checked
// by session) and shows the page again.
func (s *server) handleRolloutAction(w http.ResponseWriter, r *http.Request) {
	if s.o.Rollouts == nil {
		http.Error(w, "this hub runs no staged rollouts (start it with --fleet)", http.StatusNotFound)
		return
	}
	a := api.RolloutAction{APIVersion: api.Version, Action: r.PostFormValue("action"), Commit: r.PostFormValue("commit"),
		Wave: r.PostFormValue("wave"), Track: r.PostFormValue("track"), Reason: "from the status page"}
	if err := a.Validate(); err != nil {
		s.rolloutPage(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if _, err := s.o.Rollouts.RolloutAct(r.Context(), a); err != nil {
		if notFound(err) {
			s.rolloutPage(w, r, http.StatusNotFound, err.Error())
			return
		}
		s.fail(w, r, err)
		return
	}
	s.log.Info("rollout action from the status page", "action", a.Action, "commit", a.Commit, "wave", a.Wave, "track", a.Track)
	http.Redirect(w, r, "/rollout", http.StatusSeeOther)
}

func (s *server) apiRollout(w http.ResponseWriter, r *http.Request) {
	ro, err := s.rollout(r)
	if err != nil {
		s.failJSON(w, r, err)
		return
	}
	writeJSON(w, ro)
}

// --- rendering

type layout struct {
	Title, Nav string
	CSRF       string
	// SignOut shows the sign-out button: not on an open-access page, where
	// there is no session to end.
	SignOut bool
	Notices []string
	Body    any
}

func (s *server) render(w http.ResponseWriter, r *http.Request, name string, status int, l *layout) {
	if l.CSRF == "" {
		l.CSRF = csrfToken(w, r)
	}
	l.SignOut = l.Nav != "" && !s.openAccess(r)
	if l.Nav != "" {
		l.Notices = s.o.Notices
	}
	var buf bytes.Buffer
	if err := s.tmpl[name].ExecuteTemplate(&buf, name, l); err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

var funcs = template.FuncMap{
	"short": func(s string) string {
		if len(s) > 8 {
			return s[:8]
		}
		return s
	},
	"ago":    ago,
	"ts":     func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"iso":    func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"attest": AttestText,
	"ints": func(xs []int) string {
		s := make([]string, len(xs))
		for i, x := range xs {
			s[i] = strconv.Itoa(x)
		}
		return strings.Join(s, ", ")
	},
	"skew":    fmtSkew,
	"join":    strings.Join,
	"label":   func(f string) string { return filterLabels[f] },
	"meaning": stateTitle,
	"pct":     func(f float64) string { return strconv.Itoa(int(f*100)) + "%" },
	"add":     func(a, b int) int { return a + b },
	"dur":     func(d time.Duration) string { return d.Round(time.Second).String() },
	"dict": func(kv ...any) map[string]any {
		m := make(map[string]any, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	},
	"bytes": humanBytes,
	"deref": func(b *bool) bool { return b != nil && *b },
	"labels": func(m map[string]string) string {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			keys[i] = k + "=" + m[k]
		}
		return strings.Join(keys, ", ")
	},
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func fmtSkew(d time.Duration) string {
	sign := "+"
	if d < 0 {
		sign, d = "−", -d
	}
	switch {
	case d < time.Millisecond:
		return sign + strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) + " ms"
	case d < time.Second:
		return sign + strconv.Itoa(int(d/time.Millisecond)) + " ms"
	}
	return sign + strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + " s"
}

func parseTemplates() (map[string]*template.Template, error) {
	base, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("web: templates: %w", err)
	}
	out := map[string]*template.Template{}
	for name, file := range map[string]string{"overview": "overview", "overview-live": "overview", "device": "device",
		"rollout": "rollout", "relays": "relays", "login": "login", "notfound": "notfound"} {
		t, err := template.Must(base.Clone()).ParseFS(templateFS, "templates/"+file+".html")
		if err != nil {
			return nil, fmt.Errorf("web: template %s: %w", file, err)
		}
		out[name] = t
	}
	return out, nil
}
