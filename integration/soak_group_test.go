package integration

import (
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSoakGroup is TestSoak for a group of three servers with health
// checks: a (the primary), b and c, with distinct priorities drawn from the
// seed (100, 120 and 150 shuffled), each with a marker check (fails while
// DIR/down-NODE exists: groupSoakCheck) and a service writing
// DIR/service-NODE.log, three agent processes on the servers' disk. Each
// cycle draws one fault:
//
//	kill-9 primary              the best backup takes over, the other follows; the old primary rejoins
//	SIGSTOP/SIGCONT primary     the same, past the window; the old primary is fenced, then rejoins
//	failing check on primary    a planned handover to the best healthy backup (not the server that
//	                            just handed it the role: no ping-pong); the old primary follows it
//	failing check on best+kill  the best backup is unhealthy as the primary dies: the other backup wins
//	switchover --to             POST /switchover?to=NODE (a random backup); the old primary follows it
//
// After each it waits for one primary holding every agent, the other two
// backups watching it (ranked by priority), and checks that the service
// runs only on the primary (the last line of each node's service log: a
// node killed -9 never ran service.stop, so the soak writes "killed" for
// it), the agents' invariants (I1–I3) and the servers' event log (I4, I5).
// Every fault allows exactly one takeover; more is a false failover.
//
//	TANDEM_SOAK=1 SOAK_GROUP=1 [SEED=n] [CYCLES=10] \
//	    go test -race -run '^TestSoakGroup$' -timeout 30m -v ./integration
//
// On a failure the servers' and agents' logs, the event logs and the
// service logs are kept in $TMPDIR/tandem-soak-group-SEED-*. It ends with
// one line:
//
//	soak-group: seed=S cycles=N faults=F failovers=X false_failovers=Y violations=Z
func TestSoakGroup(t *testing.T) {
	if os.Getenv("TANDEM_SOAK") != "1" || os.Getenv("SOAK_GROUP") != "1" {
		t.Skip("set TANDEM_SOAK=1 SOAK_GROUP=1 (and SEED, CYCLES) to run the randomized group soak")
	}
	seed, cycles := soakEnv(t, 10)
	fmt.Printf("soak-group: seed=%d cycles=%d\n", seed, cycles)
	t.Logf("soak-group: seed=%d (rerun with SEED=%d)", seed, seed)
	g := newGroupSoak(t, seed)
	defer g.summary(cycles)
	defer func() {
		if t.Failed() {
			g.dump() // while the servers still run (t.Cleanup kills them)
		}
	}()
	for g.cycle = 1; g.cycle <= cycles; g.cycle++ {
		f := groupFaults[g.rnd.Intn(len(groupFaults))]
		t0 := time.Now()
		ep0, tk0 := g.epoch, serverFailovers(g.r.c.serverEvents())
		g.faults++
		f.apply(g)
		// Every takeover (failover or handover) raises the epoch by one; a
		// second candidate's takeover at the same epoch (fenced since)
		// shows in the event log only.
		fa := int(g.epoch - ep0)
		if n := serverFailovers(g.r.c.serverEvents()) - tk0; n > fa {
			fa = n
		}
		g.failovers += fa
		if fa > f.failovers {
			g.falseFailovers += fa - f.failovers
			t.Errorf("cycle %d (%s): %d takeovers, expected %d (false failover; seed %d)", g.cycle, f.name, fa, f.failovers, seed)
		}
		g.check(f.name)
		t.Logf("cycle %d: %-26s primary=%s epoch=%d takeovers=%d in %s", g.cycle, f.name, g.cur.name, g.epoch, fa, time.Since(t0).Round(time.Millisecond))
		if t.Failed() && os.Getenv("SOAK_KEEP_GOING") == "" {
			t.Logf("stopping at the first failure (SOAK_KEEP_GOING=1 continues)")
			g.cycle++
			return
		}
	}
}

// soakEnv reads SEED (default: the time) and CYCLES (default def), as
// TestSoak does.
func soakEnv(t *testing.T, def int) (int64, int) {
	t.Helper()
	seed := time.Now().UnixNano()
	if v := os.Getenv("SEED"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("SEED=%q: %v", v, err)
		}
		seed = n
	}
	cycles := def
	if v := os.Getenv("CYCLES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CYCLES=%q: want a positive integer", v)
		}
		cycles = n
	}
	return seed, cycles
}

