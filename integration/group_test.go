package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Groups at process level: three servers a (the primary), b (priority 150)
// and c (100) on the embedded brokers, agent files on the servers' disk,
// one agent process per file. Every server advertises its agents proxy,
// which is also where its peers reach its broker.

// groupStatus is the group part of the status JSON.
type groupStatus struct {
	Role              string `json:"role"`
	Epoch             uint64 `json:"epoch"`
	FailoverID        string `json:"failover_id"`
	Priority          int    `json:"priority"`
	EffectivePriority int    `json:"effective_priority"`
	Rank              *int   `json:"rank"`
	Ineligible        string `json:"ineligible"`
	Primary           *struct {
		Node               string `json:"node"`
		LastHeartbeatAgeMS int64  `json:"last_heartbeat_age_ms"`
	} `json:"primary"`
	Backups []struct {
		Node              string `json:"node"`
		EffectivePriority int    `json:"effective_priority"`
	} `json:"backups"`
	Checks []struct {
		Name string `json:"name"`
		Up   bool   `json:"up"`
	} `json:"checks"`
	Warnings []string `json:"warnings"`
}

func getGroupStatus(admin string) (groupStatus, error) {
	var s groupStatus
	resp, err := client.Get("http://" + admin + "/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// watches reports whether backup s counts heartbeats of the node named prim.
func watches(s *server, prim string) bool {
	st, err := getGroupStatus(s.admin)
	return err == nil && st.Role == "backup" && st.Primary != nil && st.Primary.Node == prim && st.Primary.LastHeartbeatAgeMS >= 0 && st.Primary.LastHeartbeatAgeMS < 1000
}

// trio is a settled group: a primary with backups b and c that know each
// other, the agents on a at epoch 1. extra adds config lines per server.
func trio(t *testing.T, extra func(name string) string) (*rig, *server) {
	t.Helper()
	return trioAt(t, extra, 1)
}

// trioAt is trio with the epoch a settles at (2 under an arbiter: its
// first term raises the fresh epoch).
func trioAt(t *testing.T, extra func(name string) string, epoch uint64) (*rig, *server) {
	t.Helper()
	prio := map[string]int{"a": 100, "b": 150, "c": 100}
	r := newRig(t, "embedded", nil, rigOpts{agents: 4, serverExtra: func(name string) string {
		s := fmt.Sprintf("priority: %d\n", prio[name])
		if extra != nil {
			s += extra(name)
		}
		return s
	}})
	r.a = r.addServer("a", nil)
	r.b = r.addServer("b", r.a)
	cs := r.addServer("c", r.a)
	r.files = r.c.writeAgents(r.opts.agents, &server{brokerPort: r.ag["a"].port()})
	r.samp = startEpochSampler(r.t, r.files)
	r.c.start(r.a)
	r.c.waitRole(r.a, "primary", 20*time.Second)
	r.c.start(r.b)
	r.c.start(cs)
	eventually(t, 30*time.Second, "b and c hear a, a lists both, b and c know each other", func() bool {
		sa, err := getGroupStatus(r.a.admin)
		sb, err1 := getGroupStatus(r.b.admin)
		sc, err2 := getGroupStatus(cs.admin)
		return err == nil && err1 == nil && err2 == nil && watches(r.b, "a") && watches(cs, "a") && len(sa.Backups) == 2 &&
			len(sb.Backups) >= 1 && len(sc.Backups) >= 1
	})
	r.startAgents()
	r.settled(r.a, epoch, 20*time.Second)
	return r, cs
}

// ranked waits until c ranks want in the election.
func ranked(t *testing.T, c *server, want int) {
	t.Helper()
	eventually(t, 20*time.Second, fmt.Sprintf("c ranks %d", want), func() bool {
		s, err := getGroupStatus(c.admin)
		return err == nil && s.Rank != nil && *s.Rank == want
	})
}

func TestGroupKillPrimaryTheBestBackupTakesOverAndTheOtherFollows(t *testing.T) {
	r, c := trio(t, nil)
	ranked(t, c, 1)
	r.a.p.signal(syscall.SIGKILL)
	r.a.p.wait(5 * time.Second)
	r.settled(r.b, 2, 20*time.Second)
	eventually(t, 20*time.Second, "c follows b with no manual step", func() bool { return watches(c, "b") })
	eventually(t, 10*time.Second, "c's primary_location names b's advertise", func() bool {
		loc, err := os.ReadFile(filepath.Join(c.dir, "data", "primary_location"))
		return err == nil && strings.TrimSpace(string(loc)) == r.ag["b"].addr()
	})
	if st := mustStatus(t, c); st.Epoch != 0 {
		t.Fatalf("c took an epoch (%d) though it never took over", st.Epoch)
	}
	// Then b dies too: c, now b's backup, takes over.
	eventually(t, 20*time.Second, "b lists c", func() bool {
		s, err := getGroupStatus(r.b.admin)
		return err == nil && len(s.Backups) == 1
	})
	r.b.p.signal(syscall.SIGKILL)
	r.b.p.wait(5 * time.Second)
	r.settled(c, 3, 20*time.Second)
	r.check()
}

func TestGroupPartitionOfTheBackupsDuringThePrimarysDeathEndsWithOnePrimary(t *testing.T) {
	r, c := trio(t, nil)
	ranked(t, c, 1)
	// b and c cannot reach each other's broker (nor can the agents) as a
	// dies: both may take over; the files' compare-and-swap orders them.
	r.ag["b"].Cut()
	r.ag["c"].Cut()
	r.a.p.signal(syscall.SIGKILL)
	r.a.p.wait(5 * time.Second)
	// Each is alone: b takes over at the window, c (rank 1) after its
	// stagger, both at epoch 2 (the failover ids order them).
	eventually(t, 20*time.Second, "b and c both take over while cut", func() bool {
		sb, e1 := getStatus(r.b.admin)
		sc, e2 := getStatus(c.admin)
		return e1 == nil && e2 == nil && sb.Role == "primary" && sc.Role == "primary"
	})
	r.heal()
	var win, lose *server
	eventually(t, 30*time.Second, "exactly one primary, the other fenced or following", func() bool {
		sb, e1 := getStatus(r.b.admin)
		sc, e2 := getStatus(c.admin)
		if e1 != nil || e2 != nil {
			return false
		}
		switch {
		case sb.Role == "primary" && sc.Role != "primary" && sc.Role != "taking-over":
			win, lose = r.b, c
		case sc.Role == "primary" && sb.Role != "primary" && sb.Role != "taking-over":
			win, lose = c, r.b
		default:
			return false
		}
		return true
	})
	st := mustStatus(t, win)
	r.settled(win, st.Epoch, 30*time.Second)
	ls := mustStatus(t, lose)
	t.Logf("%s is primary at epoch %d; %s is %s at epoch %d", win.name, st.Epoch, lose.name, ls.Role, ls.Epoch)
	if ls.Role == "primary" {
		t.Fatalf("two primaries")
	}
	r.check()
}

// markerCheck is a check that fails while DIR/down-NAME exists; the
// service writes DIR/service-NAME.log.
func markerCheck(dir string) func(name string) string {
	return func(name string) string {
		return fmt.Sprintf(`checks:
  - {name: svc, command: "test ! -e %[1]s/down-%[2]s", interval: 100ms, timeout: 100ms, fall: 2, rise: 1}
health: all
service: {start: "echo start >> %[1]s/service-%[2]s.log", stop: "echo stop >> %[1]s/service-%[2]s.log"}
`, dir, name)
	}
}

func serviceLog(dir, name string) string {
	b, _ := os.ReadFile(filepath.Join(dir, "service-"+name+".log"))
	return strings.TrimSpace(string(b))
}

func TestGroupAFailingCheckOnThePrimaryHandsOverWithTheService(t *testing.T) {
	dir := t.TempDir()
	r, c := trio(t, markerCheck(dir))
	ranked(t, c, 1)
	eventually(t, 10*time.Second, "a started its service", func() bool { return serviceLog(dir, "a") == "start" })
	mustOK(t, os.WriteFile(filepath.Join(dir, "down-a"), nil, 0o644))
	r.settled(r.b, 2, 20*time.Second)
	eventually(t, 10*time.Second, "service.stop on a, service.start on b", func() bool {
		return serviceLog(dir, "a") == "start\nstop" && serviceLog(dir, "b") == "start"
	})
	eventually(t, 20*time.Second, "a and c watch b", func() bool { return watches(r.a, "b") && watches(c, "b") })
	if s := serviceLog(dir, "c"); s != "" {
		t.Fatalf("c ran its service: %q", s)
	}
	r.check()
}

func TestGroupAFailingCheckOnTheBestBackupMakesTheOtherTakeOver(t *testing.T) {
	dir := t.TempDir()
	mustOK(t, os.WriteFile(filepath.Join(dir, "down-b"), nil, 0o644)) // b is unhealthy from the start
	r, c := trio(t, markerCheck(dir))
	eventually(t, 10*time.Second, "b at effective priority 0, c ranks first", func() bool {
		sb, e1 := getGroupStatus(r.b.admin)
		sc, e2 := getGroupStatus(c.admin)
		return e1 == nil && e2 == nil && sb.EffectivePriority == 0 && sc.Rank != nil && *sc.Rank == 0
	})
	r.a.p.signal(syscall.SIGKILL)
	r.a.p.wait(5 * time.Second)
	r.settled(c, 2, 20*time.Second)
	eventually(t, 20*time.Second, "b follows c", func() bool { return watches(r.b, "c") })
	if st := mustStatus(t, r.b); st.Epoch != 0 {
		t.Fatalf("the unhealthy b took an epoch (%d)", st.Epoch)
	}
	r.check()
}
