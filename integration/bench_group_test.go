package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
)

// addServerWith is addServer with lines of its own appended to the config.
func (c *cluster) addServerWith(name string, primaryOf *server, extra string) *server {
	c.t.Helper()
	saved := c.extra
	c.extra = saved + extra
	defer func() { c.extra = saved }()
	return c.addServer(name, primaryOf)
}

// BenchmarkGroupTakeover compares a failover of a pair with one of a group
// of three (a primary, b at priority 150, c at 100; the best candidate b
// takes over): the rank stagger must cost the best candidate nothing. 10
// managed files, no agent processes, period 100 ms, fail window 500 ms.
// Figures, ms after the window end (a's last heartbeat in the event log +
// the window), medians over the iterations:
//
//	done-ms      takeover done: every managed file rewritten (the decision +
//	             the epoch and rewrite phases of the takeover event)
//	first-hb-ms  the new primary's first heartbeat
//
//	go test -run '^$' -bench GroupTakeover -benchtime 5x ./integration
func BenchmarkGroupTakeover(b *testing.B) {
	for _, servers := range []int{2, 3} {
		b.Run(fmt.Sprintf("servers=%d", servers), func(b *testing.B) {
			var done, first []float64
			for i := 0; i < b.N; i++ {
				d, f := groupTakeoverRun(b, servers)
				done, first = append(done, d), append(first, f)
			}
			b.ReportMetric(median(done), "done-ms")
			b.ReportMetric(median(first), "first-hb-ms")
		})
	}
}

func groupTakeoverRun(b *testing.B, servers int) (done, firstHB float64) {
	const n, window = 10, 500
	c := newCluster(b)
	c.timing = "{period: 100ms, reply_period: 1s, fail_window: 500ms}"
	a := c.addServerWith("a", nil, "priority: 100\n")
	bk := c.addServerWith("b", a, "priority: 150\n")
	var third *server
	if servers == 3 {
		third = c.addServerWith("c", a, "priority: 100\n")
	}
	files := c.writeAgents(n, a)
	c.start(a)
	defer a.p.kill()
	c.waitRole(a, "primary", 60*time.Second)
	c.start(bk)
	defer bk.p.kill()
	if third != nil {
		c.start(third)
		defer third.p.kill()
	}
	waitFiles(b, files, a, "1")
	eventually(b, 30*time.Second, "the group has formed", func() bool {
		sa, err := getGroupStatus(a.admin)
		if err != nil || len(sa.Backups) != servers-1 || !watches(bk, "a") {
			return false
		}
		if third == nil {
			return true
		}
		sc, err := getGroupStatus(third.admin)
		return err == nil && sc.Rank != nil && *sc.Rank == 1 && watches(third, "a")
	})
	eventually(b, 20*time.Second, "b hears a", func() bool {
		s, err := getStatus(bk.admin)
		return err == nil && s.Primary != nil && s.Primary.LastHeartbeatAgeMS >= 0 && s.Primary.LastHeartbeatAgeMS < 50
	})
	a.p.signal(syscall.SIGKILL)
	<-a.p.done
	eventually(b, 60*time.Second, "b's takeover done", func() bool {
		s, err := getStatus(bk.admin)
		return err == nil && s.Role == "primary" && s.Agents.Rewritten == n
	})
	if third != nil {
		eventually(b, 20*time.Second, "c follows b", func() bool { return watches(third, "b") })
		if s := mustStatus(b, third); s.Epoch != 0 {
			b.Fatalf("c took over too (epoch %d)", s.Epoch)
		}
	}
	evs := waitTakeoverEvent(b, c, bk.name)
	tk := findTakeover(evs, a.name, bk.name)
	lastHB, takingOver, takeover := tk.lastHB, tk.takingOver, tk.takeover
	if lastHB == nil || takingOver == nil || takeover == nil {
		b.Fatalf("event log %s lacks a's last heartbeat, b's taking-over or takeover event", c.serverEvents())
	}
	end := lastHB.TMS + window
	done = float64(takingOver.TMS-end) + float64(takeover.PhasesMS["epoch_persisted"]+takeover.PhasesMS["before_hook"]+takeover.PhasesMS["files_rewritten"])
	return done, float64(takeover.TMS - end)
}