// groupSoak drives the group; the embedded soak keeps the agents' events,
// the counters and the invariant checks (soak.check, soak.settle), which
// only need the rig.
type groupSoak struct {
	*soak
	nodes []*server
	prio  map[string]int
	dir   string  // markers and service logs (the cluster's dir)
	cur   *server // the primary
	// gaveUp handed cur the role by a planned handover: a health handover
	// never goes straight back to it (primary.Config.GaveUp, no ping-pong).
	gaveUp *server
}

type groupFault struct {
	name      string
	failovers int
	apply     func(g *groupSoak)
}

var groupFaults = []groupFault{
	{"kill-9 primary", 1, (*groupSoak).killPrimary},
	{"SIGSTOP/SIGCONT primary", 1, (*groupSoak).freezePrimary},
	{"failing check on primary", 1, (*groupSoak).unhealthyPrimary},
	{"failing check on best+kill", 1, (*groupSoak).unhealthyBestThenKill},
	{"switchover --to", 1, (*groupSoak).switchoverTo},
}

func newGroupSoak(t *testing.T, seed int64) *groupSoak {
	rnd := rand.New(rand.NewSource(seed))
	ps := []int{100, 120, 150}
	rnd.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
	prio := map[string]int{"a": ps[0], "b": ps[1], "c": ps[2]}
	fmt.Printf("soak-group: priorities a=%d b=%d c=%d\n", ps[0], ps[1], ps[2])
	var dir string
	r := newRig(t, "embedded", nil, rigOpts{agents: 3, timing: groupSoakTiming, serverExtra: func(name string) string {
		return fmt.Sprintf("priority: %d\n", prio[name]) + groupSoakCheck(dir, name)
	}})
	dir = r.c.dir
	t.Cleanup(func() { // after the processes are killed (registered before them)
		if t.Failed() {
			keep, err := os.MkdirTemp("", fmt.Sprintf("tandem-soak-group-%d-", seed))
			if err == nil {
				keepLogs(t, dir, keep)
				for _, n := range []string{"a", "b", "c"} {
					if raw, err := os.ReadFile(filepath.Join(dir, n, "data", "state.json")); err == nil {
						_ = os.WriteFile(filepath.Join(keep, "state-"+n+".json"), raw, 0o644)
					}
				}
			}
		}
	})
	r.a = r.addServer("a", nil)
	r.b = r.addServer("b", r.a)
	c := r.addServer("c", r.a)
	r.files = r.c.writeAgents(r.opts.agents, &server{brokerPort: r.ag["a"].port()})
	r.samp = startEpochSampler(r.t, r.files)
	r.c.start(r.a)
	r.c.waitRole(r.a, "primary", 30*time.Second)
	r.c.start(r.b)
	r.c.start(c)
	r.startAgents()
	s := &soak{t: t, r: r, rnd: rnd, seed: seed, prim: r.a, back: r.b, epoch: 1, lastEpoch: map[string]uint64{}}
	g := &groupSoak{soak: s, nodes: []*server{r.a, r.b, c}, prio: prio, dir: dir, cur: r.a}
	s.settle(r.a, 1)
	g.ready()
	g.serviceOnPrimary()
	return g
}

// The soak runs beside other suites on few cores with race-built servers:
// a primary's heartbeat loop was seen waking 430 ms late and a 100 ms
// shell check timing out twice in a row (a real handover) at a load of 12
// on 2 cores. Its window and checks are wider than the group tests'
// (fastTiming, markerCheck) so that only the faults take over.
const groupSoakTiming = "{period: 200ms, reply_period: 1s, fail_window: 2s}"

