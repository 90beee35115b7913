package updater

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/spec"
)

var bootloaders = []string{"uboot", "grub"}

func pass(context.Context) error { return nil }

// TestUpdateCommits runs a whole update: install, trial boot, gate passes, commit.
func TestUpdateCommits(t *testing.T) {
	for _, kind := range bootloaders {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			d := newDevice(t, kind)
			u := d.updater()
			img := randBytes(t, 1<<20+123)
			rel := d.release("1.1.0", img)
			pol := spec.UpdatePolicy{BootLimit: 3, TrialTimeout: spec.Duration(time.Minute)}

			st, err := u.Step(ctx, rel, pol, pass)
			if err != nil {
				t.Fatal(err)
			}
			if st.Phase != PhaseRebooting || d.rebooted != 1 {
				t.Fatalf("after install: phase %s, reboots %d; want rebooting, 1", st.Phase, d.rebooted)
			}
			if !bytes.Equal(fileBytes(t, d.slots[SlotB])[:len(img)], img) {
				t.Fatal("slot b does not hold the image")
			}
			if got := d.toolGet(VarUpgrade); got != "1" {
				t.Fatalf("Debian tool reads upgrade_available=%q before the trial boot, want 1", got)
			}
			d.boot()
			if d.booted != SlotB {
				t.Fatalf("trial boot started slot %s", d.booted)
			}
			st, err = u.Step(ctx, rel, pol, pass)
			if err != nil {
				t.Fatal(err)
			}
			if st.Phase != PhaseCommitted || st.Committed.Version != "1.1.0" || st.Committed.Slot != SlotB {
				t.Fatalf("after the gate passed: %+v", st)
			}
			for name, want := range map[string]string{VarSlot: SlotB, VarUpgrade: "0", VarCount: "0"} {
				if got := d.toolGet(name); got != want {
					t.Fatalf("Debian tool reads %s=%q after commit, want %q", name, got, want)
				}
			}
			// Later boots stay on b, and a Step with the same release does nothing.
			d.boot()
			d.boot()
			if d.booted != SlotB {
				t.Fatalf("after commit, boot started slot %s", d.booted)
			}
			if st, err = u.Step(ctx, rel, pol, pass); err != nil || st.Phase != PhaseCommitted || d.rebooted != 1 {
				t.Fatalf("steady state: %+v, %v, reboots %d", st, err, d.rebooted)
			}
		})
	}
}

// TestGateFailsRollsBack: the new slot's health gate fails; the updater rolls
// back, marks the release bad and does not retry it until its sha256 changes.
func TestGateFailsRollsBack(t *testing.T) {
	for _, kind := range bootloaders {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			d := newDevice(t, kind)
			u := d.updater()
			rel := d.release("1.1.0", randBytes(t, 200<<10))
			pol := spec.UpdatePolicy{BootLimit: 3, TrialTimeout: spec.Duration(time.Minute)}
			unhealthy := func(context.Context) error { return errors.New("container web: unhealthy") }

			if _, err := u.Step(ctx, rel, pol, pass); err != nil {
				t.Fatal(err)
			}
			d.boot()
			// Within the trial time the gate may still come good: wait.
			st, err := u.Step(ctx, rel, pol, unhealthy)
			if err != nil || st.Phase != PhaseTrial || st.Reason != ReasonHealthWait {
				t.Fatalf("gate failing inside the trial time: %+v, %v", st, err)
			}
			d.now = d.now.Add(2 * time.Minute)
			st, err = u.Step(ctx, rel, pol, unhealthy)
			if !errors.Is(err, ErrRolledBack) || st.Phase != PhaseRolledBack || st.Reason != ReasonHealth {
				t.Fatalf("gate failing past the trial time: %+v, %v", st, err)
			}
			if !strings.Contains(st.Bad[rel.SHA256], "container web: unhealthy") {
				t.Fatalf("bad reason %q does not name the failed check", st.Bad[rel.SHA256])
			}
			if d.rebooted != 2 || d.toolGet(VarSlot) != SlotA {
				t.Fatalf("rollback: reboots %d, env slot %q", d.rebooted, d.toolGet(VarSlot))
			}
			d.boot()
			if d.booted != SlotA {
				t.Fatalf("after rollback booted %s", d.booted)
			}
			st, err = u.Step(ctx, rel, pol, pass)
			if !errors.Is(err, ErrReleaseBad) || st.Phase != PhaseRolledBack || st.Reason != ReasonBad {
				t.Fatalf("retrying the bad release: %+v, %v", st, err)
			}
			// A rebuilt release (new sha256) is tried again.
			rel2 := d.release("1.1.1", randBytes(t, 200<<10))
			if st, err = u.Step(ctx, rel2, pol, pass); err != nil || st.Phase != PhaseRebooting {
				t.Fatalf("new release after a bad one: %+v, %v", st, err)
			}
		})
	}
}

