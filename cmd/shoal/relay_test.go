package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/internal/testenv"
	"github.com/shoalfleet/shoal/provision"
)

// proc is a process the test starts, stops gracefully or kills with -9.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	log  *testenv.Buffer
	done chan struct{}
}

func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, cmd: exec.Command(bin, args...), log: &testenv.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Errorf("%s did not stop within 30s; log:\n%s", p.name, p.log.String())
		p.kill()
	}
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Kill() // SIGKILL: no clean-up of any kind
		<-p.done
	}
}

// relaySite is a hub and two relays as processes, a fleet repo, and an
// artifact origin whose speed the test sets.
type relaySite struct {
	t                  *testing.T
	shoal, agent, dir  string
	db, hubAddr, hubCA string
	caFP, op           string
	hub                *proc
	relays             map[string]*relayProc
	repo               *testenv.Repo
	origin             *httptest.Server
	originGets         atomic.Int64
	slow               atomic.Bool // the origin sends 256 KiB every 50ms
	release            []byte
	relSHA             string
}

type relayProc struct {
	*proc
	id, addr, state string
	metrics         string // --metrics-addr: /metrics and /healthz only, plain HTTP
}

func buildBinaries(t *testing.T, dir string) (string, string) {
	t.Helper()
	shoal, agent := filepath.Join(dir, "shoal"), filepath.Join(dir, "shoal-agent")
	for bin, pkg := range map[string]string{shoal: ".", agent: "../shoal-agent"} {
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return shoal, agent
}

func newRelaySite(t *testing.T) *relaySite {
	testenv.LookPath(t, "git", "git")
	s := &relaySite{t: t, dir: t.TempDir(), relays: map[string]*relayProc{}}
	s.shoal, s.agent = buildBinaries(t, s.dir)
	s.db = "sqlite://" + filepath.Join(s.dir, "hub.db")
	out, err := exec.Command(s.shoal, "hub", "token", "create", "--db", s.db).Output()
	if err != nil {
		t.Fatal(err)
	}
	s.op = strings.TrimSpace(string(out))
	s.hubAddr = freeAddr(t)
	s.startHub()

	s.release = bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	sum := sha256.Sum256(s.release)
	s.relSHA = hex.EncodeToString(sum[:])
	s.origin = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.originGets.Add(1)
		if !s.slow.Load() {
			http.ServeContent(w, r, "os.img", time.Time{}, bytes.NewReader(s.release))
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(s.release)))
		for off := 0; off < len(s.release); off += 256 << 10 {
			if _, err := w.Write(s.release[off : off+256<<10]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}))
	t.Cleanup(s.origin.Close)
	s.repo = testenv.NewRepo(t)
	s.repo.Commit(map[string]string{
		"fleet.yaml":       "spec:\n  update:\n    offline_ok: true\n",
		"devices/d1.yaml":  "labels:\n  site: a\n",
		"releases/os.yaml": fmt.Sprintf("version: 1.0.0\nurl: %s/os.img\nsize: %d\nsha256: %s\nsignature: c2ln\n", s.origin.URL, len(s.release), s.relSHA),
	}, "fleet")
	return s
}

func (s *relaySite) startHub() {
	s.hub = startProc(s.t, "hub", s.shoal, "hub", "--listen", s.hubAddr, "--db", s.db, "--host", "127.0.0.1", "--poll-wait", "5s")
	st, err := store.Open(s.t.Context(), s.db)
	if err != nil {
		s.t.Fatal(err)
	}
	defer st.Close()
	waitUntil(s.t, 60*time.Second, "the hub", func() bool {
		ca, err := st.CA(s.t.Context())
		if err != nil {
			return false
		}
		s.hubCA = string(ca.CertPEM)
		b, _ := pem.Decode(ca.CertPEM)
		sum := sha256.Sum256(b.Bytes)
		s.caFP = hex.EncodeToString(sum[:])
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.CertPEM)
		hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get("https://" + s.hubAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond) // other processes: poll the condition
	}
}