// waitTakeoverEvent waits until node's takeover event is in the servers'
// event log (written at its first heartbeat as primary) and returns the log.
func waitTakeoverEvent(tb testing.TB, c *cluster, node string) []eventlog.Event {
	tb.Helper()
	var evs []eventlog.Event
	eventually(tb, 20*time.Second, node+"'s takeover event in the log", func() bool {
		var err error
		if evs, err = eventlog.Read(c.serverEvents(), 0); err != nil {
			return false
		}
		for _, e := range evs {
			if e.Node == node && e.Kind == eventlog.KindTakeover {
				return true
			}
		}
		return false
	})
	return evs
}

// BenchmarkHealthHandover measures the time from the primary's managed
// service failing (its check, every 100 ms with fall 3, starts failing) to
// the handover done: the best healthy backup's role event "primary". The
// target is fall × interval + one period (300 + 100 ms); a group of three
// (b at priority 150 is chosen), period 100 ms.
//
//	handover-ms  check failing → b primary (event log, wall clock)
//	backup-ms    check failing → a is b's backup
//
//	go test -run '^$' -bench HealthHandover -benchtime 5x ./integration
func BenchmarkHealthHandover(b *testing.B) {
	var handover, back []float64
	for i := 0; i < b.N; i++ {
		h, k := healthHandoverRun(b)
		handover, back = append(handover, h), append(back, k)
	}
	b.ReportMetric(median(handover), "handover-ms")
	b.ReportMetric(median(back), "backup-ms")
}

func healthHandoverRun(b *testing.B) (handover, backup float64) {
	c := newCluster(b)
	c.timing = "{period: 100ms, reply_period: 1s, fail_window: 500ms}"
	dir := b.TempDir()
	check := func(name string) string {
		return fmt.Sprintf("checks: [{name: svc, command: \"test ! -e %s/down-%s\", interval: 100ms, timeout: 100ms, fall: 3, rise: 1}]\n", dir, name)
	}
	a := c.addServerWith("a", nil, "priority: 100\n"+check("a"))
	bk := c.addServerWith("b", a, "priority: 150\n"+check("b"))
	cs := c.addServerWith("c", a, "priority: 100\n"+check("c"))
	c.start(a)
	defer a.p.kill()
	c.waitRole(a, "primary", 60*time.Second)
	c.start(bk)
	defer bk.p.kill()
	c.start(cs)
	defer cs.p.kill()
	eventually(b, 30*time.Second, "the group has formed", func() bool {
		sa, err := getGroupStatus(a.admin)
		return err == nil && len(sa.Backups) == 2 && watches(bk, "a") && watches(cs, "a")
	})
	failed := time.Now()
	mustOK(b, os.WriteFile(filepath.Join(dir, "down-a"), nil, 0o644))
	eventually(b, 30*time.Second, "a is b's backup", func() bool { return watches(a, "b") })
	evs, err := eventlog.Read(c.serverEvents(), 0)
	if err != nil {
		b.Fatal(err)
	}
	var bPrimary, aBackup int64
	for _, e := range evs {
		if e.Kind != eventlog.KindRole || e.TMS < failed.UnixMilli() {
			continue
		}
		if e.Node == "b" && e.Role == "primary" && bPrimary == 0 {
			bPrimary = e.TMS
		}
		if e.Node == "a" && e.Role == "backup" && aBackup == 0 {
			aBackup = e.TMS
		}
	}
	if bPrimary == 0 || aBackup == 0 {
		b.Fatalf("event log %s lacks b primary (%d) or a backup (%d) after the check failed", c.serverEvents(), bPrimary, aBackup)
	}
	return float64(bPrimary - failed.UnixMilli()), float64(aBackup - failed.UnixMilli())
}
