package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkFailover measures the failover overhead with real processes: the
// time from the end of the fail window (last heartbeat + window; the primary
// is killed right after a heartbeat) to the takeover done with every managed
// file rewritten, for 10, 1,000 and 10,000 files.
//
//	go test -run '^$' -bench Failover -benchtime 1x ./integration
func BenchmarkFailover(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("files=%d", n), func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				c := newCluster(b)
				// Overhead is measured from the end of the window, so its
				// length does not bias it; a 3 s window keeps a 2-core box
				// loaded with 10,000 files from failing over while it
				// prepares.
				c.timing = "{period: 500ms, reply_period: 5s, fail_window: 3s}"
				a := c.addServer("a", nil)
				bk := c.addServer("b", a)
				files := c.writeAgents(n, a)
				c.start(a)
				c.waitRole(a, "primary", 60*time.Second)
				c.start(bk)
				c.waitRole(bk, "backup", 60*time.Second)
				waitFiles(b, files, a, "1")
				eventually(b, 20*time.Second, "b hears a", func() bool {
					s, err := getStatus(bk.admin)
					return err == nil && s.Primary != nil && s.Primary.LastHeartbeatAgeMS >= 0 && s.Primary.LastHeartbeatAgeMS < 50
				})
				killed := time.Now()
				a.p.signal(syscall.SIGKILL)
				windowEnd := killed.Add(3 * time.Second)
				b.StartTimer()
				eventually(b, 120*time.Second, "takeover done", func() bool {
					s, err := getStatus(bk.admin)
					return err == nil && s.Role == "primary" && s.Agents.Rewritten == n
				})
				took := time.Since(killed)
				b.StopTimer()
				waitFiles(b, files, bk, "2") // verify, untimed
				total += took - windowEnd.Sub(killed)
				a.p.kill()
				bk.p.kill()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "overhead-ms")
		})
	}
}

// waitFiles waits (polling every 200 ms: reading thousands of files in a
// tight loop would starve the servers being measured) until every file is at
// epoch and points at srv.
func waitFiles(b testing.TB, files []string, srv *server, epoch string) {
	b.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for !filesAt(b, files, srv, epoch) {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %d files at epoch %s on %s", len(files), epoch, srv.name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func filesAt(b testing.TB, files []string, srv *server, epoch string) bool {
	for _, f := range files {
		port, ep, _, _ := fileFacts(b, f)
		if ep != epoch || port != strconv.Itoa(srv.brokerPort) {
			return false
		}
	}
	return true
}

// BenchmarkIdlePair was replaced by BenchmarkIdleCPU (bench_phases_test.go):
// the same idle pair at period 100 ms, CPU to 0.01 % and RSS, for 10 and
// 5,000 files.

// cpuTicks is utime+stime of every thread of pid (dead ones included), in
// clock ticks (1/100 s on Linux).
func cpuTicks(b testing.TB, pid int) int64 {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which is in parentheses).
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

func rssMB(b testing.TB, pid int) float64 {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return kb / 1024
		}
	}
	return 0
}
