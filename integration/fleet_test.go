package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
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
	samp := startEpochSampler(t, files)
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
	checkI1(t, readEvents(t, evPath), samp, agentFiles(files))
	samp.check(t)
}

// BenchmarkAgentsFollow measures, with real processes, the time from the
// end of the fail window to N agents (one fleet process) connected to the
// new primary, split into rewrite (window end → takeover done, all files
// rewritten) and reconnect (→ all agents reported to the new primary), and
// the fleet's resident memory per agent.
//
//	go test -run '^$' -bench AgentsFollow -benchtime 1x ./integration
//
// TANDEM_BENCH_DEBUG=1 prints a timeline of each run (see benchTimeline);
// TANDEM_BENCH_PERF=DIR records a perf profile of the fleet and the new
// primary from just before the kill to the last agent reported
// (DIR/perf-N.data; perf report --pid splits it by process).
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
				debug := os.Getenv("TANDEM_BENCH_DEBUG") != ""
				level := "warn"
				if debug {
					level = "info" // the timeline reads the agents' connect lines
				}
				fleet := start(b, c.dir, "fleet", "agent", "--fleet", filepath.Join(c.dir, "agents"), "--period", "1s", "--log-level", level)
				eventually(b, 120*time.Second, "fleet connected to a", func() bool { return boundTo(b, a) == n })
				time.Sleep(2 * time.Second) // settle
				rssPerAgent = rssMB(b, fleet.pid()) * 1024 / float64(n)
				eventually(b, 20*time.Second, "b hears a", func() bool {
					s, err := getStatus(bk.admin)
					return err == nil && s.Primary != nil && s.Primary.LastHeartbeatAgeMS >= 0 && s.Primary.LastHeartbeatAgeMS < 50
				})
				var perf *exec.Cmd
				if d := os.Getenv("TANDEM_BENCH_PERF"); d != "" {
					perf = exec.Command("perf", "record", "-g", "-F", "2000", "-o", filepath.Join(d, fmt.Sprintf("perf-%d.data", n)),
						"-p", fmt.Sprintf("%d,%d", fleet.pid(), bk.p.pid()))
					perf.Stderr = os.Stderr
					if err := perf.Start(); err != nil {
						b.Fatal(err)
					}
					time.Sleep(300 * time.Millisecond)
					fmt.Fprintf(os.Stderr, "perf: fleet pid %d, b pid %d\n", fleet.pid(), bk.p.pid())
				}
				killed := time.Now()
				a.p.signal(syscall.SIGKILL)
				windowEnd := killed.Add(500 * time.Millisecond)
				eventually(b, 120*time.Second, "takeover done", func() bool {
					s, err := getStatus(bk.admin)
					return err == nil && s.Role == "primary" && s.Agents.Rewritten == n
				})
				rewritten := time.Now()
				var half time.Time
				eventually(b, 120*time.Second, "fleet connected to b", func() bool {
					k := boundTo(b, bk)
					if half.IsZero() && 2*k >= n {
						half = time.Now()
					}
					return k == n
				})
				connected := time.Now()
				if perf != nil {
					perf.Process.Signal(syscall.SIGINT)
					perf.Wait()
				}
				if debug {
					benchTimeline(windowEnd, rewritten, half, connected, bk, fleet, c.serverEvents())
				}
				rewrite += rewritten.Sub(windowEnd)
				reconnect += connected.Sub(rewritten)
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

// benchTimeline prints (on stderr: benchmark logs are cut at 10 lines) when
// each step of a takeover happened, in ms after the end of the fail window:
// the new primary's takeover steps and first agent command (from the event
// log), the fleet's connects to it (first, median, last) and when its
// registry counted half and all of the fleet.
func benchTimeline(windowEnd, rewritten, half, all time.Time, bk *server, fleet *proc, events string) {
	ms := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return fmt.Sprintf("%+d", t.Sub(windowEnd).Milliseconds())
	}
	at := func(l string) time.Time {
		i := strings.Index(l, `time="`)
		if i < 0 {
			return time.Time{}
		}
		rest := l[i+len(`time="`):]
		if j := strings.IndexByte(rest, '"'); j >= 0 {
			t, _ := time.Parse(time.RFC3339Nano, rest[:j])
			return t
		}
		return time.Time{}
	}
	var steps []string
	for _, l := range strings.Split(bk.p.logText(), "\n") {
		for _, key := range []string{"msg=\"taking over\"", "epoch persisted", "agent files rewritten", "role is now primary", "takeover complete"} {
			if strings.Contains(l, key) {
				steps = append(steps, fmt.Sprintf("%s %s", strings.Trim(key, `msg="`), ms(at(l))))
			}
		}
	}
	if text, err := os.ReadFile(events); err == nil {
		for _, l := range strings.Split(string(text), "\n") {
			var e serverEvent
			if json.Unmarshal([]byte(l), &e) == nil && e.Node == bk.name && e.Kind == "command" {
				steps = append(steps, "first ping "+ms(time.UnixMilli(e.TMS)))
				break
			}
		}
	}
	var conns []time.Time
	for _, l := range strings.Split(fleet.logText(), "\n") {
		if strings.Contains(l, "following address.yaml") && strings.Contains(l, bk.addr()) {
			conns = append(conns, at(l))
		}
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].Before(conns[j]) })
	agents := "fleet connects to b: none logged"
	if len(conns) > 0 {
		agents = fmt.Sprintf("fleet connects to b: %d, first %s, median %s, last %s", len(conns), ms(conns[0]), ms(conns[len(conns)/2]), ms(conns[len(conns)-1]))
	}
	fmt.Fprintf(os.Stderr, "timeline (ms after window end): %s; takeover done seen %s; %s; registry half %s, all %s\n",
		strings.Join(steps, ", "), ms(rewritten), agents, ms(half), ms(all))
}
