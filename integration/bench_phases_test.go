package integration

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
)

// takeoverPhases are the phases of a takeover event's phases_ms, in order:
// each is measured from the end of the previous one, the first from the
// decision.
var takeoverPhases = []string{"epoch_persisted", "before_hook", "files_rewritten", "location_dormant", "first_heartbeat"}

// takeoverMarks are the instants BenchmarkTakeoverPhases reports, in ms after
// the end of the fail window (the killed primary's last heartbeat + the
// window), in the order they happen.
var takeoverMarks = []string{"detect", "epoch", "rewritten", "primary", "first-hb", "bound"}

// BenchmarkTakeoverPhases splits a failover of a pair with 10 managed files
// and 10 live agents (one fleet process; period 100 ms, fail window 500 ms)
// into its phases, each in ms after the end of the fail window:
//
//	detect-ms     the backup's role event "taking-over" (the decision)
//	epoch-ms      the new epoch on disk (decision + phases_ms.epoch_persisted)
//	rewritten-ms  takeover done: every managed file rewritten (+ before_hook + files_rewritten)
//	primary-ms    the backup's role event "primary"
//	first-hb-ms   its first heartbeat as primary (its takeover event)
//	bound-ms      every agent accepted a command of the new primary (the
//	              fleet's --events: the latest of each agent's first)
//
// The window end is the killed primary's last heartbeat in the servers'
// event log (event_log_messages) + the window: the primary is killed right
// after the backup counted one of its heartbeats. Each figure is the median
// over the iterations (-benchtime 5x for a median of 5).
//
//	go test -run '^$' -bench TakeoverPhases -benchtime 5x ./integration
func BenchmarkTakeoverPhases(b *testing.B) {
	const n = 10
	marks := map[string][]float64{}
	phases := map[string][]float64{}
	var skews, firstBound []float64
	for i := 0; i < b.N; i++ {
		r := takeoverRun(b, n)
		for _, m := range takeoverMarks {
			marks[m] = append(marks[m], r.marks[m])
		}
		for _, p := range takeoverPhases {
			phases[p] = append(phases[p], r.phases[p])
		}
		skews = append(skews, r.skew)
		firstBound = append(firstBound, r.firstBound)
	}
	var line []string
	for _, m := range takeoverMarks {
		v := median(marks[m])
		b.ReportMetric(v, m+"-ms")
		line = append(line, fmt.Sprintf("%s %+.0f", m, v))
	}
	var ph []string
	for _, p := range takeoverPhases {
		ph = append(ph, fmt.Sprintf("%s %.0f", p, median(phases[p])))
	}
	b.Logf("takeover of %d files/%d agents, median of %d, ms after window end: %s; first agent bound %+.0f; phase durations (ms): %s; last heartbeat by event log vs by status age: %+.0f ms",
		n, n, b.N, strings.Join(line, ", "), median(firstBound), strings.Join(ph, ", "), median(skews))
}

// takeoverResult is one failover of BenchmarkTakeoverPhases.
type takeoverResult struct {
	marks  map[string]float64 // takeoverMarks, ms after window end
	phases map[string]float64 // phases_ms of the takeover event
	skew   float64            // window end by the event log − by kill time and status age, ms
	// firstBound is when the first agent accepted a command of the new
	// primary (bound is the last), ms after window end.
	firstBound float64
}

