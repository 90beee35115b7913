package provision

import (
	"archive/tar"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/internal/dockertest"
	"github.com/shoalfleet/shoal/source"
	"github.com/shoalfleet/shoal/spec"
)

// env is one operator with a fleet repo, an image in the real Engine, a
// stick, and one device's state dir.
type env struct {
	t      *testing.T
	cli    *client.Client
	label  string
	fleet  *fleetRepo
	key    ed25519.PrivateKey
	stick  string
	state  string
	devKey *ecdsa.PrivateKey
	tag    string
	images string // the operator's directory of image tars
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cli := dockertest.Client(t)
	label := dockertest.Label(t, cli)
	tag := "shoal-provision-test:" + label[len(label)-12:]
	dockertest.Image(t, cli, tag, label, nil)
	images := t.TempDir()
	sum := saveTar(t, cli, tag, images)
	dk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &env{
		t: t, cli: cli, label: label, fleet: newFleet(t, tag, sum), key: newKey(t),
		stick: stick(t), state: t.TempDir(), devKey: dk, tag: tag, images: images,
	}
}

func (e *env) createOpts() CreateOptions {
	return CreateOptions{
		FleetDir: e.fleet.dir, Devices: []string{"dev-1"}, Key: e.key, Images: e.cli, ImageDir: e.images,
		HubURL: "https://hub.example:8443", RepoURL: "https://git.example/fleet.git",
		Tokens: map[string]string{"dev-1": "tok-dev-1"}, CommitSigners: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB op@example\n",
	}
}

func (e *env) applyOpts() ApplyOptions {
	return ApplyOptions{StateDir: e.state, DeviceID: "dev-1", Images: e.cli, Signer: e.devKey, KeyKind: "software",
		BundleKeys: []ed25519.PublicKey{e.key.Public().(ed25519.PublicKey)}}
}