// TestBootloaderFallback: the new slot never reaches the agent (it hangs
// before the gate); after bootlimit boots the bootloader goes back by itself.
func TestBootloaderFallback(t *testing.T) {
	for _, kind := range bootloaders {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			d := newDevice(t, kind)
			u := d.updater()
			rel := d.release("1.1.0", randBytes(t, 100<<10))
			pol := spec.UpdatePolicy{BootLimit: 2}
			if _, err := u.Step(ctx, rel, pol, pass); err != nil {
				t.Fatal(err)
			}
			var seen []string
			for range 3 {
				d.boot()
				seen = append(seen, d.booted)
			}
			if fmt.Sprint(seen) != "[b b a]" {
				t.Fatalf("boots with bootlimit 2 started %v, want [b b a]", seen)
			}
			st, err := u.Step(ctx, rel, pol, pass)
			if !errors.Is(err, ErrRolledBack) || st.Phase != PhaseRolledBack || st.Reason != ReasonFallback {
				t.Fatalf("after fallback: %+v, %v", st, err)
			}
			if d.toolGet(VarUpgrade) != "0" || d.toolGet(VarSlot) != SlotA {
				t.Fatalf("env after fallback: upgrade_available=%q shoal_slot=%q", d.toolGet(VarUpgrade), d.toolGet(VarSlot))
			}
			if _, err := u.Step(ctx, rel, pol, pass); !errors.Is(err, ErrReleaseBad) {
				t.Fatalf("fallen-back release retried: %v", err)
			}
		})
	}
}

// TestRefused: bad input is refused and neither the env nor the active slot changes.
func TestRefused(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(d *device, rel *spec.Release)
		wantErr error
		reason  string
	}{
		{"tampered image, one flipped byte", func(d *device, rel *spec.Release) {
			b := fileBytes(d.t, rel.URL)
			b[len(b)/2] ^= 0x01
			writeFile(d.t, rel.URL, b)
		}, ErrVerify, ReasonVerify},
		{"tampered image with chunk manifest", func(d *device, rel *spec.Release) {
			rel.Chunks = chunkManifest(fileBytes(d.t, rel.URL), 64<<10)
			d.sign(rel)
			b := fileBytes(d.t, rel.URL)
			b[100<<10] ^= 0x80
			writeFile(d.t, rel.URL, b)
		}, ErrVerify, ReasonVerify},
		{"signature by an unknown key", func(d *device, rel *spec.Release) {
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			rel.Signature, _ = SignRelease(rel, other)
		}, ErrSignature, ReasonSignature},
		{"signed fields changed", func(d *device, rel *spec.Release) { rel.Version = "1.2.0" }, ErrSignature, ReasonSignature},
		{"truncated image", func(d *device, rel *spec.Release) {
			b := fileBytes(d.t, rel.URL)
			writeFile(d.t, rel.URL, b[:len(b)-4096])
		}, ErrVerify, ReasonVerify},
		{"size mismatch in the release", func(d *device, rel *spec.Release) {
			rel.Size += 10
			d.sign(rel)
		}, ErrVerify, ReasonVerify},
		{"image longer than its size", func(d *device, rel *spec.Release) {
			writeFile(d.t, rel.URL, append(fileBytes(d.t, rel.URL), 0))
		}, ErrVerify, ReasonVerify},
		{"older release", func(d *device, rel *spec.Release) { rel.Version = "0.9.0"; d.sign(rel) }, ErrDowngrade, ReasonDowngrade},
		{"version not semver", func(d *device, rel *spec.Release) { rel.Version = "latest"; d.sign(rel) }, ErrInvalidRelease, ReasonInvalid},
		{"min version not met", func(d *device, rel *spec.Release) { rel.MinVersion = "1.0.5"; d.sign(rel) }, ErrInvalidRelease, ReasonMinVersion},
		{"sha256 not hex", func(d *device, rel *spec.Release) { rel.SHA256 = "zz"; d.sign(rel) }, ErrInvalidRelease, ReasonInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d := newDevice(t, "uboot")
			u := d.updater()
			rel := d.release("1.1.0", randBytes(t, 300<<10))
			tc.mutate(d, rel)
			envBefore, activeBefore := fileBytes(t, d.envPath), fileBytes(t, d.slots[SlotA])
			st, err := u.Step(ctx, rel, spec.UpdatePolicy{}, pass)
			if !errors.Is(err, tc.wantErr) || st.Reason != tc.reason {
				t.Fatalf("err %v reason %q; want %v, %q", err, st.Reason, tc.wantErr, tc.reason)
			}
			if !bytes.Equal(fileBytes(t, d.envPath), envBefore) || !bytes.Equal(fileBytes(t, d.slots[SlotA]), activeBefore) {
				t.Fatal("the env or the active slot changed")
			}
			if d.rebooted != 0 || st.Phase != PhaseIdle {
				t.Fatalf("phase %s, reboots %d", st.Phase, d.rebooted)
			}
			d.boot()
			if d.booted != SlotA {
				t.Fatalf("booted %s", d.booted)
			}
		})
	}
}

