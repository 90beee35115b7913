package attest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"

	"github.com/google/go-tpm/tpm2"
	"github.com/shoalfleet/shoal/spec"
)

// AppPCR is the application PCR: resettable from locality 0 (PC Client
// "application support"), so the agent can reset it and extend it with
// exactly the applied spec hash and the running release version, and the hub
// can compute the value it must hold (AppPCRValue).
const AppPCR = 23

// maxPCR is the highest PCR index of a PC Client TPM.
const maxPCR = 23

// Event labels keep the two extends apart: a spec hash can never be read as a version.
const (
	specEvent    = "shoal/spec\x00"
	releaseEvent = "shoal/release\x00"
)

// appEvents returns the digests extended into AppPCR, in order.
func appEvents(specHash, releaseVersion string) [][]byte {
	s := sha256.Sum256([]byte(specEvent + specHash))
	r := sha256.Sum256([]byte(releaseEvent + releaseVersion))
	return [][]byte{s[:], r[:]}
}

// AppPCRValue is the sha256-bank value AppPCR holds after the agent applied the
// spec with hash specHash (spec.Device.Hash) while running releaseVersion.
func AppPCRValue(specHash, releaseVersion string) []byte {
	v := make([]byte, sha256.Size)
	for _, d := range appEvents(specHash, releaseVersion) {
		v = extend(v, d)
	}
	return v
}

func extend(pcr, digest []byte) []byte {
	h := sha256.New()
	h.Write(pcr)
	h.Write(digest)
	return h.Sum(nil)
}

// Policy is what a quote must show: exactly the PCR selection PCRs (sha256
// bank), and for each PCR in Expected, that value. PCRs selected but absent
// from Expected are quoted and reported but not constrained.
type Policy struct {
	PCRs     []int
	Expected map[int][]byte
	// Unchecked says, a sentence each, what this policy deliberately does
	// not check (the PCR values of a release the device does not run), so
	// that a quote that meets it is reported as a pass with those caveats.
	Unchecked []string
}

// PolicyFor builds the policy for a rendered device: the device's attestation
// PCRs plus AppPCR, the boot PCR values its release expects, and the AppPCR
// value for its spec hash and release version.
func PolicyFor(d *spec.Device) (Policy, error) {
	p := Policy{Expected: map[int][]byte{}}
	pcrs := append([]int{AppPCR}, d.Attestation.PCRs...)
	version := ""
	if d.Release != nil {
		version = d.Release.Version
		for k, v := range d.Release.PCRs {
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i > maxPCR {
				return Policy{}, fmt.Errorf("release %q: PCR %q: %w", d.Release.Name, k, ErrPolicy)
			}
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != sha256.Size {
				return Policy{}, fmt.Errorf("release %q: PCR %d value %q is not a sha256 hex digest: %w", d.Release.Name, i, v, ErrPolicy)
			}
			if slices.Contains(pcrs, i) {
				p.Expected[i] = b
			}
		}
	}
	p.Expected[AppPCR] = AppPCRValue(d.Hash(), version)
	slices.Sort(pcrs)
	p.PCRs = slices.Compact(pcrs)
	if err := p.validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// WithApp returns a copy of p that expects AppPCR to hold the given spec hash
// and release version: the hub checks a device's claim (api.AttestRequest's
// SpecHash and ReleaseVersion) and, if the quote verifies, knows the device
// really runs that commit and release.
func (p Policy) WithApp(specHash, releaseVersion string) Policy {
	out := Policy{PCRs: slices.Clone(p.PCRs), Expected: make(map[int][]byte, len(p.Expected)+1), Unchecked: slices.Clone(p.Unchecked)}
	for k, v := range p.Expected {
		out.Expected[k] = v
	}
	if !slices.Contains(out.PCRs, AppPCR) {
		out.PCRs = append(out.PCRs, AppPCR)
		slices.Sort(out.PCRs)
	}
	out.Expected[AppPCR] = AppPCRValue(specHash, releaseVersion)
	return out
}

func (p Policy) validate() error {
	if len(p.PCRs) == 0 {
		return fmt.Errorf("empty PCR selection: %w", ErrPolicy)
	}
	for _, i := range p.PCRs {
		if i < 0 || i > maxPCR {
			return fmt.Errorf("PCR %d out of range 0-%d: %w", i, maxPCR, ErrPolicy)
		}
	}
	for i, v := range p.Expected {
		if !slices.Contains(p.PCRs, i) {
			return fmt.Errorf("expected value for PCR %d which is not selected: %w", i, ErrPolicy)
		}
		if len(v) != sha256.Size {
			return fmt.Errorf("expected value for PCR %d is %d bytes, not 32: %w", i, len(v), ErrPolicy)
		}
	}
	return nil
}

// selection encodes pcrs as a sha256-bank TPML_PCR_SELECTION.
func selection(pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// selectedPCRs decodes a bitmap into ascending PCR indexes.
func selectedPCRs(bitmap []byte) []int {
	var out []int
	for i, b := range bitmap {
		for bit := range 8 {
			if b&(1<<bit) != 0 {
				out = append(out, i*8+bit)
			}
		}
	}
	return out
}

// pcrDigest is the quote's pcrDigest over values in ascending PCR order.
func pcrDigest(pcrs []int, values map[int][]byte) []byte {
	h := sha256.New()
	for _, i := range pcrs {
		h.Write(values[i])
	}
	return h.Sum(nil)
}

func normPCRs(pcrs []int) ([]int, error) {
	out := slices.Clone(pcrs)
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("empty PCR selection: %w", ErrPolicy)
	}
	if out[0] < 0 || out[len(out)-1] > maxPCR {
		return nil, fmt.Errorf("PCR selection %v out of range 0-%d: %w", pcrs, maxPCR, ErrPolicy)
	}
	return out, nil
}
