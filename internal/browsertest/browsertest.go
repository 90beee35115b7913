// Package browsertest holds what the headless-Chromium tests share. Only
// tests import it.
package browsertest

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/chromedp/chromedp"
)

// networkChanged is how Chromium aborts a load when the host's interfaces
// change under it, as they do when Docker adds a bridge or a veth for a test
// running in parallel.
const networkChanged = "ERR_NETWORK_CHANGED"

// Navigate is chromedp.Navigate, tried again (up to five times) when
// Chromium aborts the load because the host's network changed.
func Navigate(url string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		var err error
		for range 5 {
			if _, err = chromedp.Navigate(url)(ctx, t); err == nil || !strings.Contains(err.Error(), networkChanged) {
				return chromedp.Void{}, err
			}
		}
		return chromedp.Void{}, err
	}
}

// contextGone is what Chromium answers when the page's JavaScript context was
// replaced under a running evaluation (a navigation committing late on a
// loaded machine); the next evaluation runs in the new one.
var contextGone = []string{"Cannot find context with specified id", "Execution context was destroyed"}

// WaitJS waits, up to timeout, until the JavaScript expression is true in the
// page, evaluating it again whenever the page's context was replaced.
func WaitJS(expr string, timeout time.Duration) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		for {
			_, err := chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond))(ctx, t)
			if err == nil || ctx.Err() != nil || !transient(err) {
				if err != nil && ctx.Err() != nil {
					err = fmt.Errorf("%q not true after %v: %w", expr, timeout, err)
				}
				return chromedp.Void{}, err
			}
		}
	}
}

func transient(err error) bool {
	for _, s := range contextGone {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}
