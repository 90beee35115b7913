// Package docs holds no code. Its tests keep the operator guide in
// docs/guide true to the code: every machine reason the agent or the hub
// reports is explained in docs/guide/troubleshooting.md, and the guide's
// walk-through runs as written.
package docs