func (e *env) removeImage() {
	e.t.Helper()
	if _, err := e.cli.ImageRemove(context.Background(), e.tag, image.RemoveOptions{Force: true}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.cli.ImageInspect(context.Background(), e.tag); err == nil {
		e.t.Fatal("image still present after remove")
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestCreateApply provisions a device from a stick: the git bundle passes
// `git bundle verify`, the image comes back into the real Engine, the
// config, trust roots and queued enrolment land in the state dir, the fleet
// repo holds the commit, and a signed receipt sits next to the bundle.
func TestCreateApply(t *testing.T) {
	e := newEnv(t)
	commit := e.fleet.run("rev-parse", "HEAD")
	p := create(t, e.stick, "dev-1.shoal", e.createOpts())

	// The git member is a real git bundle.
	for _, en := range readEntries(t, p) {
		if en.hdr.Name == "git/fleet.bundle" {
			gb := filepath.Join(t.TempDir(), "fleet.bundle")
			if err := os.WriteFile(gb, en.data, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(e.fleet.git, "-C", e.fleet.dir, "bundle", "verify", gb)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("git bundle verify: %v\n%s", err, out)
			}
			clone := filepath.Join(t.TempDir(), "clone")
			if out, err := exec.Command(e.fleet.git, "clone", "-q", gb, clone).CombinedOutput(); err != nil {
				t.Fatalf("git clone from bundle: %v\n%s", err, out)
			}
		}
	}

	e.removeImage()
	res, err := Apply(ctxT(t), p, e.applyOpts())
	if err != nil {
		t.Fatal(err)
	}
	if !res.First || res.Commit != commit || res.DeviceID != "dev-1" {
		t.Fatalf("result = %+v, want first provisioning of dev-1 at %s", res, commit)
	}
	if _, err := e.cli.ImageInspect(context.Background(), e.tag); err != nil {
		t.Fatalf("image not loaded into the Engine: %v", err)
	}
	src, err := source.New(source.Options{URL: "https://git.example/fleet.git", Dir: filepath.Join(e.state, "repo")})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := src.Open(commit)
	if err != nil {
		t.Fatalf("fleet repo on the device: %v", err)
	}
	fl, err := spec.Load(rev.FS)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := fl.Render("dev-1")
	if err != nil || dev.Apps[0].Image.Ref != e.tag {
		t.Fatalf("render from the device repo: %v %+v", err, dev)
	}
	enr, err := ReadEnrolment(e.state)
	if err != nil || enr == nil || enr.Token != "tok-dev-1" || enr.HubURL != "https://hub.example:8443" {
		t.Fatalf("queued enrolment = %+v, %v", enr, err)
	}
	cfg, err := ReadDeviceConfig(e.state)
	if err != nil || cfg.DeviceID != "dev-1" || cfg.RepoURL != "https://git.example/fleet.git" {
		t.Fatalf("device config = %+v, %v", cfg, err)
	}
	keys, err := ReadPublicKeys(Trust(e.state).BundleKeys)
	if err != nil || len(keys) != 1 || !keys[0].Equal(e.key.Public()) {
		t.Fatalf("bundle keys = %v, %v", keys, err)
	}
	if b, err := os.ReadFile(Trust(e.state).CommitSigners); err != nil || !strings.HasPrefix(string(b), "ssh-ed25519") {
		t.Fatalf("commit signers: %q %v", b, err)
	}
	b, err := os.ReadFile(res.Receipt)
	if err != nil {
		t.Fatal(err)
	}
	rc, pub, err := api.VerifyReceipt(b)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Result != api.ReceiptApplied || rc.Commit != commit || rc.BundleHash != res.BundleHash || !rc.First {
		t.Fatalf("receipt = %+v", rc)
	}
	if !e.devKey.PublicKey.Equal(pub) {
		t.Fatal("receipt not signed by the device key")
	}
	if err := RemoveEnrolment(e.state); err != nil {
		t.Fatal(err)
	}
	if enr, _ := ReadEnrolment(e.state); enr != nil {
		t.Fatal("enrolment still queued after RemoveEnrolment")
	}
}

// TestBadBundles: each bad bundle is refused with a clear error, a receipt
// says so, and the state dir of a provisioned device is unchanged byte for byte.
func TestBadBundles(t *testing.T) {
	e := newEnv(t)
	old := create(t, e.stick, "v0.shoal", e.createOpts())
	good1 := create(t, e.stick, "v1.shoal", e.createOpts())
	if _, err := Apply(ctxT(t), good1, e.applyOpts()); err != nil {
		t.Fatal(err)
	}
	e.fleet.write("devices/dev-1.yaml", "labels:\n  role: edge\n  hall: \"2\"\n")
	e.fleet.commit("second")
	good2 := create(t, e.stick, "v2.shoal", e.createOpts())

	// A fork: newer bundle, commit not descending from the applied one.
	e.fleet.run("checkout", "-q", "--orphan", "fork")
	e.fleet.write("devices/dev-1.yaml", "labels:\n  role: edge\n  fork: \"yes\"\n")
	e.fleet.commit("fork")
	fork := create(t, e.stick, "fork.shoal", e.createOpts())
	e.fleet.run("checkout", "-q", "main")

	wrongKey := e.createOpts()
	wrongKey.Key = newKey(t)
	wrong := create(t, e.stick, "wrong.shoal", wrongKey)

	es := readEntries(t, good2)
	imgIdx := -1
	for i, en := range es {
		if strings.HasPrefix(en.hdr.Name, "images/") {
			imgIdx = i
		}
	}
	if imgIdx < 0 {
		t.Fatal("no image member")
	}
	variant := func(name string, f func([]entry) []entry) string {
		cp := make([]entry, len(es))
		for i, en := range es {
			cp[i] = entry{hdr: en.hdr, data: append([]byte(nil), en.data...)}
		}
		p := filepath.Join(e.stick, name)
		writeEntries(t, p, f(cp))
		return p
	}
	flipped := variant("flipped.shoal", func(es []entry) []entry {
		es[imgIdx].data[len(es[imgIdx].data)/2] ^= 0x01
		return es
	})
	extra := variant("extra.shoal", func(es []entry) []entry {
		return append(es, entry{hdr: tar.Header{Name: "images/extra.tar", Typeflag: tar.TypeReg, Mode: 0o644}, data: []byte("x")})
	})
	// Names and types refused even when the manifest is signed by the right key.
	rename := func(name string) func([]entry) []entry {
		return func(es []entry) []entry {
			old := es[imgIdx].hdr.Name
			es = resign(t, es, e.key, func(m *Manifest) {
				for i := range m.Members {
					if m.Members[i].Name == old {
						m.Members[i].Name = name
					}
				}
			})
			es[imgIdx].hdr.Name = name
			return es
		}
	}
	dotdot := variant("dotdot.shoal", rename("../../evil.tar"))
	abs := variant("abs.shoal", rename("/etc/evil.tar"))
	unlisted := variant("unlisted-dotdot.shoal", func(es []entry) []entry {
		es[imgIdx].hdr.Name = "../evil.tar"
		return es
	})
	symlink := variant("symlink.shoal", func(es []entry) []entry {
		es[imgIdx].hdr.Typeflag = tar.TypeSymlink
		es[imgIdx].hdr.Linkname = "/etc/shadow"
		es[imgIdx].data = nil
		return es
	})
	raw, err := os.ReadFile(good2)
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(e.stick, "truncated.shoal")
	if err := os.WriteFile(truncated, raw[:len(raw)*2/3], 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		path string
		want error
		msg  string
	}{
		{"flipped byte in an image", flipped, ErrHash, "sha256"},
		{"signed by the wrong key", wrong, ErrSignature, "not a trusted bundle key"},
		{"truncated", truncated, ErrInvalid, "truncated"},
		{"member not in the manifest", extra, ErrInvalid, `"images/extra.tar" is not in the manifest`},
		{"member named with ..", dotdot, ErrInvalid, `"../../evil.tar" is not a clean relative path`},
		{"member with an absolute path", abs, ErrInvalid, "is absolute"},
		{"unlisted member named with ..", unlisted, ErrInvalid, "not in the manifest"},
		{"symlink member", symlink, ErrInvalid, "is a link"},
		{"same bundle replayed", good1, ErrReplay, "already applied"},
		{"older bundle replayed", old, ErrReplay, "not newer"},
		{"commit not descending from the applied one", fork, ErrReplay, "does not descend"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := treeHash(t, e.state)
			res, err := Apply(ctxT(t), tc.path, e.applyOpts())
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
			if after := treeHash(t, e.state); after != before {
				t.Fatal("state dir changed")
			}
			b, rerr := os.ReadFile(res.Receipt)
			if rerr != nil {
				t.Fatalf("no receipt: %v (%v)", rerr, res.ReceiptErr)
			}
			rc, _, rerr := api.VerifyReceipt(b)
			if tc.path == good1 {
				// The first application's receipt stays until it is imported.
				if rerr != nil || rc.Result != api.ReceiptApplied {
					t.Fatalf("receipt = %+v, %v", rc, rerr)
				}
				return
			}
			if rerr != nil || rc.Result != api.ReceiptRefused || rc.Reason != Reason(err) || len(rc.Errors) == 0 {
				t.Fatalf("receipt = %+v, %v", rc, rerr)
			}
		})
	}
	// And the good newer bundle still applies after all that.
	if _, err := Apply(ctxT(t), good2, e.applyOpts()); err != nil {
		t.Fatal(err)
	}
}

// TestAirGappedUpdate: a later bundle with a new commit, a new image and an
// OS release applies with no network; an older release is refused.
func TestAirGappedUpdate(t *testing.T) {
	e := newEnv(t)
	p1 := create(t, e.stick, "v1.shoal", e.createOpts())
	if _, err := Apply(ctxT(t), p1, e.applyOpts()); err != nil {
		t.Fatal(err)
	}
	tag2 := e.tag + "-v2"
	dockertest.Image(t, e.cli, tag2, e.label, map[string]string{"v": "2"})
	e.fleet.setImage(tag2, saveTar(t, e.cli, tag2, e.images))
	osImg := []byte(strings.Repeat("os image v2\n", 1000))
	e.fleet.write("images/os-2.img", string(osImg))
	e.fleet.write("releases/os-2.yaml", "version: 2.0.0\nurl: images/os-2.img\nsize: "+itoa(len(osImg))+"\nsha256: "+sha(osImg)+"\nsignature: c2ln\n")
	e.fleet.write("groups/edge.yaml", "selector:\n  match_labels:\n    role: edge\nspec:\n  apps:\n    web: {}\ndefaults:\n  release: os-2\n")
	c2 := e.fleet.commit("v2")
	o := e.createOpts()
	o.Release = true
	p2 := create(t, e.stick, "v2.shoal", o)
	if _, err := e.cli.ImageRemove(context.Background(), tag2, image.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}

	var installed []string
	ao := e.applyOpts()
	ao.InstallRelease = func(ctx context.Context, rel *spec.Release) error {
		b, err := os.ReadFile(strings.TrimPrefix(rel.URL, "file://"))
		if err != nil {
			return err
		}
		if sha(b) != rel.SHA256 {
			return errors.New("release image differs")
		}
		installed = append(installed, rel.Version)
		return nil
	}
	res, err := Apply(ctxT(t), p2, ao)
	if err != nil {
		t.Fatal(err)
	}
	if res.Commit != c2 || res.Release != "2.0.0" || len(installed) != 1 || res.First {
		t.Fatalf("result = %+v, installed %v", res, installed)
	}
	if _, err := e.cli.ImageInspect(context.Background(), tag2); err != nil {
		t.Fatalf("new image not loaded: %v", err)
	}

	// A newer bundle carrying an older release is refused.
	osOld := []byte("os image v1\n")
	e.fleet.write("images/os-1.img", string(osOld))
	e.fleet.write("releases/os-1.yaml", "version: 1.0.0\nurl: images/os-1.img\nsize: "+itoa(len(osOld))+"\nsha256: "+sha(osOld)+"\nsignature: c2ln\n")
	e.fleet.write("groups/edge.yaml", "selector:\n  match_labels:\n    role: edge\nspec:\n  apps:\n    web: {}\ndefaults:\n  release: os-1\n")
	e.fleet.commit("downgrade")
	p3 := create(t, e.stick, "v3.shoal", o)
	before := treeHash(t, e.state)
	if _, err := Apply(ctxT(t), p3, ao); !errors.Is(err, ErrReplay) || !strings.Contains(err.Error(), "older than the installed 2.0.0") {
		t.Fatalf("downgrade: err = %v", err)
	}
	if treeHash(t, e.state) != before {
		t.Fatal("state dir changed")
	}
}

// TestTrustRoots: a provisioned device takes new trust roots only from a
// bundle signed by its current bundle key.
func TestTrustRoots(t *testing.T) {
	e := newEnv(t)
	if _, err := Apply(ctxT(t), create(t, e.stick, "a.shoal", e.createOpts()), e.applyOpts()); err != nil {
		t.Fatal(err)
	}
	b := newKey(t)
	// Signed by B, installing B: refused.
	ob := e.createOpts()
	ob.Key = b
	before := treeHash(t, e.state)
	if _, err := Apply(ctxT(t), create(t, e.stick, "b.shoal", ob), e.applyOpts()); !errors.Is(err, ErrSignature) {
		t.Fatalf("err = %v, want ErrSignature", err)
	}
	if treeHash(t, e.state) != before {
		t.Fatal("state dir changed")
	}
	// Signed by A, rotating to B: accepted; then B's bundles apply.
	oa := e.createOpts()
	oa.BundleKeys = []ed25519.PublicKey{b.Public().(ed25519.PublicKey)}
	if _, err := Apply(ctxT(t), create(t, e.stick, "rotate.shoal", oa), e.applyOpts()); err != nil {
		t.Fatal(err)
	}
	e.fleet.commit("after rotation")
	if _, err := Apply(ctxT(t), create(t, e.stick, "b2.shoal", ob), e.applyOpts()); err != nil {
		t.Fatalf("bundle signed by the rotated-in key: %v", err)
	}
	// A key baked into the OS image gates the first provisioning.
	fresh := t.TempDir()
	ao := e.applyOpts()
	ao.StateDir = fresh
	ao.BundleKeys = []ed25519.PublicKey{newKey(t).Public().(ed25519.PublicKey)}
	if _, err := Apply(ctxT(t), create(t, e.stick, "c.shoal", e.createOpts()), ao); !errors.Is(err, ErrSignature) {
		t.Fatalf("first provisioning with a preinstalled key: err = %v", err)
	}
	// No bundle key at all: not trusted on first use unless asked; refused
	// with what to do, and nothing written to the state dir.
	ao.BundleKeys = nil
	before = treeHash(t, fresh)
	_, err := Apply(ctxT(t), create(t, e.stick, "d.shoal", e.createOpts()), ao)
	if !errors.Is(err, ErrSignature) || Reason(err) != "bundle-signature-untrusted" ||
		!strings.Contains(err.Error(), "trusted: none") || !strings.Contains(err.Error(), "provision.bundle_keys") {
		t.Fatalf("first bundle with no bundle keys: err = %v", err)
	}
	if treeHash(t, fresh) != before {
		t.Fatal("state dir changed by a refused first bundle")
	}
	ao.TrustFirstBundle = true
	if res, err := Apply(ctxT(t), create(t, e.stick, "e.shoal", e.createOpts()), ao); err != nil || !res.First {
		t.Fatalf("first bundle trusted on first use: %+v %v", res, err)
	}
}

// TestGroupBundle: one bundle provisions any device of a group, each with its own ID.
func TestGroupBundle(t *testing.T) {
	e := newEnv(t)
	o := e.createOpts()
	o.Devices, o.Group = nil, "edge"
	o.Tokens = map[string]string{"dev-1": "t1", "dev-2": "t2"}
	p := create(t, e.stick, "edge.shoal", o)
	for _, id := range []string{"dev-1", "dev-2"} {
		ao := e.applyOpts()
		ao.StateDir, ao.DeviceID = t.TempDir(), id
		res, err := Apply(ctxT(t), p, ao)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		enr, _ := ReadEnrolment(ao.StateDir)
		if res.DeviceID != id || enr == nil || enr.Token != o.Tokens[id] {
			t.Fatalf("%s: result %+v enrolment %+v", id, res, enr)
		}
	}
	// A device with no ID given finds its own in the bundle's hardware map.
	o.Hardware = map[string]string{"serial-0002": "dev-2"}
	e.fleet.commit("hardware map")
	pm := create(t, e.stick, "edge-hw.shoal", o)
	ah := e.applyOpts()
	ah.StateDir, ah.DeviceID, ah.HardwareID = t.TempDir(), "", func() string { return "serial-0002" }
	if res, err := Apply(ctxT(t), pm, ah); err != nil || res.DeviceID != "dev-2" {
		t.Fatalf("by hardware ID: %v %+v", err, res)
	}
	if cfg, _ := ReadDeviceConfig(ah.StateDir); cfg == nil || cfg.DeviceID != "dev-2" {
		t.Fatalf("device config %+v", cfg)
	}
	os.Remove(pm)

	ao := e.applyOpts()
	ao.StateDir, ao.DeviceID = t.TempDir(), "other"
	before := treeHash(t, ao.StateDir)
	if _, err := Apply(ctxT(t), p, ao); !errors.Is(err, ErrWrongDevice) {
		t.Fatalf("device outside the group: err = %v", err)
	}
	if treeHash(t, ao.StateDir) != before {
		t.Fatal("state dir changed")
	}
	// A directory (the stick) applies the bundles for this device.
	ao.StateDir, ao.DeviceID = t.TempDir(), "dev-2"
	rs, err := ApplyPath(ctxT(t), e.stick, ao)
	if err != nil || len(rs) != 1 || rs[0].DeviceID != "dev-2" {
		t.Fatalf("apply dir: %v %+v", err, rs)
	}
}

// TestReceipts: receipts on a stick are read and checked; a forged one is refused.
func TestReceipts(t *testing.T) {
	dir := t.TempDir()
	dk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := &api.Receipt{APIVersion: api.ReceiptVersion, DeviceID: "dev-1", BundleHash: strings.Repeat("a", 64),
		Commit: strings.Repeat("b", 40), Result: api.ReceiptApplied, Time: time.Unix(1e9, 0).UTC()}
	if err := WriteReceipt(filepath.Join(dir, "b.dev-1.receipt.json"), good, dk); err != nil {
		t.Fatal(err)
	}
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	if err := WriteReceipt(filepath.Join(dir, "c.dev-1.receipt.json"), &api.Receipt{APIVersion: api.ReceiptVersion, DeviceID: "dev-1", Result: api.ReceiptRefused, Reason: "bundle-invalid"}, ek); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "b.dev-1.receipt.json"))
	var forged map[string]any
	if err := json.Unmarshal(b, &forged); err != nil {
		t.Fatal(err)
	}
	forged["commit"] = strings.Repeat("c", 40)
	fb, _ := json.Marshal(forged)
	if err := os.WriteFile(filepath.Join(dir, "forged.dev-1.receipt.json"), fb, 0o644); err != nil {
		t.Fatal(err)
	}
	unsigned, _ := json.Marshal(good)
	var u map[string]any
	_ = json.Unmarshal(unsigned, &u)
	delete(u, "signature")
	ub, _ := json.Marshal(u)
	if err := os.WriteFile(filepath.Join(dir, "unsigned.dev-1.receipt.json"), ub, 0o644); err != nil {
		t.Fatal(err)
	}
	raws, recs, errs := ReadReceipts(dir)
	if len(raws) != 2 || len(recs) != 2 || len(errs) != 2 {
		t.Fatalf("good %d, errors %v", len(raws), errs)
	}
	for _, err := range errs {
		if !errors.Is(err, ErrReceipt) {
			t.Fatalf("err = %v", err)
		}
	}
	if !strings.Contains(errs[0].Error(), "forged") || !strings.Contains(errs[0].Error(), "does not verify") {
		t.Fatalf("forged: %v", errs[0])
	}
	// A receipt signed by another key verifies on its own: the hub must
	// compare the key with the device's enrolled one.
	_, pub, err := api.VerifyReceipt(raws[1])
	if err != nil || dk.PublicKey.Equal(pub) {
		t.Fatalf("key of the second receipt: %v", err)
	}
}

