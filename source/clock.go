package source

import (
	"crypto/tls"
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
)

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
	installOnce.Do(func() {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{Time: func() time.Time {
			if f := tlsNow.Load(); f != nil {
				return (*f)()
			}
			return time.Now()
		}}
		client.InstallProtocol("https", githttp.NewClient(&http.Client{Transport: tr}))
	})
}