// groupSoakCheck is markerCheck with a wider check: down while
// DIR/down-NAME exists (three failures: 1.5 s), the service writing
// DIR/service-NAME.log.
func groupSoakCheck(dir, name string) string {
	return fmt.Sprintf(`checks:
  - {name: svc, command: "test ! -e %[1]s/down-%[2]s", interval: 500ms, timeout: 500ms, fall: 3, rise: 1}
health: all
service: {start: "echo start >> %[1]s/service-%[2]s.log", stop: "echo stop >> %[1]s/service-%[2]s.log"}
`, dir, name)
}

func (g *groupSoak) summary(cycles int) {
	done := g.cycle - 1
	if done > cycles {
		done = cycles
	}
	line := fmt.Sprintf("soak-group: seed=%d cycles=%d faults=%d failovers=%d false_failovers=%d violations=%d",
		g.seed, done, g.faults, g.failovers, g.falseFailovers, g.violations)
	fmt.Println(line)
	g.t.Log(line)
	if g.anomalies > 0 {
		fmt.Printf("soak-group: anomalies=%d (product bugs that break no invariant; see the ANOMALY lines)\n", g.anomalies)
	}
}

// dump logs every server's raw status JSON.
func (g *groupSoak) dump() {
	for _, n := range g.nodes {
		resp, err := client.Get("http://" + n.admin + "/status")
		if err != nil {
			g.t.Logf("status of %s: %v", n.name, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		g.t.Logf("status of %s (priority %d): %s", n.name, g.prio[n.name], b)
	}
}

// backups are the servers other than the primary, best (highest
// priority) first.
func (g *groupSoak) backups() []*server {
	var out []*server
	for _, n := range g.nodes {
		if n != g.cur {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return g.prio[out[i].name] > g.prio[out[j].name] })
	return out
}

// ready waits until the group is whole around the primary, and has stayed
// so for groupStable: it lists both backups at their full priority, both
// watch it through the address it is known by (no follow pending: a
// backup that follows a new address restarts its role, which forgets its
// peers and ranks first; seed 4) and rank by priority, and every check
// is up.
func (g *groupSoak) ready() {
	g.t.Helper()
	prim, bs := g.cur, g.backups()
	var since time.Time
	eventually(g.t, 30*time.Second, fmt.Sprintf("cycle %d: %s lists %s and %s healthy; they watch it, ranked 0 and 1, for %s", g.cycle, prim.name, bs[0].name, bs[1].name, groupStable), func() bool {
		if !g.whole(prim, bs) {
			since = time.Time{}
			return false
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) >= groupStable
	})
}

// groupStable is how long the group must look whole before a fault: a few
// heartbeat periods, so that a backup's role restart (follow) in between
// polls shows.
const groupStable = 600 * time.Millisecond

func (g *groupSoak) whole(prim *server, bs []*server) bool {
	sp, err := getGroupStatus(prim.admin)
	if err != nil || sp.Role != "primary" || sp.EffectivePriority != g.prio[prim.name] {
		return false
	}
	seen := map[string]bool{}
	for _, b := range sp.Backups {
		if b.EffectivePriority != g.prio[b.Node] {
			return false
		}
		seen[b.Node] = true
	}
	if len(seen) != 2 || !seen[bs[0].name] || !seen[bs[1].name] {
		return false
	}
	for i, b := range bs {
		loc, err := os.ReadFile(filepath.Join(b.dir, "data", "primary_location"))
		at := strings.TrimSpace(string(loc))
		if err != nil || (at != g.r.ag[prim.name].addr() && at != g.r.to[prim.name].addr()) || !watches(b, prim.name) {
			return false
		}
		st, err := getGroupStatus(b.admin)
		if err != nil || st.EffectivePriority != g.prio[b.name] || st.Rank == nil || *st.Rank != i {
			return false
		}
	}
	return true
}

// waitFor polls cond every 10 ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// settleOn waits for next to be the primary at the next epoch — failing
// at once if another server took the role instead — then for the agents
// (soak.settle) and for followers to watch next.
func (g *groupSoak) settleOn(next *server, followers ...*server) {
	g.t.Helper()
	epoch := g.epoch + 1
	var wrong string
	ok := waitFor(30*time.Second, func() bool {
		for _, n := range g.nodes {
			st, err := getStatus(n.admin)
			if err != nil {
				continue
			}
			if n != next && (st.Role == "primary" || st.Role == "taking-over") && st.Epoch > g.epoch {
				wrong = fmt.Sprintf("%s is %s at epoch %d, expected %s to take over", n.name, st.Role, st.Epoch, next.name)
				return true
			}
			if n == next && st.Role == "primary" {
				return true
			}
		}
		return false
	})
	switch {
	case wrong != "":
		g.violations++
		g.t.Fatalf("cycle %d: WRONG PRIMARY: %s (seed %d)", g.cycle, wrong, g.seed)
	case !ok:
		g.t.Fatalf("cycle %d: %s did not become primary within 30s (seed %d)", g.cycle, next.name, g.seed)
	}
	g.settle(next, epoch)
	g.cur, g.epoch = next, epoch
	for _, f := range followers {
		eventually(g.t, 30*time.Second, fmt.Sprintf("cycle %d: %s follows %s", g.cycle, f.name, next.name), func() bool { return watches(f, next.name) })
	}
}

// kill -9s n; its service never ran service.stop, the soak notes it died.
func (g *groupSoak) kill(n *server) {
	g.t.Helper()
	n.p.signal(syscall.SIGKILL)
	n.p.wait(10 * time.Second)
	f, err := os.OpenFile(filepath.Join(g.dir, "service-"+n.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	mustOK(g.t, err)
	fmt.Fprintln(f, "killed")
	mustOK(g.t, f.Close())
}

// rejoin makes n (killed or fenced) a backup of the primary again, at the
// primary's advertise (where the followers watch it: through its
// backup proxy it would follow the advertise at its first heartbeat).
func (g *groupSoak) rejoin(n *server) {
	g.t.Helper()
	if n.p != nil {
		n.p.kill()
	}
	rj := start(g.t, g.r.c.dir, fmt.Sprintf("%s-rejoin-%d", n.name, g.cycle), "rejoin", "--config", n.cfgPath, "--primary", g.r.ag[g.cur.name].addr())
	if code := rj.wait(30 * time.Second); code != 0 {
		g.t.Fatalf("cycle %d: rejoin %s: exit %d\n%s", g.cycle, n.name, code, rj.logText())
	}
	g.r.c.start(n)
	eventually(g.t, 30*time.Second, fmt.Sprintf("cycle %d: rejoined %s watches %s", g.cycle, n.name, g.cur.name), func() bool { return watches(n, g.cur.name) })
}

// follows waits for the old primary of a planned handover to watch the new
// one; a fenced or exited old primary is an anomaly (safe, not clean) and
// is rejoined.
func (g *groupSoak) follows(old *server) {
	g.t.Helper()
	var how string
	eventually(g.t, 30*time.Second, fmt.Sprintf("cycle %d: %s follows %s (or is fenced, or exited)", g.cycle, old.name, g.cur.name), func() bool {
		select {
		case <-old.p.done:
			how = fmt.Sprintf("exited %d: %q", old.p.wait(time.Second), lastLine(old.p.logText()))
			return true
		default:
		}
		if watches(old, g.cur.name) {
			return true
		}
		st, err := getStatus(old.admin)
		if err == nil && st.Role == "fenced" {
			how = "is fenced"
			return true
		}
		return false
	})
	if how != "" {
		g.anomalies++
		g.t.Logf("cycle %d: ANOMALY (product): after the handover to %s the old primary %s %s, not its backup (seed %d)", g.cycle, g.cur.name, old.name, how, g.seed)
		g.rejoin(old)
	}
}

func (g *groupSoak) marker(n *server) string { return filepath.Join(g.dir, "down-"+n.name) }

func (g *groupSoak) killPrimary() {
	old, bs := g.cur, g.backups()
	g.kill(old)
	g.settleOn(bs[0], bs[1])
	g.gaveUp = nil
	g.rejoin(old)
}

func (g *groupSoak) freezePrimary() {
	old, bs := g.cur, g.backups()
	old.p.signal(syscall.SIGSTOP)
	g.settleOn(bs[0], bs[1])
	g.gaveUp = nil
	old.p.signal(syscall.SIGCONT)
	g.r.c.waitRole(old, "fenced", 30*time.Second)
	g.rejoin(old)
}

// unhealthyPrimary: the primary hands over to the best healthy backup but
// the one that just handed it the role.
func (g *groupSoak) unhealthyPrimary() {
	old, bs := g.cur, g.backups()
	if bs[0] == g.gaveUp {
		bs[0], bs[1] = bs[1], bs[0]
	}
	mustOK(g.t, os.WriteFile(g.marker(old), nil, 0o644))
	g.settleOn(bs[0], bs[1])
	g.gaveUp = old
	mustOK(g.t, os.Remove(g.marker(old)))
	g.follows(old)
}

func (g *groupSoak) unhealthyBestThenKill() {
	old, bs := g.cur, g.backups()
	best, other := bs[0], bs[1]
	mustOK(g.t, os.WriteFile(g.marker(best), nil, 0o644))
	eventually(g.t, 30*time.Second, fmt.Sprintf("cycle %d: %s at effective priority 0, %s ranks first", g.cycle, best.name, other.name), func() bool {
		sb, e1 := getGroupStatus(best.admin)
		so, e2 := getGroupStatus(other.admin)
		return e1 == nil && e2 == nil && sb.EffectivePriority == 0 && so.Rank != nil && *so.Rank == 0
	})
	g.kill(old)
	g.settleOn(other, best)
	g.gaveUp = nil
	if st := mustStatus(g.t, best); st.Role != "backup" {
		g.t.Errorf("cycle %d: the unhealthy %s is %s", g.cycle, best.name, st.Role)
	}
	mustOK(g.t, os.Remove(g.marker(best)))
	g.rejoin(old)
}

func (g *groupSoak) switchoverTo() {
	old, bs := g.cur, g.backups()
	to := bs[g.rnd.Intn(len(bs))]
	other := bs[0]
	if other == to {
		other = bs[1]
	}
	code, body := post(g.t, old, "/switchover?to="+to.name)
	if code != 202 {
		g.t.Fatalf("cycle %d: switchover to %s: %d %s", g.cycle, to.name, code, body)
	}
	g.settleOn(to, other)
	g.gaveUp = old
	g.follows(old)
}

// check: the group is whole again, the service runs on the primary only,
// and the invariants hold (soak.check: I1–I5, counted).
func (g *groupSoak) check(fault string) {
	g.t.Helper()
	g.ready()
	g.serviceOnPrimary()
	g.soak.check(fault)
}

// serviceOnPrimary waits until the last line of each node's service log
// is "start" for the primary only (the hooks run asynchronously).
func (g *groupSoak) serviceOnPrimary() {
	g.t.Helper()
	bad := func() []string {
		var out []string
		for _, n := range g.nodes {
			last := lastLine(serviceLog(g.dir, n.name))
			if (last == "start") != (n == g.cur) {
				out = append(out, fmt.Sprintf("%s (primary: %v): %q", n.name, n == g.cur, strings.ReplaceAll(serviceLog(g.dir, n.name), "\n", ",")))
			}
		}
		return out
	}
	if !waitFor(30*time.Second, func() bool { return len(bad()) == 0 }) {
		g.violations++
		g.t.Errorf("cycle %d: the service does not run on the primary %s only: %s (seed %d)", g.cycle, g.cur.name, strings.Join(bad(), "; "), g.seed)
	}
}