func takeoverRun(b *testing.B, n int) takeoverResult {
	b.Helper()
	const window = 500 * time.Millisecond
	c := newCluster(b)
	c.timing = "{period: 100ms, reply_period: 1s, fail_window: 500ms}"
	a := c.addServer("a", nil)
	bk := c.addServer("b", a)
	files := c.writeAgents(n, a)
	c.start(a)
	c.waitRole(a, "primary", 60*time.Second)
	c.start(bk)
	c.waitRole(bk, "backup", 60*time.Second)
	waitFiles(b, files, a, "1")
	evPath := filepath.Join(c.dir, "agent-events.jsonl")
	fleet := start(b, c.dir, "fleet", "agent", "--fleet", filepath.Join(c.dir, "agents"), "--period", "1s", "--log-level", "warn", "--events", evPath)
	defer fleet.kill()
	defer bk.p.kill()
	defer a.p.kill()
	idA := mustStatus(b, a).FailoverID
	eventually(b, 60*time.Second, "every agent accepted a's commands", func() bool { return acceptedFrom(readEvents(b, evPath), idA, 1) == n })
	time.Sleep(time.Second) // settle
	var age int64
	eventually(b, 20*time.Second, "b hears a", func() bool {
		s, err := getStatus(bk.admin)
		if err == nil && s.Primary != nil {
			age = s.Primary.LastHeartbeatAgeMS
		}
		return err == nil && s.Primary != nil && age >= 0 && age < 50
	})
	killed := time.Now()
	a.p.signal(syscall.SIGKILL)
	<-a.p.done
	var sb status
	eventually(b, 60*time.Second, "takeover done", func() bool {
		var err error
		sb, err = getStatus(bk.admin)
		return err == nil && sb.Role == "primary" && sb.Agents.Rewritten == n
	})
	eventually(b, 60*time.Second, "every agent accepted b's commands", func() bool {
		return acceptedFrom(readEvents(b, evPath), sb.FailoverID, sb.Epoch) == n
	})
	// The takeover event is written at the first heartbeat, which comes
	// before the agents' commands: it is in the log by now.
	evs, err := eventlog.Read(c.serverEvents(), 0)
	if err != nil {
		b.Fatal(err)
	}
	tk := findTakeover(evs, a.name, bk.name)
	lastHB, takingOver, primary, takeover := tk.lastHB, tk.takingOver, tk.primary, tk.takeover
	if lastHB == nil || takingOver == nil || primary == nil || takeover == nil {
		b.Fatalf("server event log %s lacks a's last heartbeat (%v), b's taking-over (%v), primary (%v) or takeover (%v) event",
			c.serverEvents(), lastHB != nil, takingOver != nil, primary != nil, takeover != nil)
	}
	windowEnd := lastHB.TMS + window.Milliseconds()
	rel := func(tms int64) float64 { return float64(tms - windowEnd) }
	r := takeoverResult{marks: map[string]float64{}, phases: map[string]float64{}}
	for _, p := range takeoverPhases {
		r.phases[p] = float64(takeover.PhasesMS[p]) // before_hook: absent without a hook
	}
	r.marks["detect"] = rel(takingOver.TMS)
	r.marks["epoch"] = r.marks["detect"] + r.phases["epoch_persisted"]
	r.marks["rewritten"] = r.marks["epoch"] + r.phases["before_hook"] + r.phases["files_rewritten"]
	r.marks["primary"] = rel(primary.TMS)
	r.marks["first-hb"] = rel(takeover.TMS)
	// All agents bound: the latest of each agent's first accepted command
	// from the new primary.
	first := map[string]int64{}
	for _, e := range readEvents(b, evPath) {
		if e.Accepted && e.From.ID == sb.FailoverID && e.From.Epoch == sb.Epoch {
			if t, ok := first[e.Agent]; !ok || e.T < t {
				first[e.Agent] = e.T
			}
		}
	}
	var bound, firstBound int64
	for _, t := range first {
		bound = max(bound, t)
		if firstBound == 0 || t < firstBound {
			firstBound = t
		}
	}
	r.marks["bound"] = rel(bound)
	r.firstBound = rel(firstBound)
	r.skew = float64(windowEnd - killed.Add(window).Add(-time.Duration(age)*time.Millisecond).UnixMilli())
	return r
}

// takeoverEvents are the event-log records a takeover benchmark times:
// the old primary's last heartbeat, and the new one's first taking-over
// and primary role events and its takeover record (nil: not logged).
type takeoverEvents struct {
	lastHB, takingOver, primary, takeover *eventlog.Event
}

// findTakeover finds them in evs, for old's replacement by next.
func findTakeover(evs []eventlog.Event, old, next string) takeoverEvents {
	var tk takeoverEvents
	for i := range evs {
		e := &evs[i]
		switch {
		case e.Node == old && e.Kind == eventlog.KindHeartbeat:
			tk.lastHB = e
		case e.Node == next && e.Kind == eventlog.KindRole && e.Role == "taking-over" && tk.takingOver == nil:
			tk.takingOver = e
		case e.Node == next && e.Kind == eventlog.KindRole && e.Role == "primary" && tk.primary == nil:
			tk.primary = e
		case e.Node == next && e.Kind == eventlog.KindTakeover && tk.takeover == nil:
			tk.takeover = e
		}
	}
	return tk
}

// median of xs (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkIdleCPU measures the idle cost of a primary + backup pair (no
// failover, no agents; period 100 ms) over $TANDEM_BENCH_IDLE (default 60s):
// the CPU time of each server process (every thread) over the wall time, in
// % of one core to 0.01 %, and resident memory at the end; for 10 and 5,000
// managed files, to show whether the idle cost grows with the number of
// files (the target: it must not). The servers log role changes only
// (event_log_messages off, as in production).
//
//	TANDEM_BENCH_IDLE=20s go test -run '^$' -bench IdleCPU -benchtime 1x ./integration
func BenchmarkIdleCPU(b *testing.B) {
	span := 60 * time.Second
	if v := os.Getenv("TANDEM_BENCH_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			b.Fatalf("TANDEM_BENCH_IDLE=%q: want a positive duration such as 20s", v)
		}
		span = d
	}
	for _, n := range []int{10, 5000} {
		b.Run(fmt.Sprintf("files=%d", n), func(b *testing.B) {
			var cpuA, cpuB, rssA, rssB []float64
			for i := 0; i < b.N; i++ {
				pa, pb, ra, rb := idleRun(b, n, span)
				cpuA, cpuB = append(cpuA, pa), append(cpuB, pb)
				rssA, rssB = append(rssA, ra), append(rssB, rb)
			}
			round := func(x float64) float64 { return math.Round(x*100) / 100 }
			b.ReportMetric(round(median(cpuA)), "primary-cpu-%")
			b.ReportMetric(round(median(cpuB)), "backup-cpu-%")
			b.ReportMetric(round(median(rssA)), "primary-rss-MB")
			b.ReportMetric(round(median(rssB)), "backup-rss-MB")
		})
	}
}

