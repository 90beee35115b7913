// Package browsertest holds what the headless-Chromium tests share. Only
// tests import it.
package browsertest

import (
	"context"
	"strings"

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
