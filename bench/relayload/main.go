// Command relayload measures a site relay against its baselines, in one run
// on loopback:
//
//   - N simulated devices fetch one release through the relay (cold: the
//     relay fetches it from its origin once; then warm): bytes fetched from
//     the origin, and each device's throughput;
//   - the same N fetch it straight from the origin (no relay): bytes fetched
//     from the origin;
//   - the same N fetch it from Debian's nginx over TLS 1.3 on loopback, the
//     same file: each device's throughput, the baseline for the relay's;
//   - D devices send R status reports each through the relay, and straight
//     to the hub: reports a second until the hub holds them all.
//
// It prints markdown table rows (what | ours | baseline | ratio).
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/api/client"
	"github.com/shoalfleet/shoal/hub"
	"github.com/shoalfleet/shoal/hub/store"
	"github.com/shoalfleet/shoal/relay"
)

func main() {
	devices := flag.Int("devices", 50, "simulated devices fetching the release")
	sizeMiB := flag.Int("size", 256, "release size in MiB")
	repDevices := flag.Int("report-devices", 50, "devices sending status reports")
	reports := flag.Int("reports", 40, "reports each")
	flag.Parse()
	dir, err := os.MkdirTemp("", "relayload-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	// The release, on disk for the origin and nginx alike.
	relPath := filepath.Join(dir, "www", "os.img")
	os.MkdirAll(filepath.Dir(relPath), 0o755)
	f, _ := os.Create(relPath)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for i := 0; i < *sizeMiB; i++ {
		rand.Read(buf)
		f.Write(buf)
		h.Write(buf)
	}
	f.Close()
	relSHA := hex.EncodeToString(h.Sum(nil))
	size := int64(*sizeMiB) << 20

	// The origin: plain HTTP, counting what it sends.
	var originBytes atomic.Int64
	ol, _ := net.Listen("tcp", "127.0.0.1:0")
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rf, err := os.Open(relPath)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer rf.Close()
		w.Header().Set("Content-Length", fmt.Sprint(size))
		n, _ := io.Copy(w, rf)
		originBytes.Add(n)
	})}
	go origin.Serve(ol)
	originURL := "http://" + ol.Addr().String() + "/os.img"

	// Hub, fleet repo, relay.
	st, err := store.Open(ctx, "sqlite://"+filepath.Join(dir, "hub.db"))
	if err != nil {
		log.Fatal(err)
	}
	hb, err := hub.New(ctx, hub.Options{Store: st})
	if err != nil {
		log.Fatal(err)
	}
	hl, _ := net.Listen("tcp", "127.0.0.1:0")
	go hb.Run(ctx, hl)
	hubURL := "https://" + hl.Addr().String()
	repo := filepath.Join(dir, "fleet")
	os.MkdirAll(filepath.Join(repo, "releases"), 0o755)
	os.WriteFile(filepath.Join(repo, "fleet.yaml"), []byte("spec: {}\n"), 0o644)
	os.WriteFile(filepath.Join(repo, "releases", "os.yaml"), []byte(fmt.Sprintf("version: 1.0.0\nurl: %s\nsize: %d\nsha256: %s\nsignature: c2ln\n", originURL, size, relSHA)), 0o644)
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "."}, {"-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "fleet"}} {
		cmd := exec.Command("git", args...)
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			log.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	tr, err := hub.CreateRelayToken(ctx, st, "site", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		log.Fatal(err)
	}
	rdir := filepath.Join(dir, "relay")
	if _, err := relay.Enrol(ctx, rdir, relay.EnrolOptions{Hub: hubURL, Token: tr.Token, CAFingerprint: hb.CAFingerprint()}); err != nil {
		log.Fatal(err)
	}
	rl, err := relay.New(relay.Options{StateDir: rdir, Hub: hubURL, Mirror: relay.MirrorOptions{URL: "file://" + repo, Interval: time.Hour}})
	if err != nil {
		log.Fatal(err)
	}
	ll, _ := net.Listen("tcp", "127.0.0.1:0")
	go rl.Run(ctx, ll)
	relayURL := "https://" + ll.Addr().String()
	waitFor("the relay's mirror", func() bool { return rl.Status().Mirror.Commit != "" })

	// Devices: each with its own certificate and its own connection.
	type dev struct {
		id string
		cl *client.Client
		tc tls.Certificate
	}
	n := max(*devices, *repDevices)
	devs := make([]*dev, n)
	var pool *x509.CertPool
	for i := range devs {
		id := fmt.Sprintf("dev-%03d", i)
		tok, err := hub.CreateEnrolToken(ctx, st, id, time.Hour, time.Now())
		if err != nil {
			log.Fatal(err)
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c, err := client.Enrol(ctx, hubURL, tok.Token, key, api.KeySoftware, client.EnrolOptions{CAFingerprint: hb.CAFingerprint()})
		if err != nil {
			log.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		tc, _ := tls.X509KeyPair([]byte(c.Certificate), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
		if pool == nil {
			pool = x509.NewCertPool()
			pool.AppendCertsFromPEM([]byte(c.CA))
		}
		devs[i] = &dev{id: id, tc: tc}
		devs[i].cl, _ = client.New(client.Options{Hub: hubURL, Key: key, Cert: c})
	}

	// fetchAll has the first k devices fetch u at once, each on its own
	// HTTP/1.1 connection; it returns each device's throughput (bytes/s).
	fetchAll := func(k int, u string, roots *x509.CertPool, withCert bool) []float64 {
		out := make([]float64, k)
		var wg sync.WaitGroup
		for i := 0; i < k; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc := &tls.Config{RootCAs: roots}
				if withCert {
					tc.Certificates = []tls.Certificate{devs[i].tc}
				}
				hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableCompression: true}}
				defer hc.CloseIdleConnections()
				start := time.Now()
				resp, err := hc.Get(u)
				if err != nil {
					log.Fatalf("fetch %s: %v", u, err)
				}
				got, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10))
				resp.Body.Close()
				if err != nil || got != size || resp.StatusCode != 200 {
					log.Fatalf("fetch %s: %d bytes, status %d, %v", u, got, resp.StatusCode, err)
				}
				out[i] = float64(got) / time.Since(start).Seconds()
			}()
		}
		wg.Wait()
		return out
	}
	artURL := relayURL + "/v1/artifacts?url=" + url.QueryEscape(originURL)

	// Through the relay: cold, then warm.
	originBytes.Store(0)
	cold := fetchAll(*devices, artURL, pool, true)
	viaRelay := originBytes.Load()
	warm := fetchAll(*devices, artURL, pool, true)
	viaRelay2 := originBytes.Load()
	// Straight from the origin.
	originBytes.Store(0)
	fetchAll(*devices, originURL, nil, false)
	direct := originBytes.Load()
	// nginx over TLS 1.3, the same file.
	ngx, ngxPool, stop := startNginx(dir, filepath.Dir(relPath))
	defer stop()
	base := fetchAll(*devices, ngx+"/os.img", ngxPool, false)

	mib := func(v float64) string { return fmt.Sprintf("%.1f MiB/s", v/(1<<20)) }
	fmt.Printf("| %d devices fetch a %d MiB release: bytes from the origin through the relay (cold cache, then warm) | %.2f× the release (%d MiB; %d MiB more warm) | without the relay: %.2f× (%d MiB) | %.3g |\n",
		*devices, *sizeMiB, float64(viaRelay)/float64(size), viaRelay>>20, (viaRelay2-viaRelay)>>20, float64(direct)/float64(size), direct>>20, float64(viaRelay)/float64(direct))
	fmt.Printf("| per-device throughput through the relay, warm cache, %d at once (median; min) | %s; %s | nginx (Debian), TLS 1.3, same file, same clients: %s; %s | %.2f |\n",
		*devices, mib(median(warm)), mib(minf(warm)), mib(median(base)), mib(minf(base)), median(warm)/median(base))
	fmt.Printf("| per-device throughput through the relay, cold cache (the wait for the one origin fetch included; median) | %s | nginx: %s | %.2f |\n",
		mib(median(cold)), mib(median(base)), median(cold)/median(base))

	// Reports: through the relay, then straight to the hub.
	k := *repDevices
	sendAll := func(base string, first uint64) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for i := 0; i < k; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := devs[i]
				cl, _ := client.New(client.Options{Hub: base, Key: d.tc.PrivateKey.(*ecdsa.PrivateKey), Cert: d.cl.Certificate()})
				defer cl.CloseIdleConnections()
				for s := first; s < first+uint64(*reports); s++ {
					if _, err := cl.Send(ctx, &api.Status{APIVersion: api.Version, DeviceID: d.id, Seq: s, Time: time.Now(), State: api.StateConverged}); err != nil {
						log.Fatalf("report: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		log.Printf("%s: every report acknowledged after %v", base, time.Since(start))
		last := first + uint64(*reports) - 1
		waitFor("every report at the hub", func() bool {
			for i := 0; i < k; i++ {
				d, err := st.Device(ctx, devs[i].id)
				if err != nil || d.LatestSeq < last {
					return false
				}
			}
			return true
		})
		return time.Since(start)
	}
	total := float64(k * *reports)
	tr1 := sendAll(relayURL, 1)
	tr2 := sendAll(hubURL, uint64(*reports)+1)
	fmt.Printf("| status reports, %d devices × %d, until the hub holds them all: through the relay (held on its disk, forwarded in order) | %.0f reports/s | straight to the hub: %.0f reports/s | %.2f |\n",
		k, *reports, total/tr1.Seconds(), total/tr2.Seconds(), tr2.Seconds()/tr1.Seconds())
}

func waitFor(what string, cond func() bool) {
	deadline := time.Now().Add(5 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			log.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func minf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

// startNginx serves root over TLS 1.3 on loopback with a fresh ECDSA
// P-256 certificate (as the relay's), sendfile off (no use under TLS).
func startNginx(dir, root string) (string, *x509.CertPool, func()) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			log.Fatal("nginx not found: apt-get install nginx")
		}
		bin = "/usr/sbin/nginx"
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	nd := filepath.Join(dir, "nginx")
	os.MkdirAll(nd, 0o755)
	os.WriteFile(filepath.Join(nd, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(nd, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
error_log %[1]s/error.log;
pid %[1]s/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen %[2]s ssl;
    ssl_certificate %[1]s/cert.pem;
    ssl_certificate_key %[1]s/key.pem;
    ssl_protocols TLSv1.3;
    root %[3]s;
  }
}
`, nd, addr, root)
	os.WriteFile(filepath.Join(nd, "nginx.conf"), []byte(conf), 0o600)
	cmd := exec.Command(bin, "-c", filepath.Join(nd, "nginx.conf"), "-e", filepath.Join(nd, "error.log"))
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	waitFor("nginx", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	pool := x509.NewCertPool()
	c, _ := x509.ParseCertificate(der)
	pool.AddCert(c)
	return "https://" + addr, pool, func() {
		cmd.Process.Kill()
		cmd.Wait()
		if s := strings.TrimSpace(errb.String()); s != "" {
			log.Print("nginx: ", s)
		}
	}
}
