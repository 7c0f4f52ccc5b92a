package demo

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunbook runs every procedure of docs/runbook.md, as written there,
// against real tandem processes (runbook_check.sh: about 90 s). Skipped
// with -short, without bash, or when its loopback ports are taken.
func TestRunbook(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the runbook check runs real processes for about 90 s")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not found")
	}
	for _, p := range []string{"27720", "27721", "27730", "27731"} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+p, 200*time.Millisecond); err == nil {
			c.Close()
			t.Skipf("port %s is in use (another runbook check running?)", p)
		}
	}
	bin := filepath.Join(t.TempDir(), "tandem")
	build := exec.Command("go", "build", "-o", bin, "./cmd/tandem")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bash, "runbook_check.sh")
	cmd.Env = append(os.Environ(), "TANDEM_BIN="+bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("runbook_check.sh: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "ok - ") {
			t.Log(line)
		}
	}
}
