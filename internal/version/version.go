// Package version holds the build's version string, set by the linker
// (-X github.com/shoalfleet/shoal/internal/version.Version=...).
package version

import "runtime/debug"

// Version is the release version; "dev" for a plain `go build`.
var Version = "dev"

// String returns the version, falling back to the VCS revision a plain build embeds.
func String() string {
	if Version != "dev" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return Version
}
