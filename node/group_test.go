package node

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/config"
)

// groupOf3 is n0 (primary), n1 (priority 150) and n2 (100), all started,
// each backup having heard the primary and the primary both backups.
func groupOf3(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	o.nodes, o.agents = 3, max(o.agents, 4)
	conf := o.configure
	o.configure = func(i int, c *config.Config) {
		c.Priority = []int{100, 150, 100}[i]
		if conf != nil {
			conf(i, c)
		}
	}
	c := makeCluster(t, o)
	c.start(0)
	c.waitRole(0, RolePrimary)
	c.start(1)
	c.start(2)
	c.waitHeard(1)
	c.waitHeard(2)
	c.waitFor("n0 lists both backups", func() bool { return len(c.nodes[0].n.Status().Backups) == 2 })
	c.waitFor("the backups know each other", func() bool {
		return len(c.nodes[1].n.Status().Backups) >= 1 && len(c.nodes[2].n.Status().Backups) >= 1
	})
	c.waitFor("n2 ranks second (n1 has priority 150)", func() bool { r := c.nodes[2].n.Status().Rank; return r != nil && *r == 1 })
	return c
}

func (c *cluster) waitFor(what string, ok func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// primaryOf is the node a backup watches ("" if none).
func (c *cluster) primaryOf(i int) string {
	if p := c.nodes[i].n.Status().Primary; p != nil && p.LastHeartbeatAgeMS >= 0 {
		return p.Node
	}
	return ""
}

func TestGroupTheBestBackupTakesOverAndTheOtherFollows(t *testing.T) {
	c := groupOf3(t, clusterOptions{})
	c.waitFor("n2 ranks second (n1 has priority 150)", func() bool { r := c.nodes[2].n.Status().Rank; return r != nil && *r == 1 })
	c.stop(0)
	s1 := c.waitRole(1, RolePrimary)
	c.waitFor("n2 follows n1", func() bool { return c.primaryOf(2) == "n1" })
	if s2 := c.nodes[2].n.Status(); s2.Role != "backup" {
		t.Fatalf("n2 is %s", s2.Role)
	}
	c.waitFor("n2's primary_location names n1", func() bool {
		loc, _, err := config.ReadPrimaryLocation(c.nodes[2].dir)
		return err == nil && loc == c.advertise(1)
	})
	c.waitFor("every file bound to n1", func() bool { _, other := c.boundTo(s1.FailoverID); return other == 0 })
	// n2 never took over: its epoch is untouched, its history has no takeover.
	if d := c.disk(2); d.Epoch != 0 && d.Role != "backup" {
		t.Fatalf("n2's state %+v", d)
	}
	// Then n1 dies: n2, now n1's backup, takes over.
	c.waitFor("n1 lists n2", func() bool { return len(c.nodes[1].n.Status().Backups) == 1 })
	c.stop(1)
	s2 := c.waitRole(2, RolePrimary)
	if s2.Epoch != s1.Epoch+1 {
		t.Fatalf("n2 took over at epoch %d, want %d", s2.Epoch, s1.Epoch+1)
	}
}

func TestGroupAFailingCheckOnTheBestBackupMakesTheOtherOneWin(t *testing.T) {
	var n1Down atomic.Bool
	c := groupOf3(t, clusterOptions{
		configure: func(i int, c *config.Config) {
			c.Checks = []config.Check{{Name: "svc", Command: "true", Interval: 10 * time.Millisecond, Timeout: 5 * time.Millisecond, Fall: 1, Rise: 1}}
		},
		options: func(i int) Options {
			return Options{Probe: func(ctx context.Context, k config.Check) (string, error) {
				if i == 1 && n1Down.Load() {
					return "", errors.New("connection refused")
				}
				return "ok", nil
			}}
		},
	})
	n1Down.Store(true)
	c.waitFor("n1 at effective priority 0", func() bool { return c.nodes[1].n.Status().EffectivePriority == 0 })
	c.waitFor("n2 ranks first", func() bool { r := c.nodes[2].n.Status().Rank; return r != nil && *r == 0 })
	c.stop(0)
	c.waitRole(2, RolePrimary)
	c.waitFor("n1 follows n2", func() bool { return c.primaryOf(1) == "n2" })
	if s := c.nodes[1].n.Status(); s.Role != "backup" || !strings.Contains(s.Ineligible, "effective priority is 0") {
		t.Fatalf("n1: %s, ineligible %q", s.Role, s.Ineligible)
	}
}

func TestGroupAFailingCheckOnThePrimaryHandsOverWithTheService(t *testing.T) {
	var n0Down atomic.Bool
	var mu sync.Mutex
	var calls []string
	c := groupOf3(t, clusterOptions{
		configure: func(i int, c *config.Config) {
			c.Checks = []config.Check{{Name: "svc", Command: "true", Interval: 10 * time.Millisecond, Timeout: 5 * time.Millisecond, Fall: 2, Rise: 1}}
			c.Service = config.Service{Start: "start", Stop: "stop"}
		},
		options: func(i int) Options {
			name := []string{"n0", "n1", "n2"}[i]
			return Options{
				Probe: func(ctx context.Context, k config.Check) (string, error) {
					if i == 0 && n0Down.Load() {
						return "", errors.New("opscenterd is down")
					}
					return "ok", nil
				},
				RunHook: func(ctx context.Context, hook, command string, timeout time.Duration, env []string, log logrus.FieldLogger) error {
					mu.Lock()
					calls = append(calls, name+":"+hook)
					mu.Unlock()
					return nil
				},
			}
		},
	})
	has := func(call string) bool { mu.Lock(); defer mu.Unlock(); return slices.Contains(calls, call) }
	c.waitFor("n0 started its service", func() bool { return has("n0:service.start") })
	n0Down.Store(true)
	c.waitRole(1, RolePrimary) // the best healthy backup
	c.waitFor("n0 stopped its service", func() bool { return has("n0:service.stop") })
	c.waitFor("n1 started its service", func() bool { return has("n1:service.start") })
	c.waitRole(0, RoleBackup)
	c.waitFor("n2 follows n1", func() bool { return c.primaryOf(2) == "n1" })
	if has("n2:service.start") {
		t.Fatal("n2 started the service")
	}
	// Order on n0: the stop came after its own start, and n1's start after
	// n0's stop (the singleton is never started twice at once here).
	mu.Lock()
	defer mu.Unlock()
	if i, j := slices.Index(calls, "n0:service.stop"), slices.Index(calls, "n1:service.start"); i < 0 || j < i {
		t.Fatalf("calls %v: want n0's stop before n1's start", calls)
	}
}

func TestGroupUnhealthyPrimaryWithNoHealthyBackupStays(t *testing.T) {
	var down, backupsDown atomic.Bool
	c := groupOf3(t, clusterOptions{
		configure: func(i int, c *config.Config) {
			c.Checks = []config.Check{{Name: "svc", Command: "true", Interval: 10 * time.Millisecond, Timeout: 5 * time.Millisecond, Fall: 1, Rise: 1}}
		},
		options: func(i int) Options {
			return Options{Probe: func(ctx context.Context, k config.Check) (string, error) {
				if down.Load() || (i > 0 && backupsDown.Load()) {
					return "", errors.New("down everywhere")
				}
				return "ok", nil
			}}
		},
	})
	// The backups' checks fail first (all at once, the primary might hand
	// over to one not yet known to be down: it would refuse the handover).
	backupsDown.Store(true)
	c.waitFor("n0 sees both backups at effective priority 0", func() bool {
		bs := c.nodes[0].n.Status().Backups
		return len(bs) == 2 && bs[0].EffectivePriority == 0 && bs[1].EffectivePriority == 0
	})
	down.Store(true)
	c.waitFor("n0 warns that no backup is healthy", func() bool {
		return strings.Contains(strings.Join(c.nodes[0].n.Status().Warnings, "|"), "no healthy backup")
	})
	// Several periods later n0 is still the primary and nobody took over.
	for _, i := range []int{1, 2} {
		c.waitFor("n"+string(rune('0'+i))+" sees its own check down", func() bool { return c.nodes[i].n.Status().EffectivePriority == 0 })
	}
	// Ten heartbeats later (the backups have had the input to act on):
	sent := c.nodes[0].n.Metrics().HeartbeatsSent
	c.waitFor("n0 sent 10 more heartbeats", func() bool { return c.nodes[0].n.Metrics().HeartbeatsSent >= sent+10 })
	if s := c.nodes[0].n.Status(); s.Role != "primary" {
		t.Fatalf("n0 is %s", s.Role)
	}
	for _, i := range []int{1, 2} {
		if s := c.nodes[i].n.Status(); s.Role != "backup" {
			t.Fatalf("n%d is %s", i, s.Role)
		}
	}
}

func TestGroupSwitchoverToANamedBackup(t *testing.T) {
	c := groupOf3(t, clusterOptions{})
	if err := c.nodes[0].n.Switchover(context.Background(), "n2"); err != nil {
		t.Fatal(err)
	}
	c.waitRole(2, RolePrimary)
	c.waitRole(0, RoleBackup)
	c.waitFor("n1 follows n2", func() bool { return c.primaryOf(1) == "n2" })
	c.waitFor("n0 watches n2", func() bool { return c.primaryOf(0) == "n2" })
	if err := c.nodes[2].n.Switchover(context.Background(), "nobody"); err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("switchover to an unknown node: %v", err)
	}
}
