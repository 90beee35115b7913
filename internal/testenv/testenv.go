// Package testenv lets tests find the real components they drive (Docker
// Engine, swtpm, bootloader tools, Chromium, PostgreSQL) and decide what to do
// when one is missing: skip with a message naming the package to install, or,
// under SHOAL_REQUIRE_REAL=1 (CI), fail.
//
// Only tests import it.
package testenv

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireReal reports whether missing real components must fail tests (SHOAL_REQUIRE_REAL=1).
func RequireReal() bool { return os.Getenv("SHOAL_REQUIRE_REAL") == "1" }

// Missing skips t, or fails it under SHOAL_REQUIRE_REAL=1, saying what is missing
// and how to install it.
func Missing(t testing.TB, what, install string) {
	t.Helper()
	if RequireReal() {
		t.Fatalf("%s is required (SHOAL_REQUIRE_REAL=1) but missing: %s", what, install)
	}
	t.Skipf("%s missing; to run this test: %s (or run scripts/test-deps.sh)", what, install)
}

// LookPath finds command on PATH or in the sbin directories, or calls Missing
// naming the Debian package that provides it.
func LookPath(t testing.TB, command, debianPackage string) string {
	t.Helper()
	if p, err := exec.LookPath(command); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, command)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	Missing(t, command, "apt-get install "+debianPackage)
	return ""
}

// Git runs the git CLI in dir with a fixed author and committer, failing t
// on error (and skipping or failing, as Missing says, when git is absent).
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	bin := LookPath(t, "git", "git")
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_AUTHOR_NAME=Shoal Test", "GIT_AUTHOR_EMAIL=test@shoal.invalid",
		"GIT_COMMITTER_NAME=Shoal Test", "GIT_COMMITTER_EMAIL=test@shoal.invalid",
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// GitCommitAll makes dir a repository on branch main (if it is not one yet)
// and commits everything in it with message.
func GitCommitAll(t testing.TB, dir, message string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, ".git")); err != nil {
		Git(t, dir, "init", "-q", "-b", "main")
	}
	Git(t, dir, "add", "-A")
	Git(t, dir, "commit", "-qm", message)
}

// FreeAddr returns a loopback address (127.0.0.1:PORT) with a port free
// now, for a server a test starts as another process.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
