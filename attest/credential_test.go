package attest

import (
	"context"
	"errors"
	"testing"
)

// TestCredentialSwtpm: the hub's challenge, encrypted to a device's EK and
// naming its AK, is answered only by that TPM with that AK loaded.
func TestCredentialSwtpm(t *testing.T) {
	ctx := context.Background()
	dev := tpmDevice(t, startSwtpm(t, ""))
	other := tpmDevice(t, startSwtpm(t, ""))
	id, oid := dev.Identity(), other.Identity()
	if err := CheckEK(id); err != nil {
		t.Fatalf("CheckEK: %v", err)
	}

	tests := []struct {
		name    string
		ek, ak  []byte
		answer  *Attester
		wantErr bool
	}{
		{"own EK, own AK", id.EKArea, id.AK, dev, false},
		{"own EK, another device's AK", id.EKArea, oid.AK, dev, true},
		{"another TPM's EK", oid.EKArea, id.AK, dev, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			secret, c, err := MakeCredential(tc.ek, tc.ak)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tc.answer.ActivateCredential(ctx, *c)
			if tc.wantErr {
				if err == nil && CheckSecret(secret, got) {
					t.Fatal("the challenge was answered by a TPM it was not meant for")
				}
				return
			}
			if err != nil || !CheckSecret(secret, got) {
				t.Fatalf("ActivateCredential = %x, %v; want the secret", got, err)
			}
		})
	}

	t.Run("a software key claiming TPM attributes cannot answer", func(t *testing.T) {
		fake := newFakeAK(t)
		if _, _, err := MakeCredential(id.EKArea, fake.pub); err != nil {
			t.Fatal(err) // it looks like an AK; only activation tells
		}
		sw, err := New(ctx, Options{StateDir: t.TempDir(), DevicePath: t.TempDir() + "/none", AllowSoftware: true})
		if err != nil {
			t.Fatal(err)
		}
		defer sw.Close()
		if _, err := sw.ActivateCredential(ctx, Credential{}); !errors.Is(err, ErrNoTPM) {
			t.Fatalf("software ActivateCredential: %v", err)
		}
	})

	t.Run("mismatched EK forms", func(t *testing.T) {
		bad := id
		bad.EKPublic = oid.EKPublic
		if err := CheckEK(bad); !errors.Is(err, ErrEKMismatch) {
			t.Fatalf("CheckEK = %v", err)
		}
		if _, _, err := MakeCredential(id.AK, id.AK); !errors.Is(err, ErrEKMismatch) {
			t.Fatalf("MakeCredential with a signing key as EK = %v", err)
		}
		if _, _, err := MakeCredential([]byte("junk"), id.AK); !errors.Is(err, ErrEKMismatch) {
			t.Fatalf("MakeCredential with junk = %v", err)
		}
	})
}
