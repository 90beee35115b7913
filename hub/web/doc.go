// Package web is the hub's fleet status page: a fleet overview with counts
// per state, a filtered, sorted and paged device table that updates live, a
// page per device, and a rollout view. It is server-rendered with
// html/template; its stylesheet and script are embedded, so it works in an
// air-gapped plant with no CDN and no front-end build. The same data is
// served as JSON under /api/v1/ for the page's live updates and for
// `shoal fleet`.
//
// The page needs the operator token (a login form sets an HttpOnly, Secure,
// SameSite=Strict cookie; the JSON API also takes Authorization: Bearer)
// unless the operator chose open access, which then holds for loopback
// clients only. Forms that change state carry a CSRF token.
//
// The hub mounts it through hub.Options.Web; only cmd/shoal imports it. It
// reads hub/store and imports nothing device-side.
package web