// saveTar writes `docker save ref` to dir/<sha256>.tar and returns the sha256.
func saveTar(t *testing.T, cli *client.Client, ref, dir string) string {
	t.Helper()
	tmp := filepath.Join(dir, "save.tmp")
	f, err := os.Create(tmp)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := cli.ImageSave(context.Background(), []string{ref})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := os.ReadFile(tmp)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha(b)
	if err := os.Rename(tmp, filepath.Join(dir, sum+".tar")); err != nil {
		t.Fatal(err)
	}
	return sum
}

func itoa(n int) string { return fmtInt(n) }

// TestWatch: a bundle that appears on the watched mount path is applied once.
func TestWatch(t *testing.T) {
	e := newEnv(t)
	mount := filepath.Join(t.TempDir(), "usb")
	ctx, cancel := context.WithCancel(ctxT(t))
	results := make(chan []*Result, 4)
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, WatchOptions{Dir: mount, Interval: 20 * time.Millisecond, Apply: e.applyOpts(),
			OnApply: func(rs []*Result, err error) {
				if err != nil {
					t.Errorf("watch: %v", err)
				}
				results <- rs
			}})
	}()
	if err := os.MkdirAll(mount, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := create(t, t.TempDir(), "dev-1.shoal", e.createOpts())
	b, _ := os.ReadFile(tmp)
	// Written under another name and renamed, as a copy to a stick would
	// show up whole.
	os.WriteFile(filepath.Join(mount, "dev-1.part"), b, 0o644)
	os.Rename(filepath.Join(mount, "dev-1.part"), filepath.Join(mount, "dev-1.shoal"))
	select {
	case rs := <-results:
		if len(rs) != 1 || rs[0].Err != nil || !rs[0].First {
			t.Fatalf("results %+v", rs)
		}
	case <-time.After(time.Minute):
		t.Fatal("bundle on the mount path not applied within a minute")
	}
	// Later passes find nothing new: no second callback before we stop.
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("watch returned %v", err)
	}
	select {
	case rs := <-results:
		t.Fatalf("applied again: %+v", rs)
	default:
	}
}
