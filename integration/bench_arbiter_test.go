package integration

import (
	"fmt"
	"math"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testetcd"
)

// BenchmarkArbiterTakeover is a pair's failover with and without the
// etcd arbiter (a real three-member etcd on loopback): the primary is
// killed; 10 managed files, no agent processes, period 100 ms, fail
// window 3 s against a 2 s lease (with fail_window above the ttl the dead
// primary's lease has run out when the window ends, so the arbiter's cost
// is the election, not a TTL). Medians, ms after the window end (a's last
// heartbeat + the window):
//
//	done-ms      takeover done (every file rewritten)
//	first-hb-ms  the new primary's first heartbeat
//
// With the arbiter, the idle cost of the lease renewals over 10 s of the
// settled pair is reported too: primary-cpu-% (every thread, % of one
// core) and renewals/s.
//
//	go test -run '^$' -bench ArbiterTakeover -benchtime 5x ./integration
func BenchmarkArbiterTakeover(b *testing.B) {
	for _, arb := range []bool{false, true} {
		b.Run(fmt.Sprintf("arbiter=%v", arb), func(b *testing.B) {
			// The testing package calls this more than once (b.N grows):
			// each call has an etcd of its own, stopped at its end.
			var etcd *testetcd.Cluster
			if arb {
				etcd = testetcd.Start(b, 3)
			}
			var done, first, cpu, renews []float64
			for i := 0; i < b.N; i++ {
				d, f, c, r := arbiterTakeoverRun(b, etcd, arb, i)
				done, first = append(done, d), append(first, f)
				cpu, renews = append(cpu, c), append(renews, r)
			}
			b.ReportMetric(median(done), "done-ms")
			b.ReportMetric(median(first), "first-hb-ms")
			b.ReportMetric(math.Round(median(cpu)*100)/100, "primary-cpu-%")
			if arb {
				b.ReportMetric(math.Round(median(renews)*100)/100, "renewals/s")
			}
		})
	}
}

func arbiterTakeoverRun(b *testing.B, etcd *testetcd.Cluster, arb bool, run int) (done, firstHB, cpuPct, renewsPerS float64) {
	const n, window = 10, 3000
	c := newCluster(b)
	c.timing = "{period: 100ms, reply_period: 1s, fail_window: 3s}"
	extra := ""
	if arb {
		extra = fmt.Sprintf("arbiter:\n  etcd:\n    endpoints: [%s]\n    prefix: /tandem/bench-%d-%d\n    ttl: 2s\n    renew_deadline: 1s\n",
			`"`+strings.Join(etcd.Endpoints(), `", "`)+`"`, time.Now().UnixNano(), run)
	}
	a := c.addServerWith("a", nil, extra)
	bk := c.addServerWith("b", a, extra)
	files := c.writeAgents(n, a)
	c.start(a)
	defer a.p.kill()
	st := c.waitRole(a, "primary", 60*time.Second)
	c.start(bk)
	defer bk.p.kill()
	waitFiles(b, files, a, fmt.Sprint(st.Epoch))
	eventually(b, 30*time.Second, "b hears a and a knows b", func() bool {
		sb, err1 := getStatus(bk.admin)
		sa, err2 := getStatus(a.admin)
		return err1 == nil && err2 == nil && sb.Primary != nil && sb.Primary.Node == a.name && sb.Primary.LastHeartbeatAgeMS >= 0 && sa.BackupConfigured
	})
	// Idle: the primary's CPU over 10 s (and, with the arbiter, its renewals).
	renews0 := renewsOf(b, a)
	cpu0, t0 := procCPU(b, a.p.pid()), time.Now()
	time.Sleep(10 * time.Second)
	cpu1, wall := procCPU(b, a.p.pid()), time.Since(t0)
	cpuPct = cpu1.sub(cpu0).cpu.Seconds() / wall.Seconds() * 100
	renewsPerS = float64(renewsOf(b, a)-renews0) / wall.Seconds()

	a.p.signal(syscall.SIGKILL)
	<-a.p.done
	eventually(b, 60*time.Second, "b's takeover done", func() bool {
		s, err := getStatus(bk.admin)
		return err == nil && s.Role == "primary" && s.Agents.Rewritten == n
	})
	evs := waitTakeoverEvent(b, c, bk.name)
	tk := findTakeover(evs, a.name, bk.name)
	if tk.lastHB == nil || tk.takingOver == nil || tk.takeover == nil {
		b.Fatalf("event log %s lacks a's last heartbeat, b's taking-over or takeover event", c.serverEvents())
	}
	end := tk.lastHB.TMS + window
	done = float64(tk.takingOver.TMS-end) + float64(tk.takeover.PhasesMS["epoch_persisted"]+tk.takeover.PhasesMS["before_hook"]+tk.takeover.PhasesMS["files_rewritten"])
	return done, float64(tk.takeover.TMS - end), cpuPct, renewsPerS
}

// renewsOf is the server's count of successful lease renewals (0 without
// an arbiter).
func renewsOf(b *testing.B, s *server) uint64 {
	st, err := arbiterStatus(s)
	if err != nil || st.Arbiter == nil {
		return 0
	}
	return st.Arbiter.RenewsOK
}
