package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// boundTo counts the agents the server's registry sees connected and bound
// to its own token.
func boundTo(t testing.TB, s *server) int {
	st, err := getStatus(s.admin)
	if err != nil || st.Role != "primary" {
		return 0
	}
	return st.Agents.Connected
}

func TestFleetFollowsAKilledPrimary(t *testing.T) {
	c := newCluster(t)
	const n = 30
	a, b, files := pairUp(t, c, n)
	allAt(t, files, a, 1, 20*time.Second)
	evPath := filepath.Join(c.dir, "events.jsonl")
	start(t, c.dir, "fleet", "agent", "--fleet", filepath.Join(c.dir, "agents"), "--period", "200ms", "--events", evPath)
	eventually(t, 20*time.Second, fmt.Sprintf("%d agents connected to a", n), func() bool { return boundTo(t, a) == n })
	a.p.signal(syscall.SIGKILL)
	c.waitRole(b, "primary", 10*time.Second)
	took := eventually(t, 20*time.Second, fmt.Sprintf("%d agents connected to b", n), func() bool { return boundTo(t, b) == n })
	t.Logf("fleet of %d: all connected to the new primary %s after it became primary", n, took)
	idB := mustStatus(t, b).FailoverID
	eventually(t, 10*time.Second, "every agent accepted b's commands", func() bool { return acceptedFrom(readEvents(t, evPath), idB, 2) == n })
	checkI1(t, readEvents(t, evPath))
}

// BenchmarkAgentsFollow measures, with real processes, the time from the
// end of the fail window to N agents (one fleet process) connected to the
// new primary, split into rewrite (window end → takeover done, all files
// rewritten) and reconnect (→ all agents reported to the new primary), and
// the fleet's resident memory per agent.
//
//	go test -run '^$' -bench AgentsFollow -benchtime 1x ./integration
func BenchmarkAgentsFollow(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			var rewrite, reconnect time.Duration
			var rssPerAgent float64
			for i := 0; i < b.N; i++ {
				c := newCluster(b)
				a := c.addServer("a", nil)
				bk := c.addServer("b", a)
				files := c.writeAgents(n, a)
				c.start(a)
				c.waitRole(a, "primary", 60*time.Second)
				c.start(bk)
				c.waitRole(bk, "backup", 60*time.Second)
				waitFiles(b, files, a, "1")
				fleet := start(b, c.dir, "fleet", "agent", "--fleet", filepath.Join(c.dir, "agents"), "--period", "1s", "--log-level", "warn")
				eventually(b, 120*time.Second, "fleet connected to a", func() bool { return boundTo(b, a) == n })
				time.Sleep(2 * time.Second) // settle
				rssPerAgent = rssMB(b, fleet.pid()) * 1024 / float64(n)
				eventually(b, 20*time.Second, "b hears a", func() bool {
					s, err := getStatus(bk.admin)
					return err == nil && s.Primary != nil && s.Primary.LastHeartbeatAgeMS >= 0 && s.Primary.LastHeartbeatAgeMS < 50
				})
				killed := time.Now()
				a.p.signal(syscall.SIGKILL)
				windowEnd := killed.Add(500 * time.Millisecond)
				eventually(b, 120*time.Second, "takeover done", func() bool {
					s, err := getStatus(bk.admin)
					return err == nil && s.Role == "primary" && s.Agents.Rewritten == n
				})
				rewritten := time.Now()
				eventually(b, 120*time.Second, "fleet connected to b", func() bool { return boundTo(b, bk) == n })
				if os.Getenv("TANDEM_BENCH_DEBUG") != "" {
					for _, l := range strings.Split(bk.p.logText(), "\n") {
						if strings.Contains(l, "takeover") || strings.Contains(l, "rewritten") || strings.Contains(l, "role is now") || strings.Contains(l, "taking over") {
							b.Log(l)
						}
					}
					b.Logf("kill at %s, window end %s, rewritten seen %s", killed.Format("15:04:05.000"), windowEnd.Format("15:04:05.000"), rewritten.Format("15:04:05.000"))
				}
				rewrite += rewritten.Sub(windowEnd)
				reconnect += time.Since(rewritten)
				fleet.kill()
				a.p.kill()
				bk.p.kill()
			}
			b.ReportMetric(float64(rewrite.Milliseconds())/float64(b.N), "rewrite-ms")
			b.ReportMetric(float64(reconnect.Milliseconds())/float64(b.N), "reconnect-ms")
			b.ReportMetric(float64((rewrite+reconnect).Milliseconds())/float64(b.N), "total-ms")
			b.ReportMetric(rssPerAgent, "rss-KB/agent")
		})
	}
}
