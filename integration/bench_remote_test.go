package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
)

// BenchmarkRemoteAgentsFollow measures a failover of agents on their own
// hosts: N agent files in no server's glob (remoteAgents), run by one fleet
// process (`tandem agent --fleet DIR --period 1s`); the servers' period is
// 100 ms and their fail window 1 s. No server rewrites a file: the new
// primary's signed rebind reaches the agents on their standby links, each
// agent compare-and-swaps its own address.yaml and reconnects.
//
// Before the kill every file is at epoch 1 on a and names b in
// failover_servers (the standby links are up). Figures, medians over the
// iterations (-benchtime 3x for a median of 3):
//
//	bound-ms       window end → every agent bound to the new primary (the
//	               latest of each agent's first command accepted from the new
//	               primary's failover id, from the fleet's --events)
//	cpu-ms         the new primary's CPU time (utime+stime, /proc/PID/stat;
//	               every thread) from window end to all bound
//	rss-KB/agent   the fleet's VmRSS / N, settled before the kill
//
// The window end is the killed primary's last heartbeat in the servers'
// event log + the window (as BenchmarkTakeoverPhases). Each run also logs a
// timeline: detect, primary, b's first rebind, the fleet's "rebound" lines
// (first, median, last), the first and last agent bound.
//
//	go test -run '^$' -bench RemoteAgentsFollow -benchtime 3x -timeout 30m ./integration
//
// The agents' files are under TMPDIR, and the file system counts. Each
// rebind renames a new file over the old one, so a takeover allocates one
// inode per agent and frees one. ext4 without a journal (the root of the
// VMs this project is built on) skips, on each allocation, every inode
// freed in the last seconds, one lookup each: a fleet's burst then costs
// time quadratic in its size in the kernel alone. A journaled ext4 or xfs
// (what agent hosts run) does not; nor does tmpfs, which has no flush at
// all (the figure of tandem's CPU alone). Point TMPDIR at each to compare;
// the log line names the file system type.
//
// TANDEM_BENCH_AGENT_PERIOD sets the fleet's --period (default 1s).
// TANDEM_BENCH_PERF=DIR records a perf profile of the fleet and the new
// primary from just before the kill to all bound (DIR/perf-remote-N.data).
// TANDEM_BENCH_KEEP=DIR copies each run's logs (fleet, servers, event
// logs) into DIR for a closer look; TANDEM_BENCH_LOG=debug runs the fleet at that log level (default info;
// a fleet logs each agent's "rebound" line, the timeline's, at debug and one
// summary line at info); TANDEM_BENCH_AGENTS=10,1000 picks the sizes
// (default 10,1000,10000).
func BenchmarkRemoteAgentsFollow(b *testing.B) {
	raiseNofile(b)
	sizes := []int{10, 1000, 10000}
	if v := os.Getenv("TANDEM_BENCH_AGENTS"); v != "" {
		sizes = nil
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				b.Fatalf("TANDEM_BENCH_AGENTS=%q: want sizes such as 10,1000", v)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			var bound, cpu, rss []float64
			for i := 0; i < b.N; i++ {
				r := remoteFollowRun(b, n)
				bound, cpu, rss = append(bound, r.bound), append(cpu, r.cpuMS), append(rss, r.rssKB)
			}
			b.ReportMetric(median(bound), "bound-ms")
			b.ReportMetric(median(cpu), "cpu-ms")
			b.ReportMetric(median(rss), "rss-KB/agent")
		})
	}
}

// agentPeriod is the fleet's --period (TANDEM_BENCH_AGENT_PERIOD, default
// 1s): how often each agent reports. It is the fleet's and the servers'
// steady load (N reports a second), not a step of the rebind.
func agentPeriod(b testing.TB) string {
	v := os.Getenv("TANDEM_BENCH_AGENT_PERIOD")
	if v == "" {
		return "1s"
	}
	if _, err := time.ParseDuration(v); err != nil {
		b.Fatalf("TANDEM_BENCH_AGENT_PERIOD=%q: want a duration such as 5s", v)
	}
	return v
}

