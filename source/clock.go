package source

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-git/go-git/v5/plumbing/transport/client"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
)

var (
	tlsNow      atomic.Pointer[func() time.Time]
	installOnce sync.Once
	// clientCert is the device's certificate for servers that ask for one
	// issued by its CA (a site relay's fleet repo mirror), and its CA.
	clientCert atomic.Pointer[clientIdentity]
)

type clientIdentity struct {
	caPEM   []byte
	caDN    []byte
	current func() *tls.Certificate
}

// UseClientCertificate makes https:// fetches present the certificate
// current returns to a server that asks for a client certificate issued by
// the CA in caPEM — a site relay serving its mirror of the fleet repo to its
// devices only — and trust that CA for the server's certificate. Other
// servers never see it. Like UseClock it holds for every Source of the process.
func UseClientCertificate(caPEM []byte, current func() *tls.Certificate) error {
	b, _ := pem.Decode(caPEM)
	if b == nil {
		return errors.New("source: client CA: not PEM")
	}
	ca, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return fmt.Errorf("source: client CA: %w", err)
	}
	clientCert.Store(&clientIdentity{caPEM: caPEM, caDN: ca.RawSubject, current: current})
	install()
	return nil
}

// caBundle adds the client CA (UseClientCertificate) to a fetch's CA bundle.
func caBundle(b []byte) []byte {
	id := clientCert.Load()
	if id == nil {
		return b
	}
	return append(append(append([]byte(nil), b...), '\n'), id.caPEM...)
}

// UseClock makes https:// fetches check the server's certificate by now
// instead of the system clock: a device that boots with its clock at 1970
// (no RTC) would otherwise refuse every certificate as not yet valid until
// NTP answers. Git's HTTPS transport is one per process, so this holds for
// every Source of the process; nil goes back to the system clock.
func UseClock(now func() time.Time) {
	if now == nil {
		tlsNow.Store(nil)
	} else {
		tlsNow.Store(&now)
	}
	install()
}

// install puts the process's https transport for Git in place, once.
func install() {
	installOnce.Do(func() {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{
			Time: func() time.Time {
				if f := tlsNow.Load(); f != nil {
					return (*f)()
				}
				return time.Now()
			},
			GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
				id := clientCert.Load()
				if id == nil {
					return &tls.Certificate{}, nil
				}
				for _, dn := range cri.AcceptableCAs {
					if bytes.Equal(dn, id.caDN) {
						if c := id.current(); c != nil {
							return c, nil
						}
					}
				}
				return &tls.Certificate{}, nil
			},
		}
		client.InstallProtocol("https", githttp.NewClient(&http.Client{Transport: tr}))
	})
}