// idleRun starts a pair with n files, lets it settle and returns each
// server's CPU % over span and its RSS in MB.
func idleRun(b *testing.B, n int, span time.Duration) (cpuA, cpuB, rssA, rssB float64) {
	b.Helper()
	c := newCluster(b)
	c.timing = "{period: 100ms, reply_period: 1s, fail_window: 500ms}"
	a := c.addServer("a", nil)
	bk := c.addServer("b", a)
	for _, s := range []*server{a, bk} {
		cfg, err := os.ReadFile(s.cfgPath)
		if err != nil {
			b.Fatal(err)
		}
		quiet := strings.Replace(string(cfg), "event_log_messages: true", "event_log_messages: false", 1)
		if err := os.WriteFile(s.cfgPath, []byte(quiet), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	files := c.writeAgents(n, a)
	c.start(a)
	defer a.p.kill()
	c.waitRole(a, "primary", 60*time.Second)
	c.start(bk)
	defer bk.p.kill()
	c.waitRole(bk, "backup", 60*time.Second)
	waitFiles(b, files, a, "1")
	eventually(b, 20*time.Second, "b hears a and a knows b", func() bool {
		sb, err1 := getStatus(bk.admin)
		sa, err2 := getStatus(a.admin)
		return err1 == nil && err2 == nil && sb.Primary != nil && sb.Primary.Node == a.name && sa.BackupConfigured
	})
	time.Sleep(3 * time.Second) // settle: startup scans, first GCs
	epochA := mustStatus(b, a).Epoch
	t0 := time.Now()
	a0, b0 := procCPU(b, a.p.pid()), procCPU(b, bk.p.pid())
	time.Sleep(span)
	a1, b1 := procCPU(b, a.p.pid()), procCPU(b, bk.p.pid())
	wall := time.Since(t0)
	sa, sb := mustStatus(b, a), mustStatus(b, bk)
	if sa.Role != "primary" || sb.Role != "backup" || sa.Epoch != epochA {
		b.Fatalf("the pair did not stay idle: a %s at epoch %d (was %d), b %s", sa.Role, sa.Epoch, epochA, sb.Role)
	}
	pa, pb := a1.sub(a0), b1.sub(b0)
	pct := func(d time.Duration) float64 { return d.Seconds() / wall.Seconds() * 100 }
	b.Logf("files=%d over %s: primary %.3f %% (%s; /proc stat ticks %.2f %%, %d→%d threads), backup %.3f %% (%s; ticks %.2f %%, %d→%d threads)",
		n, wall.Round(time.Millisecond), pct(pa.cpu), pa.how, pct(pa.ticks), len(a0.tids), len(a1.tids),
		pct(pb.cpu), pb.how, pct(pb.ticks), len(b0.tids), len(b1.tids))
	return pct(pa.cpu), pct(pb.cpu), rssMB(b, a.p.pid()), rssMB(b, bk.p.pid())
}

// cpuSample is a process's CPU time at one instant: from /proc/PID/stat
// (utime+stime of every thread, dead ones included, in 1/100 s ticks) and
// the sum of /proc/PID/task/*/schedstat (ns, live threads only).
type cpuSample struct {
	ticks int64
	ns    map[string]int64 // tid -> ns on CPU (nil: no schedstat)
	tids  []string
}

// cpuDelta is the CPU time between two samples: cpu from schedstat when
// every thread of the first sample is still there (ns resolution), else
// from the ticks.
type cpuDelta struct {
	cpu, ticks time.Duration
	how        string
}

func (s cpuSample) sub(old cpuSample) cpuDelta {
	d := cpuDelta{ticks: time.Duration(s.ticks-old.ticks) * 10 * time.Millisecond}
	d.cpu, d.how = d.ticks, "stat ticks"
	if s.ns == nil || old.ns == nil {
		return d
	}
	var ns int64
	for tid, v := range s.ns {
		ns += v - old.ns[tid] // a new thread: all of its time
	}
	for tid := range old.ns {
		if _, ok := s.ns[tid]; !ok {
			d.how = "stat ticks: a thread exited"
			return d
		}
	}
	d.cpu, d.how = time.Duration(ns), "schedstat"
	return d
}

func procCPU(b testing.TB, pid int) cpuSample {
	b.Helper()
	s := cpuSample{ticks: cpuTicks(b, pid), ns: map[string]int64{}}
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range ents {
		s.tids = append(s.tids, e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			s.ns = nil // no schedstat (or the thread just exited): ticks only
			continue
		}
		if f := strings.Fields(string(raw)); len(f) > 0 && s.ns != nil {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			s.ns[e.Name()] = v
		}
	}
	return s
}