func TestDowngradeAllowedByPolicy(t *testing.T) {
	d := newDevice(t, "grub")
	rel := d.release("0.9.0", randBytes(t, 10<<10))
	st, err := d.updater().Step(context.Background(), rel, spec.UpdatePolicy{AllowDowngrade: true}, pass)
	if err != nil || st.Phase != PhaseRebooting {
		t.Fatalf("allowed downgrade: %+v, %v", st, err)
	}
}

func TestVerifyRelease(t *testing.T) {
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	base := spec.Release{Version: "2.0.0", Size: 10, SHA256: strings.Repeat("ab", 32)}
	tests := []struct {
		name    string
		signer  crypto.Signer
		roots   []crypto.PublicKey
		edit    func(*spec.Release)
		wantErr error
	}{
		{"ed25519", edKey, []crypto.PublicKey{edPub}, nil, nil},
		{"ecdsa p-256", ecKey, []crypto.PublicKey{&ecKey.PublicKey}, nil, nil},
		{"second root verifies", ecKey, []crypto.PublicKey{edPub, &ecKey.PublicKey}, nil, nil},
		{"wrong root", edKey, []crypto.PublicKey{&ecKey.PublicKey}, nil, ErrSignature},
		{"no roots", edKey, nil, nil, ErrSignature},
		{"size edited", edKey, []crypto.PublicKey{edPub}, func(r *spec.Release) { r.Size = 11 }, ErrSignature},
		{"chunks added", edKey, []crypto.PublicKey{edPub}, func(r *spec.Release) {
			r.Chunks = &spec.ChunkManifest{Size: 10, SHA256: []string{strings.Repeat("00", 32)}}
		}, ErrSignature},
		{"not base64", edKey, []crypto.PublicKey{edPub}, func(r *spec.Release) { r.Signature = "%%%" }, ErrSignature},
		{"pcr edited", edKey, []crypto.PublicKey{edPub}, func(r *spec.Release) { r.PCRs = map[string]string{"7": "00"} }, ErrSignature},
		{"build time edited", edKey, []crypto.PublicKey{edPub}, func(r *spec.Release) { r.Built = time.Unix(1, 0) }, ErrSignature},
		{"bad sha256", edKey, []crypto.PublicKey{edPub}, func(r *spec.Release) { r.SHA256 = "xyz" }, ErrInvalidRelease},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rel := base
			sig, err := SignRelease(&rel, tc.signer)
			if err != nil {
				t.Fatal(err)
			}
			rel.Signature = sig
			if tc.edit != nil {
				tc.edit(&rel)
			}
			if err := VerifyRelease(&rel, tc.roots); !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
	if _, err := SignRelease(&base, p384); err == nil {
		t.Fatal("P-384 key accepted for signing")
	}
}
