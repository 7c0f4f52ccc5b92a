package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testetcd"
)

// The etcd arbiter at process level: a pair whose servers reach a real
// three-member etcd (internal/testetcd) each through its own proxies, so a
// test can cut one server from etcd alone. ttl 4 s / renew_deadline 2.5 s
// outlast an etcd leader change on a loaded CI machine; fail_window 3 s.

const (
	arbiterTiming = "{period: 200ms, reply_period: 1s, fail_window: 3s}"
	arbiterTTL    = 4 * time.Second
)

type arbiterRig struct {
	*rig
	etcd *testetcd.Cluster
	// etcdVia are each server's proxies to the etcd members.
	etcdVia map[string][]*proxy
}

// arbiterPair is a settled pair under an arbiter: a primary (at epoch 2:
// its first term raised the fresh epoch 1), b its backup, the agents on a.
func arbiterPair(t *testing.T, failsafe bool) *arbiterRig {
	t.Helper()
	etcd := testetcd.Start(t, 3)
	ar := &arbiterRig{etcd: etcd, etcdVia: map[string][]*proxy{}}
	prefix := "/tandem/" + strings.ReplaceAll(t.Name(), "/", "-")
	ar.rig = newRig(t, "embedded", nil, rigOpts{timing: arbiterTiming, serverExtra: func(name string) string {
		return arbiterConfig(t, etcd, ar.etcdVia, name, prefix, arbiterTTL.String(), "2500ms", failsafe)
	}})
	ar.pairUp()
	ar.startAgents()
	ar.settled(ar.a, 2, 30*time.Second)
	t.Cleanup(func() {
		ar.checkI8()
		checkServerInvariants(t, ar.c.serverEvents())
	})
	return ar
}

// cutEtcd cuts s from every etcd member (and nothing else).
func (ar *arbiterRig) cutEtcd(s *server) {
	for _, p := range ar.etcdVia[s.name] {
		p.Cut()
	}
}

func (ar *arbiterRig) healEtcd(s *server) {
	for _, p := range ar.etcdVia[s.name] {
		p.Heal()
	}
}

// arbiterConfig is a server's arbiter section: its own proxies (kept in
// via[name]) to each etcd member, so a test can cut it from etcd alone.
func arbiterConfig(t testing.TB, etcd *testetcd.Cluster, via map[string][]*proxy, name, prefix, ttl, deadline string, failsafe bool) string {
	var eps []string
	for _, ep := range etcd.Endpoints() {
		p := newProxy(t, strings.TrimPrefix(ep, "http://"))
		via[name] = append(via[name], p)
		eps = append(eps, fmt.Sprintf("%q", "http://"+p.addr()))
	}
	return fmt.Sprintf("arbiter:\n  failsafe: %v\n  etcd:\n    endpoints: [%s]\n    prefix: %s\n    ttl: %s\n    renew_deadline: %s\n",
		failsafe, strings.Join(eps, ", "), prefix, ttl, deadline)
}

// i8Violations reads the servers' event log at path: the instants two
// servers acted as primary (host monotonic clock), and how many stretches
// of acting it saw.
func i8Violations(path string) (errs []string, stretches int) {
	evs, err := eventlog.Read(path, 0)
	if err != nil {
		return []string{"I8 unchecked: " + err.Error()}, 0
	}
	byNode := map[string][]eventlog.Event{}
	for _, e := range evs {
		byNode[e.Node] = append(byNode[e.Node], e)
	}
	var all [][]eventlog.Event
	for _, e := range byNode {
		all = append(all, e)
		stretches += len(eventlog.ActingStretches(e))
	}
	return eventlog.CheckI8(all), stretches
}

// checkI8: at no instant did two servers act as primary.
func (ar *arbiterRig) checkI8() {
	ar.t.Helper()
	errs, stretches := i8Violations(ar.c.serverEvents())
	if stretches == 0 {
		ar.t.Error("I8 unchecked: no server sent anything as primary (event_log_messages off?)")
	}
	for _, v := range errs {
		ar.t.Error(v)
	}
}

