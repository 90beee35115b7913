package attest

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultDevice is the kernel's TPM resource manager: it swaps our transient
// keys in and out so other TPM users on the device do not collide with us.
const DefaultDevice = "/dev/tpmrm0"

// OpenDevice opens a TPM character device such as DefaultDevice.
func OpenDevice(path string) (transport.TPMCloser, error) {
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open TPM %q: %w", path, err)
	}
	return t, nil
}

// DialTCP connects to a TPM that takes raw TPM 2.0 commands over TCP, as
// swtpm does with `swtpm socket --server type=tcp,port=P` (the TPM must be
// started already, e.g. with --flags not-need-init,startup-clear).
func DialTCP(ctx context.Context, addr string) (transport.TPMCloser, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial TPM at %q: %w", addr, err)
	}
	return &tcpTPM{c: c, timeout: 2 * time.Minute}, nil
}

// tcpTPM frames commands by the TPM header's size field: a TCP read may return
// a response in pieces, which go-tpm's generic ReadWriter transport does not expect.
type tcpTPM struct {
	mu      sync.Mutex
	c       net.Conn
	timeout time.Duration // bounds one command; key generation on a slow TPM takes seconds
	broken  error         // after a failed exchange the stream is out of step: refuse further commands
}

// maxResponse bounds a TPM response (TPM2 responses are at most a few KiB).
const maxResponse = 64 << 10

func (t *tcpTPM) Send(cmd []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.broken != nil {
		return nil, fmt.Errorf("TPM connection unusable after: %w", t.broken)
	}
	rsp, err := t.exchange(cmd)
	if err != nil {
		t.broken = err
		t.c.Close()
	}
	return rsp, err
}

func (t *tcpTPM) exchange(cmd []byte) ([]byte, error) {
	if err := t.c.SetDeadline(time.Now().Add(t.timeout)); err != nil {
		return nil, err
	}
	if _, err := t.c.Write(cmd); err != nil {
		return nil, fmt.Errorf("send TPM command: %w", err)
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(t.c, hdr); err != nil {
		return nil, fmt.Errorf("read TPM response header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < 10 || n > maxResponse {
		return nil, fmt.Errorf("TPM response size %d out of range", n)
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	if _, err := io.ReadFull(t.c, rsp[10:]); err != nil {
		return nil, fmt.Errorf("read TPM response: %w", err)
	}
	return rsp, nil
}

func (t *tcpTPM) Close() error { return t.c.Close() }
