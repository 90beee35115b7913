package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/shoalfleet/shoal/api"
)

// site puts the plant devices behind a site relay, cuts the site's uplink
// (the hub goes away) while they go on reporting, and brings it back: every
// report the relay held reaches the hub, in order, none twice.
func (d *demo) site(ctx context.Context) error {
	var moved []string
	for _, id := range d.devices {
		if strings.HasPrefix(d.role[id], "plant") && id != canary {
			moved = append(moved, id)
		}
	}
	if len(moved) == 0 {
		moved = d.devices[len(d.devices)-1:]
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	relayURL := "https://" + addr
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "shoal"), "token", "create", "--relay", "site-north", "--host", "127.0.0.1", "--json")
	cmd.Env = append(os.Environ(), d.env...)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("shoal token create --relay: %w", err)
	}
	var tr api.TokenResponse
	if err := json.Unmarshal(out, &tr); err != nil {
		return fmt.Errorf("shoal token create --relay printed %q", out)
	}
	state := filepath.Join(d.dir, "relay")
	enrol := exec.CommandContext(ctx, filepath.Join(d.bin, "shoal"), "relay", "enrol", "--hub", d.hubURL, "--token", tr.Token, "--ca-fingerprint", tr.CAFingerprint, "--state", state)
	if out, err := enrol.CombinedOutput(); err != nil {
		return fmt.Errorf("shoal relay enrol: %w\n%s", err, out)
	}
	if _, err := d.start(ctx, "relay", "shoal", "relay", "run", "--hub", d.hubURL, "--state", state, "--listen", addr,
		"--fleet", "file://"+d.repo, "--fleet-interval", "10s", "--status-interval", "2s", "--poll-wait", "20s"); err != nil {
		return err
	}
	d.say("site relay site-north enrolled with a relay token and running at %s: fleet repo mirror, artifact cache, reports held on its disk", relayURL)
	for _, id := range moved {
		if err := d.stop(d.agents[id]); err != nil {
			return err
		}
		cfg, err := os.ReadFile(d.cfgs[id])
		if err != nil {
			return err
		}
		if err := os.WriteFile(d.cfgs[id], append(cfg, []byte("relays: ["+relayURL+"]\n")...), 0o600); err != nil {
			return err
		}
		if d.agents[id], err = d.start(ctx, id+"-relay", "shoal-agent", "--config", d.cfgs[id]); err != nil {
			return err
		}
	}
	if err := d.until(ctx, strings.Join(moved, ", ")+" to report through the relay", func() bool {
		rs, err := d.relays(ctx)
		return err == nil && len(rs) == 1 && rs[0].DeviceCount == len(moved)
	}); err != nil {
		return err
	}
	verb := "talk"
	if len(moved) == 1 {
		verb = "talks"
	}
	d.say("%s now %s to the relay first (relays: [%s] in the agent config); the hub sees the reports come through site-north (%s/relays)",
		strings.Join(moved, ", "), verb, relayURL, d.hubURL)
	if err := d.onStep(ctx, "relay"); err != nil {
		return err
	}

	// The uplink goes: the hub is unreachable for the site.
	before := map[string]uint64{}
	for _, id := range moved {
		s, err := d.latest(ctx, id)
		if err != nil {
			return err
		}
		before[id] = s.Seq
	}
	if err := d.stop(d.hub); err != nil {
		return err
	}
	var held api.RelayStatus
	if err := d.until(ctx, "the relay to hold reports", func() bool {
		s, err := d.relayStatus(ctx, relayURL)
		held = s
		return err == nil && s.Backlog.Reports >= 2*len(moved)
	}); err != nil {
		return err
	}
	d.say("uplink cut (the hub stopped): the devices go on reporting; site-north holds %d of their reports on its disk", held.Backlog.Reports)
	if err := d.restartHub(ctx); err != nil {
		return err
	}
	if err := d.until(ctx, "the relay to forward what it held", func() bool {
		s, err := d.relayStatus(ctx, relayURL)
		return err == nil && s.Backlog.Reports == 0
	}); err != nil {
		return err
	}
	total := 0
	for _, id := range moved {
		n, err := d.contiguous(ctx, id, before[id])
		if err != nil {
			return err
		}
		total += n
	}
	d.say("uplink back: site-north forwarded every held report; the hub has each device's reports in order, none missing, none twice (%d since the cut)", total)
	return nil
}

// restartHub starts the hub again on its address and database.
func (d *demo) restartHub(ctx context.Context) error {
	addr := strings.TrimPrefix(d.hubURL, "https://")
	var err error
	d.hub, err = d.start(ctx, "hub-2", "shoal", "hub", "--listen", addr, "--db", "sqlite://"+filepath.Join(d.dir, "hub.db"), "--host", "127.0.0.1", "--poll-wait", "20s", "--open-access")
	if err != nil {
		return err
	}
	return d.until(ctx, "the hub to answer again", func() bool {
		resp, err := d.hc.Get(d.hubURL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (d *demo) relays(ctx context.Context) ([]api.Relay, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", d.hubURL+"/v1/admin/relays", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+d.op)
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var rs []api.Relay
	return rs, json.NewDecoder(resp.Body).Decode(&rs)
}

// relayStatus reads the relay's /healthz (its certificate chains to the hub CA).
func (d *demo) relayStatus(ctx context.Context, relayURL string) (api.RelayStatus, error) {
	var s api.RelayStatus
	req, err := http.NewRequestWithContext(ctx, "GET", relayURL+"/healthz", nil)
	if err != nil {
		return s, err
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// contiguous checks that the hub holds every report of id after seq, each
// once, and returns how many.
func (d *demo) contiguous(ctx context.Context, id string, after uint64) (int, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", d.hubURL+"/v1/admin/devices/"+id+"/reports?limit=1000", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+d.op)
	resp, err := d.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var reps []api.Status
	if err := json.NewDecoder(resp.Body).Decode(&reps); err != nil {
		return 0, err
	}
	want, n := reps[0].Seq, 0
	for _, r := range reps { // newest first
		if r.Seq <= after {
			break
		}
		if r.Seq != want {
			return 0, fmt.Errorf("%s: report %d missing at the hub (have %d)", id, want, r.Seq)
		}
		want--
		n++
	}
	return n, nil
}