// arbiterOf is the status JSON's "arbiter" part.
type arbiterOf struct {
	Role     string   `json:"role"`
	Epoch    uint64   `json:"epoch"`
	Warnings []string `json:"warnings"`
	Arbiter  *struct {
		Holder    string `json:"holder"`
		HoldsTerm bool   `json:"holds_term"`
		Failsafe  bool   `json:"failsafe"`
		RenewsOK  uint64 `json:"renews_ok"`
		Endpoints []struct {
			Reachable bool `json:"reachable"`
		} `json:"endpoints"`
	} `json:"arbiter"`
}

func arbiterStatus(s *server) (arbiterOf, error) {
	var st arbiterOf
	resp, err := client.Get("http://" + s.admin + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// holdsRole waits for d and fails if s is not primary at epoch (and, when
// term, holding its term) at every poll.
func (ar *arbiterRig) holdsRole(s *server, epoch uint64, term bool, d time.Duration, what string) {
	ar.t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		st, err := arbiterStatus(s)
		if err != nil || st.Role != "primary" || st.Epoch != epoch || (term && (st.Arbiter == nil || !st.Arbiter.HoldsTerm)) {
			ar.t.Fatalf("%s: %s is %s at epoch %d (%+v, %v), want primary at %d", what, s.name, st.Role, st.Epoch, st.Arbiter, err, epoch)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestArbiterKillPrimaryTheBackupWinsTheElectionAndTakesOver(t *testing.T) {
	ar := arbiterPair(t, false)
	st, err := arbiterStatus(ar.a)
	if err != nil || st.Arbiter == nil || st.Arbiter.Holder != "a" || !st.Arbiter.HoldsTerm || len(st.Arbiter.Endpoints) != 3 {
		t.Fatalf("a's arbiter status: %+v %v", st.Arbiter, err)
	}
	ar.a.p.signal(syscall.SIGKILL)
	ar.a.p.wait(5 * time.Second)
	// b waits the window, then a's lease (at most a TTL after its last
	// renewal), then wins and takes over at the election's next epoch.
	ar.settled(ar.b, 3, 30*time.Second)
	eventually(t, 10*time.Second, "b holds the election", func() bool {
		s, err := arbiterStatus(ar.b)
		return err == nil && s.Arbiter != nil && s.Arbiter.Holder == "b" && s.Arbiter.HoldsTerm
	})
	ar.check()
}

// The primary cut from etcd alone, failsafe off: it stops acting by its
// renew deadline — before its lease can expire and before the backup can
// win — and the backup takes over. When etcd comes back the old primary
// finds the higher epoch and refuses to act (exit 3), as at a start.
func TestArbiterPrimaryCutFromEtcdStepsDownBeforeTheBackupTakesOver(t *testing.T) {
	ar := arbiterPair(t, false)
	ar.cutEtcd(ar.a)
	eventually(t, 10*time.Second, "a stops acting as primary", func() bool {
		s, err := arbiterStatus(ar.a)
		return err == nil && s.Role != "primary"
	})
	ar.settled(ar.b, 3, 30*time.Second)
	ar.healEtcd(ar.a)
	if code := ar.a.p.wait(30 * time.Second); code != 3 {
		t.Fatalf("a exited %d, want 3 (fenced: a higher epoch exists)", code)
	}
	if !strings.Contains(ar.a.p.logText(), "stopped acting as primary") {
		t.Errorf("a's log does not say it stopped acting:\n%s", tailLines(ar.a.p.logText(), 30))
	}
	ar.check()
}

// failsafe on: the primary cut from etcd alone acts on while its backup
// answers, no takeover happens, and it wins its election back at the same
// epoch when etcd returns.
func TestArbiterFailsafeKeepsAPrimaryItsBackupVouchesFor(t *testing.T) {
	ar := arbiterPair(t, true)
	ar.cutEtcd(ar.a)
	eventually(t, 10*time.Second, "a in failsafe", func() bool {
		s, err := arbiterStatus(ar.a)
		return err == nil && s.Arbiter != nil && s.Arbiter.Failsafe && s.Role == "primary"
	})
	ar.holdsRole(ar.a, 2, false, 3*time.Second+arbiterTTL, "etcd cut, failsafe")
	if s, err := arbiterStatus(ar.b); err != nil || s.Role != "backup" {
		t.Fatalf("b is %s (%v) while a is in failsafe", s.Role, err)
	}
	ar.healEtcd(ar.a)
	eventually(t, 20*time.Second, "a holds its term again, failsafe over", func() bool {
		s, err := arbiterStatus(ar.a)
		return err == nil && s.Arbiter != nil && s.Arbiter.HoldsTerm && !s.Arbiter.Failsafe && s.Role == "primary" && s.Epoch == 2
	})
	ar.settled(ar.a, 2, 10*time.Second)
	ar.check()
}

// Primary and backup cut from each other but not from etcd: the backup
// counts the silence and campaigns, but the live primary holds the
// election: no takeover.
func TestArbiterPartitionBetweenServersButNotFromEtcdIsNoTakeover(t *testing.T) {
	ar := arbiterPair(t, false)
	ar.partition(ar.b)
	// The window (3 s) plus a campaign (TTL + period) and a second window.
	ar.holdsRole(ar.a, 2, true, 2*3*time.Second+arbiterTTL, "partition between the servers")
	if s, err := arbiterStatus(ar.b); err != nil || s.Role != "backup" || s.Epoch != 0 {
		t.Fatalf("b: %s at epoch %d (%v), want a backup that never took an epoch", s.Role, s.Epoch, err)
	}
	if !strings.Contains(ar.b.p.logText(), "another server holds the group's election") {
		t.Errorf("b's log does not say it lost the election:\n%s", tailLines(ar.b.p.logText(), 30))
	}
	ar.heal()
	ar.waitPaired(ar.a, ar.b, 20*time.Second)
	ar.check()
}

// One etcd member down changes nothing; two down (no quorum) stop the
// primary by its renew deadline (failsafe off: documented) and nobody
// acts; back to quorum, exactly one server is primary again.
func TestArbiterEtcdMembersDown(t *testing.T) {
	ar := arbiterPair(t, false)
	ar.etcd.Kill(2)
	ar.holdsRole(ar.a, 2, true, arbiterTTL+2*time.Second, "one etcd member down")
	ar.etcd.Kill(1)
	eventually(t, 15*time.Second, "a stops acting without a quorum", func() bool {
		s, err := arbiterStatus(ar.a)
		return err == nil && s.Role != "primary"
	})
	eventually(t, 10*time.Second, "a's status warns that etcd has no quorum in reach", func() bool {
		s, err := arbiterStatus(ar.a)
		return err == nil && hasWarning(s.Warnings, "1 of 3 etcd endpoints reachable")
	})
	// Nobody can win: b never becomes primary while there is no quorum.
	end := time.Now().Add(3*time.Second + arbiterTTL)
	for time.Now().Before(end) {
		if s, err := arbiterStatus(ar.b); err == nil && s.Role == "primary" {
			t.Fatal("b acts as primary without an etcd quorum")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ar.etcd.Restart(1)
	ar.etcd.Restart(2)
	// Either may win once a quorum is back (a reclaims its epoch, or b,
	// which counted a's silence, takes over): exactly one acts.
	var prim *server
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range []*server{ar.a, ar.b} {
				var keep []string
				for _, l := range strings.Split(s.p.logText(), "\n") {
					if strings.Contains(l, "election") || strings.Contains(l, "term") || strings.Contains(l, "role is now") || strings.Contains(l, "acting") {
						keep = append(keep, l)
					}
				}
				t.Logf("%s:\n%s", s.name, strings.Join(keep, "\n"))
			}
		}
	})
	eventually(t, 60*time.Second, "one server primary again", func() bool {
		sa, ea := arbiterStatus(ar.a)
		sb, eb := arbiterStatus(ar.b)
		switch {
		case ea == nil && sa.Role == "primary" && sa.Arbiter != nil && sa.Arbiter.HoldsTerm:
			prim = ar.a
		case eb == nil && sb.Role == "primary" && sb.Arbiter != nil && sb.Arbiter.HoldsTerm:
			prim = ar.b
		default:
			return false
		}
		return true
	})
	st := mustStatus(t, prim)
	ar.settled(prim, st.Epoch, 30*time.Second)
	t.Logf("after the quorum came back: %s is primary at epoch %d", prim.name, st.Epoch)
	ar.check()
}

// The primary stopped (SIGSTOP) past its lease: the backup takes over; the
// old primary, woken, sends nothing at its old term (its lease is stale
// before it could send) and is fenced.
func TestArbiterStoppedPrimaryDoesNotActOnWaking(t *testing.T) {
	ar := arbiterPair(t, false)
	ar.a.p.signal(syscall.SIGSTOP)
	ar.settled(ar.b, 3, 30*time.Second)
	woke := eventlog.HostMono()
	ar.a.p.signal(syscall.SIGCONT)
	// It wakes and finds its term stale (deposed) and the higher epoch:
	// either the waiting primary sees the epoch and exits 3, or its
	// primary role, still ending, sees a file at epoch 3 first and the
	// node stays up as fenced (answering status). Both are fenced; which
	// comes first is a race of two checks.
	exited := false
	eventually(t, 30*time.Second, "a fenced after waking (exit 3, or role fenced)", func() bool {
		select {
		case <-ar.a.p.done:
			exited = true
			return true
		default:
		}
		s, err := getStatus(ar.a.admin)
		return err == nil && s.Role == "fenced"
	})
	if exited {
		if code := ar.a.p.wait(time.Second); code != 3 {
			t.Fatalf("a exited %d after waking, want 3 (fenced)", code)
		}
	}
	evs, err := eventlog.Read(ar.c.serverEvents(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Node == "a" && e.HostMonoNS > woke && e.Role == "primary" && (e.Kind == eventlog.KindHeartbeat || e.Kind == eventlog.KindCommand || e.Kind == eventlog.KindRebind) {
			t.Errorf("a sent a %s at epoch %d after waking", e.Kind, e.Epoch)
		}
	}
	ar.check()
}

func hasWarning(ws []string, sub string) bool {
	for _, w := range ws {
		if strings.Contains(w, sub) {
			return true
		}
	}
	return false
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// The I8 checker is not vacuous: without an arbiter a primary cut from
// everything (agents on their own hosts, so no file tells it either) goes
// on heartbeating after the backup took over, until the heal, and the
// checker sees both acting.
func TestI8CheckerSeesTwoPrimariesAfterAPartitionWithoutAnArbiter(t *testing.T) {
	r := settledRig(t, "embedded", nil, rigOpts{remote: true})
	r.cutAll(r.a)
	r.c.waitRole(r.b, "primary", 30*time.Second)
	time.Sleep(500 * time.Millisecond) // both heartbeat meanwhile
	r.heal()
	r.c.waitRole(r.a, "fenced", 30*time.Second)
	errs, _ := i8Violations(r.c.serverEvents())
	if len(errs) == 0 {
		t.Fatal("I8 checker found no overlap where a and b both acted as primary")
	}
	t.Logf("as expected without an arbiter: %s", errs[0])
}

// A group of three under the arbiter: kill the primary, the best backup
// wins the election and takes over, the other follows it (its own
// campaign, queued behind, gives up).
func TestArbiterGroupKillPrimaryTheBestBackupWinsAndTheOtherFollows(t *testing.T) {
	etcd := testetcd.Start(t, 3)
	eps := `"` + strings.Join(etcd.Endpoints(), `", "`) + `"`
	r, c := trioAt(t, func(string) string {
		return fmt.Sprintf("arbiter:\n  etcd:\n    endpoints: [%s]\n    prefix: /tandem/trio\n    ttl: 4s\n    renew_deadline: 2500ms\n", eps)
	}, 2)
	ranked(t, c, 1)
	t.Cleanup(func() {
		if t.Failed() {
			var keep []string
			for _, l := range strings.Split(c.p.logText(), "\n") {
				if !strings.Contains(l, "level=debug") && !strings.Contains(l, "broker link") {
					keep = append(keep, l)
				}
			}
			t.Logf("c:\n%s", tailLines(strings.Join(keep, "\n"), 40))
		}
	})
	r.a.p.signal(syscall.SIGKILL)
	r.a.p.wait(5 * time.Second)
	// a's fresh epoch 1 became 2 with its first term; b's takeover is 3.
	r.settled(r.b, 3, 30*time.Second)
	eventually(t, 30*time.Second, "c follows b", func() bool { return watches(c, "b") })
	if st := mustStatus(t, c); st.Epoch != 0 {
		t.Fatalf("c took an epoch (%d)", st.Epoch)
	}
	ar := &arbiterRig{rig: r}
	ar.checkI8()
	r.check()
}
