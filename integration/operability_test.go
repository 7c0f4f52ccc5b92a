package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A clean stop (SIGTERM) of the primary hands over to its backup at once:
// the backup is primary long before the 20 s window would have run out,
// every agent follows, the stopped node exits 0 with primary_location
// naming the new primary, and started again it is that primary's backup —
// no rejoin.
func TestCleanStopOfThePrimaryHandsOver(t *testing.T) {
	c := newCluster(t)
	c.timing = "{period: 100ms, reply_period: 1s, fail_window: 20s}"
	a, b, files := pairUp(t, c, 3)
	start := time.Now()
	if code := a.p.stop(); code != 0 {
		t.Fatalf("a exited %d on SIGTERM, want 0", code)
	}
	c.waitRole(b, "primary", 15*time.Second)
	allAt(t, files, b, 2, 10*time.Second)
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("the handover took %s", took)
	}
	loc, err := os.ReadFile(filepath.Join(a.dir, "data", "primary_location"))
	if err != nil || string(loc) != b.addr()+"\n" {
		t.Fatalf("a's primary_location = %q, %v; want %s", loc, err, b.addr())
	}
	c.start(a)
	c.waitRole(a, "backup", 20*time.Second)
	eventually(t, 20*time.Second, "a watches b", func() bool {
		s, err := getStatus(a.admin)
		return err == nil && s.Primary != nil && s.Primary.Node == "b"
	})
	for i, f := range files {
		checkAgentFileIntact(t, f, i)
	}
}