// fsName names the file system type holding dir (statfs(2)'s magic).
func fsName(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "?"
	}
	switch st.Type {
	case 0xEF53:
		return "ext4"
	case 0x01021994:
		return "tmpfs"
	case 0x58465342:
		return "xfs"
	case 0x9123683E:
		return "btrfs"
	}
	return fmt.Sprintf("fs 0x%x", st.Type)
}

// raiseNofile lifts the soft RLIMIT_NOFILE of the test process (and so of
// the processes it starts) to the hard limit.
func raiseNofile(b testing.TB) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Logf("getrlimit: %v", err)
		return
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			b.Logf("setrlimit NOFILE %d: %v", lim.Max, err)
		}
	}
}

type remoteFollowResult struct {
	bound, cpuMS, rssKB float64
}

func remoteFollowRun(b *testing.B, n int) remoteFollowResult {
	b.Helper()
	const window = time.Second
	c := newCluster(b)
	c.timing = "{period: 100ms, reply_period: 1s, fail_window: 1s}"
	a := c.addServer("a", nil)
	bk := c.addServer("b", a)
	c.start(a)
	defer a.p.kill()
	c.waitRole(a, "primary", 60*time.Second)
	c.start(bk)
	defer bk.p.kill()
	c.waitRole(bk, "backup", 60*time.Second)
	dir, files := c.remoteAgents(n, a)
	evPath := filepath.Join(c.dir, "agent-events.jsonl")
	level := os.Getenv("TANDEM_BENCH_LOG")
	if level == "" {
		level = "info"
	}
	t0 := time.Now()
	fleet := start(b, c.dir, "fleet", "agent", "--fleet", dir, "--period", agentPeriod(b), "--log-level", level, "--events", evPath)
	defer fleet.kill()
	// A 10,000-agent fleet takes minutes to be rebound by a and learn b.
	setupMax := 60*time.Second + time.Duration(n)*30*time.Millisecond
	// At period 100 ms and a 1 s window, a machine saturated by the
	// fleet's first rollout can starve a's heartbeats: b then takes over
	// before the measurement, and the run is void.
	still := func() {
		if s, err := getStatus(bk.admin); err == nil && s.Role != "backup" {
			b.Fatalf("b became %s during the setup (a's heartbeats went unheard for the 1 s window while %d agents were first bound: an overloaded machine); no figure from this run", s.Role, n)
		}
	}
	waitFilesFor(b, files, a, "1", setupMax, still)
	waitFailoverServersTB(b, files, bk, setupMax, still)
	setup := time.Since(t0)
	time.Sleep(2 * time.Second) // settle: the standby links report, GC
	rssKB := rssMB(b, fleet.pid()) * 1024 / float64(n)
	idA := mustStatus(b, a).FailoverID
	eventually(b, 20*time.Second, "b hears a", func() bool {
		s, err := getStatus(bk.admin)
		return err == nil && s.Primary != nil && s.Primary.Node == a.name && s.Primary.LastHeartbeatAgeMS >= 0 && s.Primary.LastHeartbeatAgeMS < 50
	})
	cpu, fleetCPU, selfCPU := startCPUSampler(bk.p.pid()), startCPUSampler(fleet.pid()), startCPUSampler(os.Getpid())
	var perf *exec.Cmd
	if d := os.Getenv("TANDEM_BENCH_PERF"); d != "" {
		perf = exec.Command("perf", "record", "-g", "-F", "999", "-o", filepath.Join(d, fmt.Sprintf("perf-remote-%d.data", n)),
			"-p", fmt.Sprintf("%d,%d", fleet.pid(), bk.p.pid()))
		perf.Stderr = os.Stderr
		if err := perf.Start(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		fmt.Fprintf(os.Stderr, "perf: fleet pid %d, b pid %d\n", fleet.pid(), bk.p.pid())
	}
	evOff := fileSize(evPath) // the new primary's commands come after this
	a.p.signal(syscall.SIGKILL)
	<-a.p.done
	var sb status
	eventually(b, 120*time.Second, "b primary", func() bool {
		var err error
		sb, err = getStatus(bk.admin)
		return err == nil && sb.Role == "primary"
	})
	if sb.FailoverID == idA || sb.Epoch != 2 {
		b.Fatalf("b is primary as %s@%d (a was %s@1)", sb.FailoverID, sb.Epoch, idA)
	}
	first := map[string]int64{} // agent -> first accepted command of b
	rd := &eventTail{path: evPath, off: evOff}
	// Polled every 100 ms, not eventually's 10: the figures come from the
	// events' own times, and the bench's reading competes for the CPU with
	// the rebind it measures (at 10 ms it took half a core).
	pollUntil(b, setupMax, 100*time.Millisecond, fmt.Sprintf("%d agents accepted b's commands", n), func() bool {
		rd.read([]string{`"accepted":true`, sb.FailoverID}, func(e event) {
			if e.Accepted && e.From.ID == sb.FailoverID && e.From.Epoch == sb.Epoch {
				if t, ok := first[e.Agent]; !ok || e.T < t {
					first[e.Agent] = e.T
				}
			}
		})
		return len(first) >= n
	})
	samples, fleetSamples, selfSamples := cpu.halt(), fleetCPU.halt(), selfCPU.halt()
	if perf != nil {
		_ = perf.Process.Signal(syscall.SIGINT)
		_ = perf.Wait()
	}
	evs, err := eventlog.Read(c.serverEvents(), 0)
	if err != nil {
		b.Fatal(err)
	}
	tk := findTakeover(evs, a.name, bk.name)
	lastHB, takingOver, primary := tk.lastHB, tk.takingOver, tk.primary
	var rebind *eventlog.Event
	rebinds := 0
	for i := range evs {
		if e := &evs[i]; e.Node == bk.name && e.Kind == "rebind" && e.Epoch == sb.Epoch {
			if rebind == nil {
				rebind = e
			}
			rebinds++
		}
	}
	if lastHB == nil || takingOver == nil || primary == nil {
		b.Fatalf("server event log %s lacks a's last heartbeat (%v), b's taking-over (%v) or primary (%v) event",
			c.serverEvents(), lastHB != nil, takingOver != nil, primary != nil)
	}
	windowEnd := lastHB.TMS + window.Milliseconds()
	var last, firstBound int64
	for _, t := range first {
		last = max(last, t)
		if firstBound == 0 || t < firstBound {
			firstBound = t
		}
	}
	rel := func(t int64) string { return fmt.Sprintf("%+d", t-windowEnd) }
	cpuD, how := cpuBetween(samples, windowEnd, last)
	fleetD, _ := cpuBetween(fleetSamples, windowEnd, last)
	selfD, _ := cpuBetween(selfSamples, windowEnd, last)
	// When the agents' own rewrites were done: each agent's "rebound" line
	// (a fleet logs them at debug: TANDEM_BENCH_LOG=debug), else the
	// fleet's summary line, logged once its rebinds have been quiet for
	// half a second (first = line - over, last = line - the quiet).
	var rebound []int64
	summary := ""
	eventually(b, 5*time.Second, "the fleet's rebound summary", func() bool {
		rebound, summary = reboundTimes(fleet.logText(), sb.FailoverID)
		return len(rebound) > 0 || summary != ""
	})
	rb := summary
	if k := len(rebound); k > 0 {
		rb = fmt.Sprintf("%d, first %s, median %s, last %s", k, rel(rebound[0]), rel(rebound[k/2]), rel(rebound[k-1]))
	} else if first, last, n, ok := parseReboundSummary(summary); ok {
		rb = fmt.Sprintf("%d (summary), first %s, last %s", n, rel(first), rel(last))
	}
	// Each agent's own rewrite time is its file's mtime: how long an
	// agent took from its rewrite to its first accepted command of b.
	var lags []int64
	for _, f := range files {
		rel, err := filepath.Rel(dir, filepath.Dir(f))
		st, serr := os.Stat(f)
		if t, ok := first[rel]; ok && err == nil && serr == nil {
			lags = append(lags, t-st.ModTime().UnixMilli())
		}
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	lag := "-"
	if k := len(lags); k > 0 {
		lag = fmt.Sprintf("median %d, p90 %d, max %d", lags[k/2], lags[k*9/10], lags[k-1])
	}
	firstRebind := "-"
	if rebind != nil {
		firstRebind = rel(rebind.TMS)
	}
	b.Logf("agents=%d on %s, agent period %s: ms after window end: detect %s, primary %s, first rebind %s (%d rebinds sent in all), rebound %s, bound first %s, all %s (rewrite → first command of b: %s); b's CPU %.0f ms (%s), the fleet's %.0f ms, the bench's own %.0f ms; fleet RSS %.0f KB/agent; setup %s",
		n, fsName(dir), agentPeriod(b), rel(takingOver.TMS), rel(primary.TMS), firstRebind, rebinds, rb, rel(firstBound), rel(last), lag,
		float64(cpuD)/float64(time.Millisecond), how, float64(fleetD)/float64(time.Millisecond), float64(selfD)/float64(time.Millisecond), rssKB, setup.Round(time.Millisecond))
	if keep := os.Getenv("TANDEM_BENCH_KEEP"); keep != "" {
		keepLogs(b, c.dir, filepath.Join(keep, fmt.Sprintf("agents-%d-%d", n, time.Now().UnixMilli())))
	}
	return remoteFollowResult{bound: float64(last - windowEnd), cpuMS: float64(cpuD) / float64(time.Millisecond), rssKB: rssKB}
}

// waitFilesFor is waitFiles with a deadline of d, calling still (which may
// fail the benchmark) between polls.
func waitFilesFor(b testing.TB, files []string, srv *server, epoch string, d time.Duration, still func()) {
	b.Helper()
	deadline := time.Now().Add(d)
	for !filesAt(b, files, srv, epoch) {
		still()
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %s waiting for %d files at epoch %s on %s", d, len(files), epoch, srv.name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitFailoverServersTB waits (polling every 200 ms, calling still
// between polls) until every file names srv in failover_servers.
func waitFailoverServersTB(b testing.TB, files []string, srv *server, d time.Duration, still func()) {
	b.Helper()
	deadline := time.Now().Add(d)
	for {
		still()
		ok := true
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil || !namesFailoverServer(string(raw), srv.addr()) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %d files to name %s in failover_servers", len(files), srv.name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func namesFailoverServer(text, addr string) bool {
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "failover_servers" {
			continue
		}
		v = strings.Trim(strings.TrimSpace(strings.SplitN(v, "#", 2)[0]), `"'`)
		for _, hp := range strings.Split(v, ",") {
			if strings.TrimSpace(hp) == addr {
				return true
			}
		}
	}
	return false
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// eventTail reads an agents' --events file from off on, a call at a time;
// a line cut by a read is kept for the next call. It shares the machine with
// what it measures, so it is frugal: one buffer for all calls, and only
// lines holding every one of a call's needles are decoded.
type eventTail struct {
	path string
	off  int64
	part []byte
	buf  []byte
}

func (r *eventTail) read(needles []string, fn func(event)) {
	f, err := os.Open(r.path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(r.off, 0); err != nil {
		return
	}
	if r.buf == nil {
		r.buf = make([]byte, 1<<20)
	}
	for {
		k, err := f.Read(r.buf)
		if k > 0 {
			r.off += int64(k)
			data := append(r.part, r.buf[:k]...)
		lines:
			for {
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					break
				}
				line := data[:i]
				data = data[i+1:]
				for _, n := range needles {
					if !bytes.Contains(line, []byte(n)) {
						continue lines
					}
				}
				var e event
				if json.Unmarshal(line, &e) == nil {
					fn(e)
				}
			}
			r.part = append(r.part[:0], data...)
		}
		if err != nil {
			return
		}
	}
}

// reboundTimes returns the times of a fleet log's per-agent "rebound" lines
// for the token id, sorted, and its last summary line for it ("" if none).
func reboundTimes(log, id string) (times []int64, summary string) {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, id) {
			continue
		}
		switch {
		case strings.Contains(l, "rebound: address.yaml now names the new primary"):
			if t := logTime(l); !t.IsZero() {
				times = append(times, t.UnixMilli())
			}
		case strings.Contains(l, "rebound: the agents' address.yaml files now name the new primary"):
			summary = l
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return times, summary
}

// parseReboundSummary reads a fleet's rebound summary line: its agents, and
// the first and last rebind (ms) from its time, its over= and the half
// second of quiet after the last one.
func parseReboundSummary(l string) (first, last int64, n int, ok bool) {
	t := logTime(l)
	var over time.Duration
	for _, f := range strings.Fields(l) {
		if v, found := strings.CutPrefix(f, "over="); found {
			over, _ = time.ParseDuration(v)
		}
		if v, found := strings.CutPrefix(f, "agents="); found {
			n, _ = strconv.Atoi(v)
		}
	}
	if t.IsZero() || over == 0 || n == 0 {
		return 0, 0, 0, false
	}
	first = t.Add(-over).UnixMilli()
	last = t.Add(-500 * time.Millisecond).UnixMilli()
	return first, max(first, last), n, true
}

// logTime is the time="..." of a text log line (zero if none).
func logTime(l string) time.Time {
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

// cpuSampler samples a process's CPU time every 25 ms (cpuSampleEvery).
type cpuSampler struct {
	pid  int
	mu   sync.Mutex
	out  []stampedCPU
	stop chan struct{}
	done chan struct{}
}

type stampedCPU struct {
	at int64 // Unix ms
	s  cpuSample
}

// cpuSampleEvery is a cpuSampler's interval: fine enough for a window of
// seconds, and the samplers' reads of /proc share the two cores with what
// they measure (at 10 ms, three of them took about a tenth of a core).
const cpuSampleEvery = 25 * time.Millisecond

func startCPUSampler(pid int) *cpuSampler {
	c := &cpuSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		tk := time.NewTicker(cpuSampleEvery)
		defer tk.Stop()
		for {
			if s, err := readCPU(c.pid); err == nil {
				c.mu.Lock()
				c.out = append(c.out, stampedCPU{at: time.Now().UnixMilli(), s: s})
				c.mu.Unlock()
			}
			select {
			case <-c.stop:
				return
			case <-tk.C:
			}
		}
	}()
	return c
}

func (c *cpuSampler) halt() []stampedCPU {
	close(c.stop)
	<-c.done
	return c.out
}

// cpuBetween is the CPU time between the last sample at or before from and
// the first at or after to.
func cpuBetween(ss []stampedCPU, from, to int64) (time.Duration, string) {
	if len(ss) == 0 {
		return 0, "no samples"
	}
	i0, i1 := 0, len(ss)-1
	for i, s := range ss {
		if s.at <= from {
			i0 = i
		}
	}
	for i := len(ss) - 1; i >= 0; i-- {
		if ss[i].at >= to {
			i1 = i
		}
	}
	d := ss[i1].s.sub(ss[i0].s)
	return d.ticks, fmt.Sprintf("stat ticks over %d ms of samples; schedstat %.0f ms", ss[i1].at-ss[i0].at, float64(d.cpu)/float64(time.Millisecond))
}

// readCPU is procCPU without testing.TB (for a sampling goroutine).
func readCPU(pid int) (cpuSample, error) {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return cpuSample{}, err
	}
	i := strings.LastIndexByte(string(raw), ')')
	if i < 0 || i+2 > len(raw) {
		return cpuSample{}, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(raw[i+2:]))
	if len(f) < 13 {
		return cpuSample{}, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s := cpuSample{ticks: ut + st, ns: map[string]int64{}}
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		s.ns = nil
		return s, nil
	}
	for _, e := range ents {
		s.tids = append(s.tids, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			s.ns = nil
			continue
		}
		if fs := strings.Fields(string(b)); len(fs) > 0 && s.ns != nil {
			v, _ := strconv.ParseInt(fs[0], 10, 64)
			s.ns[e.Name()] = v
		}
	}
	return s, nil
}

// keepLogs copies the *.log and *.jsonl files of dir into to.
func keepLogs(b testing.TB, dir, to string) {
	if err := os.MkdirAll(to, 0o755); err != nil {
		b.Logf("keep logs: %v", err)
		return
	}
	for _, pat := range []string{"*.log", "*.jsonl"} {
		ms, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, m := range ms {
			if raw, err := os.ReadFile(m); err == nil {
				_ = os.WriteFile(filepath.Join(to, filepath.Base(m)), raw, 0o644)
			}
		}
	}
	b.Logf("logs kept in %s", to)
}
