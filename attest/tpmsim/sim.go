//go:build tpmsim && cgo

package tpmsim

// The simulator draws its entropy from OpenSSL's RAND_bytes (the Google
// sample platform's _plat__GetEntropy). OpenSeeded swaps in a deterministic
// RAND_METHOD while the simulator is manufactured, so that every value made
// at manufacture (the hierarchy seeds and the hierarchy proofs) follows from
// the seed. go-tpm-tools' own GetWithFixedSeedInsecure fixes only the seeds,
// and only until the first Reset; the owner proof it leaves random sets the
// offset the TPM adds to the reset and restart counters in every quote, so a
// restarted agent's counters would jump at random and the hub would refuse
// them as going backwards. RAND_set_rand_method is deprecated in OpenSSL 3
// but is the one public call that replaces the whole source.

// #cgo CFLAGS: -Wno-deprecated-declarations
// #cgo LDFLAGS: -lcrypto
// #include <stdint.h>
// #include <string.h>
// #include <openssl/rand.h>
// #include <openssl/sha.h>
//
// static unsigned char shoal_seed[8];
// static uint64_t shoal_counter;
//
// // SHA-256 of seed || counter, in counter mode: a fixed stream per seed.
// static int shoal_bytes(unsigned char *buf, int num) {
// 	unsigned char in[16], out[SHA256_DIGEST_LENGTH];
// 	while (num > 0) {
// 		memcpy(in, shoal_seed, 8);
// 		memcpy(in + 8, &shoal_counter, 8);
// 		shoal_counter++;
// 		SHA256(in, sizeof in, out);
// 		int n = num < SHA256_DIGEST_LENGTH ? num : SHA256_DIGEST_LENGTH;
// 		memcpy(buf, out, n);
// 		buf += n;
// 		num -= n;
// 	}
// 	return 1;
// }
// static int shoal_status(void) { return 1; }
// static RAND_METHOD shoal_method = {NULL, shoal_bytes, NULL, NULL, shoal_bytes, shoal_status};
//
// static int shoal_rand_fixed(int64_t seed) {
// 	memcpy(shoal_seed, &seed, 8);
// 	shoal_counter = 0;
// 	return RAND_set_rand_method(&shoal_method);
// }
// static int shoal_rand_restore(void) { return RAND_set_rand_method(RAND_OpenSSL()); }
import "C"

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpmutil"
)

// TPM is a running simulator: a transport.TPM for attest.Options.TPM.
type TPM struct {
	sim *simulator.Simulator
}

// Open starts the simulator, powered on and started. Only one runs per
// process: a second Open waits until the first is closed.
func Open() (*TPM, error) {
	s, err := simulator.Get()
	if err != nil {
		return nil, fmt.Errorf("start TPM simulator: %w", err)
	}
	return &TPM{sim: s}, nil
}

// Send runs one TPM command.
func (t *TPM) Send(cmd []byte) ([]byte, error) { return tpmutil.RunCommandRaw(t.sim, cmd) }

// Reset reboots the simulated TPM: PCRs clear, the reset counter advances,
// keys and seeds stay.
func (t *TPM) Reset() error { return t.sim.Reset() }

// Close stops the simulator.
func (t *TPM) Close() error { return t.sim.Close() }

var _ transport.TPMCloser = (*TPM)(nil)

// OpenSeeded is Open with a TPM manufactured from seed: the same seed gives
// the same TPM in every process (hierarchy seeds and proofs), so key blobs
// saved by an earlier process load again and the counters in its quotes are
// comparable with the earlier ones. Its NV, counters and clock still start
// afresh, as after a manufacture: Boot advances them. Anyone who knows the
// seed knows the keys: for demos and tests only.
func OpenSeeded(seed int64) (*TPM, error) {
	if C.shoal_rand_fixed(C.int64_t(seed)) != 1 {
		return nil, errors.New("start TPM simulator: cannot set a fixed entropy source")
	}
	s, err := simulator.Get()
	restored := C.shoal_rand_restore() == 1
	if err != nil {
		return nil, fmt.Errorf("start TPM simulator: %w", err)
	}
	if !restored {
		s.Close()
		return nil, errors.New("start TPM simulator: cannot restore OpenSSL's entropy source")
	}
	return &TPM{sim: s}, nil
}

// Boot power-cycles the TPM n times, as n reboots of the device would: the
// reset counter advances by n. A freshly opened simulator starts from its
// manufactured counters, so a caller that keeps a count of the device's
// boots calls Boot with it to carry the counters forward across restarts.
func (t *TPM) Boot(n int) error {
	for i := range n {
		if err := t.sim.Reset(); err != nil {
			return fmt.Errorf("simulated reboot %d of %d: %w", i+1, n, err)
		}
	}
	return nil
}
