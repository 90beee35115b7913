package attest

import (
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// clockUpdateInterval is how far the TPM's Clock may run ahead of the copy it
// keeps in NV (2^22 ms in the TCG reference implementation that libtpms and
// most firmware TPMs share): after a power cut, no Clock value above
// NV clock + this much can have been reported.
const clockUpdateInterval = 1 << 22

// restoreClockSafe makes the TPM's clock "safe" again after an unorderly
// shutdown (a power cut), which edge devices see often. Until the TPM next
// writes its clock to NV (up to ~70 minutes later) every quote would say
// safe=NO and fail verification. Advancing Clock past anything it could have
// reported before the cut, with TPM2_ClockSet, makes safe=YES true again.
// It needs the owner hierarchy's auth to be empty, as it is on our devices.
func restoreClockSafe(t transport.TPM) (restored bool, err error) {
	rc, err := tpm2.ReadClock{}.Execute(t)
	if err != nil {
		return false, fmt.Errorf("read TPM clock: %w", err)
	}
	ci := rc.CurrentTime.ClockInfo
	if ci.Safe == tpm2.TPMIYesNo(true) {
		return false, nil
	}
	if err := clockSet(t, ci.Clock+clockUpdateInterval); err != nil {
		return false, err
	}
	return true, nil
}

// clockSet sends TPM2_ClockSet with owner password auth. go-tpm's tpm2
// package has no ClockSet command, and its command builder is internal, so
// the few bytes are laid out here.
func clockSet(t transport.TPM, newTime uint64) error {
	cmd := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
	cmd = binary.BigEndian.AppendUint32(cmd, 0) // size, set below
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMCCClockSet))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRHOwner))
	cmd = binary.BigEndian.AppendUint32(cmd, 9) // authorization area size
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRSPW))
	cmd = binary.BigEndian.AppendUint16(cmd, 0) // nonce
	cmd = append(cmd, 0)                        // session attributes
	cmd = binary.BigEndian.AppendUint16(cmd, 0) // empty password
	cmd = binary.BigEndian.AppendUint64(cmd, newTime)
	binary.BigEndian.PutUint32(cmd[2:], uint32(len(cmd)))
	rsp, err := t.Send(cmd)
	if err != nil {
		return fmt.Errorf("TPM2_ClockSet: %w", err)
	}
	if len(rsp) < 10 {
		return fmt.Errorf("TPM2_ClockSet: short response")
	}
	if rc := binary.BigEndian.Uint32(rsp[6:]); rc != 0 {
		return fmt.Errorf("TPM2_ClockSet: %w", tpm2.TPMRC(rc))
	}
	return nil
}
