package integration

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testetcd"
)

// TestSoakArbiter is the randomized soak of a pair under an etcd arbiter
// (a real three-member etcd): kills, freezes, the primary cut from etcd,
// partitions between the servers, a backup killed mid-takeover,
// switchovers, and an etcd member killed and restarted. After every cycle
// it checks I1–I5 as the pair soak does, and I8: at no instant did two
// servers act as primary (host monotonic clock, from the event log).
//
//	TANDEM_SOAK=1 SOAK_ARBITER=1 SEED=… CYCLES=100 go test -run '^TestSoakArbiter$' -v ./integration
func TestSoakArbiter(t *testing.T) {
	if os.Getenv("TANDEM_SOAK") != "1" || os.Getenv("SOAK_ARBITER") != "1" {
		t.Skip("set TANDEM_SOAK=1 SOAK_ARBITER=1 (and SEED, CYCLES) to run the arbiter soak")
	}
	seed, cycles := soakEnv(t, 10)
	fmt.Printf("soak-arbiter: seed=%d cycles=%d\n", seed, cycles)
	etcd := testetcd.Start(t, 3)
	via := map[string][]*proxy{}
	o := rigOpts{timing: soakArbiterTiming, serverExtra: func(name string) string {
		return arbiterConfig(t, etcd, via, name, "/tandem/soak", "3s", "1500ms", false)
	}}
	s := newSoakWith(t, "embedded", nil, seed, o, 2)
	as := &arbiterSoak{soak: s, etcd: etcd, via: via}
	defer func() {
		done := min(s.cycle-1, cycles)
		line := fmt.Sprintf("soak-arbiter: seed=%d cycles=%d faults=%d failovers=%d false_failovers=%d violations=%d i8_violations=%d stretches=%d",
			seed, done, s.faults, s.failovers, s.falseFailovers, s.violations, as.i8Bad, as.stretches)
		fmt.Println(line)
		t.Log(line)
	}()
	s.runCycles(cycles, len(arbiterFaults), func(i int) (string, int, func()) {
		f := arbiterFaults[i]
		return f.name, f.failovers, func() { f.apply(as) }
	}, as.checkI8)
}

// soakArbiterTiming: fail_window 2 s against a 3 s lease (a crash waits
// for the lease; a partition does not), renew_deadline 1.5 s.
const soakArbiterTiming = "{period: 100ms, reply_period: 1s, fail_window: 2s}"

type arbiterSoak struct {
	*soak
	etcd      *testetcd.Cluster
	via       map[string][]*proxy
	stretches int
	i8Bad     int // I8 violations reported so far
}

var arbiterFaults = []struct {
	name      string
	failovers int
	apply     func(a *arbiterSoak)
}{
	{"kill-9 primary", 1, func(a *arbiterSoak) { a.killPrimary() }},
	{"SIGSTOP past the lease", 1, (*arbiterSoak).freezePrimary},
	{"primary cut from etcd", 1, (*arbiterSoak).cutFromEtcd},
	{"partition between servers", 0, (*arbiterSoak).serversPartition},
	{"kill-9 backup mid-takeover", 1, func(a *arbiterSoak) { a.killBackupMidTakeover() }},
	{"switchover", 1, func(a *arbiterSoak) { a.switchover() }},
	{"etcd member kill+restart", 0, (*arbiterSoak).etcdMember},
}

// replaced waits until the old primary, which lost the election, refuses
// to act (exit 3, a higher epoch exists) or shows fenced, then rejoins it.
func (a *arbiterSoak) replaced(old *server) {
	a.t.Helper()
	eventually(a.t, 30*time.Second, fmt.Sprintf("cycle %d: %s refuses to act (exit 3 or fenced)", a.cycle, old.name), func() bool {
		select {
		case <-old.p.done:
			return true
		default:
		}
		st, err := getStatus(old.admin)
		return err == nil && st.Role == "fenced"
	})
	select {
	case <-old.p.done:
		if code := old.p.wait(time.Second); code != 3 {
			a.t.Errorf("cycle %d: %s exited %d, want 3 (fenced)\n%s", a.cycle, old.name, code, tailLines(old.p.logText(), 20))
		}
	default:
	}
	a.rejoin(old)
}

func (a *arbiterSoak) freezePrimary() {
	old, next := a.prim, a.back
	old.p.signal(syscall.SIGSTOP)
	a.settle(next, a.epoch+1)
	old.p.signal(syscall.SIGCONT)
	a.replaced(old)
}

func (a *arbiterSoak) cutFromEtcd() {
	old, next := a.prim, a.back
	for _, p := range a.via[old.name] {
		p.Cut()
	}
	a.settle(next, a.epoch+1)
	for _, p := range a.via[old.name] {
		p.Heal()
	}
	a.replaced(old)
}

// serversPartition cuts the servers from each other, not from etcd: the
// backup campaigns after the window and loses to the live primary.
func (a *arbiterSoak) serversPartition() {
	a.r.partition(a.back)
	deadline := time.Now().Add(2*time.Second + 3*time.Second + time.Second)
	for time.Now().Before(deadline) {
		if st, err := getStatus(a.back.admin); err == nil && st.Role == "primary" {
			break // counted as a false failover by the caller
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.r.heal()
	if st, _ := getStatus(a.back.admin); st.Role == "primary" || st.Epoch > 0 && st.Epoch > a.epoch {
		a.settle(a.back, a.epoch+1)
		a.replaced(a.back)
		return
	}
	a.r.waitPaired(a.prim, a.back, 30*time.Second)
	a.settle(a.prim, a.epoch)
}

func (a *arbiterSoak) etcdMember() {
	i := a.rnd.Intn(3)
	a.etcd.Kill(i)
	time.Sleep(3 * time.Second) // a lease's worth with one member down
	a.etcd.Restart(i)
	a.etcd.WaitHealthy(30 * time.Second)
	if st, err := getStatus(a.back.admin); err == nil && st.Role == "primary" {
		a.settle(a.back, a.epoch+1)
		a.replaced(a.prim)
		return
	}
	a.settle(a.prim, a.epoch)
}

// checkI8 checks the whole event log so far and returns the violations
// not reported before.
func (a *arbiterSoak) checkI8() []string {
	errs, stretches := i8Violations(a.r.c.serverEvents())
	a.stretches = stretches
	if len(errs) <= a.i8Bad {
		return nil
	}
	fresh := errs[a.i8Bad:]
	a.i8Bad = len(errs)
	return fresh
}