// cli runs shoal with the operator's environment.
func (s *relaySite) cli(args ...string) string {
	s.t.Helper()
	caFile := filepath.Join(s.dir, "ca.pem")
	os.WriteFile(caFile, []byte(s.hubCA), 0o600)
	cmd := exec.Command(s.shoal, args...)
	cmd.Env = append(os.Environ(), "SHOAL_OPERATOR_TOKEN="+s.op, "SHOAL_HUB=https://"+s.hubAddr, "SHOAL_HUB_CA="+caFile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("shoal %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// addRelay enrols relay id through the CLI and starts it.
func (s *relaySite) addRelay(id string) *relayProc {
	var tr api.TokenResponse
	if err := json.Unmarshal([]byte(s.cli("token", "create", "--relay", id, "--host", "127.0.0.1", "--json")), &tr); err != nil {
		s.t.Fatal(err)
	}
	rp := &relayProc{id: id, addr: freeAddr(s.t), state: filepath.Join(s.dir, "relay-"+id)}
	out, err := exec.Command(s.shoal, "relay", "enrol", "--hub", "https://"+s.hubAddr, "--token", tr.Token, "--ca-fingerprint", tr.CAFingerprint, "--state", rp.state).CombinedOutput()
	if err != nil {
		s.t.Fatalf("relay enrol: %v\n%s", err, out)
	}
	s.relays[id] = rp
	s.startRelay(rp)
	return rp
}

func (s *relaySite) startRelay(rp *relayProc) {
	if rp.metrics == "" {
		rp.metrics = freeAddr(s.t)
	}
	rp.proc = startProc(s.t, "relay "+rp.id, s.shoal, "relay", "run", "--hub", "https://"+s.hubAddr, "--state", rp.state, "--listen", rp.addr,
		"--fleet", s.repo.URL(), "--fleet-interval", "1h", "--poll-wait", "5s", "--status-interval", "1s", "--log-level", "debug", "--metrics-addr", rp.metrics)
	waitUntil(s.t, 30*time.Second, "relay "+rp.id, func() bool {
		resp, err := (&http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}).Get("https://" + rp.addr + "/healthz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st api.RelayStatus
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Mirror.Commit != ""
	})
}

func (rp *relayProc) url() string { return "https://" + rp.addr }

// simDevice is a device simulated with the agent's own client: it enrols
// and reports through a relay.
type simDevice struct {
	id  string
	cl  *client.Client
	hc  *http.Client
	seq uint64
}

func (s *relaySite) simDevice(id string, via *relayProc) *simDevice {
	t := s.t
	var tr api.TokenResponse
	if err := json.Unmarshal([]byte(s.cli("token", "create", "--device", id, "--json")), &tr); err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := client.Enrol(t.Context(), via.url(), tr.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: tr.CAFingerprint})
	if err != nil {
		t.Fatalf("enrol %s through relay %s: %v", id, via.id, err)
	}
	cl, err := client.New(client.Options{Relays: []string{via.url()}, Key: key, Cert: c, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	tc, _ := tls.X509KeyPair([]byte(c.Certificate), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(c.CA))
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{tc}}}}
	t.Cleanup(cl.CloseIdleConnections)
	t.Cleanup(hc.CloseIdleConnections)
	return &simDevice{id: id, cl: cl, hc: hc}
}

// report sends the next report; the relay must take it whatever the hub does.
func (d *simDevice) report(t *testing.T) {
	t.Helper()
	d.seq++
	s := &api.Status{APIVersion: api.Version, DeviceID: d.id, Seq: d.seq, Time: time.Now().UTC(), State: api.StateConverged}
	if _, err := d.cl.Send(t.Context(), s); err != nil {
		t.Fatalf("%s report %d: %v", d.id, d.seq, err)
	}
}

func (s *relaySite) hubSeqs(id string) string {
	st, err := store.Open(s.t.Context(), s.db)
	if err != nil {
		s.t.Fatal(err)
	}
	defer st.Close()
	rs, err := st.Reports(s.t.Context(), id, 10000)
	if err != nil {
		s.t.Fatal(err)
	}
	seqs := make([]string, len(rs))
	for i, r := range rs {
		seqs[len(rs)-1-i] = fmt.Sprint(r.Seq)
	}
	return strings.Join(seqs, ",")
}

func upTo(n uint64) string {
	var s []string
	for i := uint64(1); i <= n; i++ {
		s = append(s, fmt.Sprint(i))
	}
	return strings.Join(s, ",")
}

func (s *relaySite) deviceRelay(id string) string {
	st, err := store.Open(s.t.Context(), s.db)
	if err != nil {
		s.t.Fatal(err)
	}
	defer st.Close()
	d, _ := st.Device(s.t.Context(), id)
	return d.Relay
}

// TestRelayProcesses runs a hub, two relays and a real shoal-agent as
// processes, with real git, and breaks them: the uplink is cut while
// devices report, the relay is killed with -9 during a forward and during
// an artifact download, and a device moves to another site's relay.
func TestRelayProcesses(t *testing.T) {
	s := newRelaySite(t)
	ra := s.addRelay("site-a")

	t.Run("agent through the relay", func(t *testing.T) {
		state := filepath.Join(s.dir, "agent-d1")
		cfg := filepath.Join(s.dir, "agent-d1.yaml")
		// The fleet repo's own URL cannot be reached: only the relay's mirror serves it.
		os.WriteFile(cfg, []byte(fmt.Sprintf("device_id: d1\nstate_dir: %s\nrepo:\n  url: https://127.0.0.1:1/fleet.git\nmetrics_addr: \"\"\ndocker_root: \"\"\n"+
			"containers:\n  enabled: false\ntrust:\n  tpm: none\npoll_interval: 2s\nhub_url: https://%s\nrelays: [%s]\n", state, s.hubAddr, ra.url())), 0o600)
		var tr api.TokenResponse
		json.Unmarshal([]byte(s.cli("token", "create", "--device", "d1", "--json")), &tr)
		if out, err := exec.Command(s.agent, "enrol", "--config", cfg, "--hub", ra.url(), "--token", tr.Token, "--ca-fingerprint", tr.CAFingerprint).CombinedOutput(); err != nil {
			t.Fatalf("shoal-agent enrol through the relay: %v\n%s", err, out)
		}
		ag := startProc(t, "agent d1", s.agent, "--config", cfg)
		head := s.repo.Git("rev-parse", "HEAD")
		st, err := store.Open(t.Context(), s.db)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		waitUntil(t, 90*time.Second, "d1 converged on the fleet commit, through the relay", func() bool {
			rs, err := st.Reports(t.Context(), "d1", 1)
			if err != nil || len(rs) == 0 {
				return false
			}
			var rep api.Status
			json.Unmarshal(rs[0].Body, &rep)
			return rep.Commit.Applied == head
		})
		if r := s.deviceRelay("d1"); r != "site-a" {
			t.Fatalf("d1 reports through %q; agent log:\n%s", r, ag.log.String())
		}
		ag.stop()
	})

	t.Run("uplink cut while devices report", func(t *testing.T) {
		devs := []*simDevice{s.simDevice("u1", ra), s.simDevice("u2", ra), s.simDevice("u3", ra)}
		for range 3 {
			for _, d := range devs {
				d.report(t)
			}
		}
		s.hub.stop() // the uplink goes
		for range 10 {
			for _, d := range devs {
				d.report(t)
			}
			time.Sleep(100 * time.Millisecond) // devices report every so often
		}
		s.startHub()
		for _, d := range devs {
			waitUntil(t, 60*time.Second, d.id+"'s reports at the hub, in order", func() bool { return s.hubSeqs(d.id) == upTo(d.seq) })
		}
	})

	t.Run("relay killed during a forward", func(t *testing.T) {
		var devs []*simDevice
		for i := range 6 {
			devs = append(devs, s.simDevice(fmt.Sprintf("k%d", i), ra))
		}
		s.hub.stop()
		for range 100 {
			for _, d := range devs {
				d.report(t)
			}
		}
		held := func() int {
			n := 0
			for _, d := range devs {
				ents, _ := os.ReadDir(filepath.Join(ra.state, "outbox", d.id))
				n += len(ents)
			}
			return n
		}
		s.startHub()
		// Kill it once the hub has some of what it holds, not all.
		deadline := time.Now().Add(60 * time.Second)
		for held() == len(devs)*100 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		ra.proc.kill()
		left := held()
		if left == 0 || left == len(devs)*100 {
			t.Fatalf("killed with %d of %d reports held: not during the forward", left, len(devs)*100)
		}
		t.Logf("killed with %d of %d reports still held", left, len(devs)*100)
		s.startRelay(ra)
		for _, d := range devs {
			waitUntil(t, 60*time.Second, d.id+"'s reports at the hub after the crash", func() bool { return s.hubSeqs(d.id) == upTo(d.seq) })
		}
	})

	t.Run("relay killed during an artifact download", func(t *testing.T) {
		d := s.simDevice("a1", ra)
		art := ra.url() + "/v1/artifacts?url=" + url.QueryEscape(s.origin.URL+"/os.img")
		s.slow.Store(true)
		before := s.originGets.Load()
		go func() {
			if resp, err := d.hc.Get(art); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
		tmp := filepath.Join(ra.state, "cache", "tmp")
		waitUntil(t, 30*time.Second, "the download under way", func() bool {
			ents, _ := os.ReadDir(tmp)
			for _, e := range ents {
				if fi, err := e.Info(); err == nil && fi.Size() > 1<<20 {
					return true
				}
			}
			return false
		})
		ra.proc.kill()
		if _, err := os.Stat(filepath.Join(ra.state, "cache", "sha256", s.relSHA)); err == nil {
			t.Fatal("a half-fetched artifact is in the cache")
		}
		s.slow.Store(false)
		s.startRelay(ra)
		resp, err := d.hc.Get(art)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(b, s.release) {
			t.Fatalf("after the crash: %d, %d bytes, right=%v", resp.StatusCode, len(b), bytes.Equal(b, s.release))
		}
		if n := s.originGets.Load() - before; n != 2 {
			t.Fatalf("origin fetched %d times, want 2 (the cut one and one whole)", n)
		}
		if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
			t.Fatalf("cache/tmp holds %d files after restart", len(ents))
		}
	})

	t.Run("offline site updated from a USB bundle", func(t *testing.T) {
		d := s.simDevice("o1", ra)
		s.hub.stop() // the uplink is down for this whole story
		defer s.startHub()
		// A new fleet commit with a new release, on a stick; the relay cannot
		// fetch either, and the release's origin is gone.
		rel2 := bytes.Repeat([]byte("release two\n"), 100_000)
		sum := sha256.Sum256(rel2)
		relFile := filepath.Join(s.dir, "os2.img")
		os.WriteFile(relFile, rel2, 0o600)
		head := s.repo.Commit(map[string]string{
			"releases/os.yaml": fmt.Sprintf("version: 2.0.0\nurl: %s/os2.img\nsize: %d\nsha256: %x\nsignature: c2ln\n", s.origin.URL, len(rel2), sum),
			"fleet.yaml":       "spec:\n  release: os\n  update:\n    offline_ok: true\n",
		}, "fleet: release 2.0.0")
		s.origin.Config.Handler = http.NotFoundHandler()
		key, err := provision.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		bundle := filepath.Join(s.dir, "site.shoal")
		bf, _ := os.Create(bundle)
		if _, err := provision.Create(t.Context(), bf, provision.CreateOptions{FleetDir: s.repo.Dir, Devices: []string{"d1"}, Key: key,
			Release: true, ReleaseFile: relFile, TempDir: s.dir}); err != nil {
			t.Fatal(err)
		}
		bf.Close()
		pub, _ := provision.MarshalPublicKey(key.Public().(ed25519.PublicKey))
		keys := filepath.Join(s.dir, "bundle-keys.pem")
		os.WriteFile(keys, pub, 0o600)
		polled := make(chan *api.Poke, 1)
		go func() {
			for t.Context().Err() == nil {
				p, err := d.cl.WaitPoke(t.Context(), 0)
				if err == nil && p != nil && p.Reason == api.ReasonRelayImport {
					polled <- p
					return
				}
			}
		}()
		time.Sleep(300 * time.Millisecond) // the device's poll is in place (a missed poke only fails the wait below)
		out, err := exec.Command(s.shoal, "relay", "import", bundle, "--state", ra.state, "--bundle-keys", keys, "--fleet", s.repo.URL()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), head) {
			t.Fatalf("shoal relay import: %v\n%s", err, out)
		}
		select {
		case p := <-polled:
			if p.Commit != head {
				t.Fatalf("import poke for commit %q, want %s", p.Commit, head)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no poke after the import")
		}
		resp, err := d.hc.Get(ra.url() + "/v1/artifacts?url=" + url.QueryEscape(s.origin.URL+"/os2.img"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(b, rel2) {
			t.Fatalf("the imported release from the relay: %d, %d bytes", resp.StatusCode, len(b))
		}
		// A bundle signed by another key changes nothing.
		other, _ := provision.GenerateKey()
		opub, _ := provision.MarshalPublicKey(other.Public().(ed25519.PublicKey))
		os.WriteFile(keys, opub, 0o600)
		if out, err := exec.Command(s.shoal, "relay", "import", bundle, "--state", ra.state, "--bundle-keys", keys).CombinedOutput(); err == nil {
			t.Fatalf("a bundle signed by an untrusted key was imported: %s", out)
		}
	})

	t.Run("metrics address serves no device API", func(t *testing.T) {
		for path, want := range map[string]int{"/metrics": 200, "/healthz": 200, "/v1/enrol": 404, "/git/fleet.git/info/refs": 404} {
			resp, err := http.Get("http://" + ra.metrics + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != want && !(want == 404 && resp.StatusCode == 405) {
				t.Errorf("%s on --metrics-addr: %d, want %d", path, resp.StatusCode, want)
			}
		}
	})

	t.Run("device moves to another site", func(t *testing.T) {
		rb := s.addRelay("site-b")
		d := s.simDevice("m1", ra)
		d.report(t)
		waitUntil(t, 30*time.Second, "m1 through site-a", func() bool { return s.deviceRelay("m1") == "site-a" })
		// The same device, its certificate and key, now at site b.
		d.cl = clientVia(t, d, rb)
		d.report(t)
		waitUntil(t, 30*time.Second, "m1 through site-b", func() bool { return s.deviceRelay("m1") == "site-b" && s.hubSeqs("m1") == upTo(2) })
		// Site a no longer reads m1's records.
		resp, err := d.hc.Get(ra.url() + "/v1/devices/m1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Fatalf("site a reads m1 after it moved: %d", resp.StatusCode)
		}
	})
}

// clientVia is d's client pointed at another relay.
func clientVia(t *testing.T, d *simDevice, rp *relayProc) *client.Client {
	t.Helper()
	tc := d.cl.TLSCertificate()
	cl, err := client.New(client.Options{Relays: []string{rp.url()}, Key: tc.PrivateKey.(*ecdsa.PrivateKey), Cert: d.cl.Certificate(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseIdleConnections)
	return cl
}
