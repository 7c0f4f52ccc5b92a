// Package version holds tandem's version string, sent on every message as
// the tandem-version header. Overridden at link time by the Makefile.
package version

// Version is set with -ldflags "-X github.com/tandem-ha/tandem/internal/version.Version=...".
var Version = "0.1.0-dev"
