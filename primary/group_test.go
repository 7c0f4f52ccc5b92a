package primary

import (
	"errors"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/protocol"
)

const (
	bID = "bbbbbbbb-0000-4000-8000-000000000000"
	cID = "cccccccc-0000-4000-8000-000000000000"
)

func groupReply(id, node string, prio, eff int) protocol.Envelope {
	return protocol.Envelope{FailoverID: id, Node: node, Role: "backup", Advertise: node + ":1", HasPriority: true, Priority: prio, Effective: eff, HeardSeq: 5}
}

// groupCore is a started core with backups b (150) and c (100).
func groupCore(t *testing.T, gaveUp string) *core {
	c := testCore(false)
	c.cfg.GaveUp = gaveUp
	c.start(at(0), nil)
	c.reply(at(0.1), groupReply(bID, "b", 150, 150), nil)
	c.reply(at(0.2), groupReply(cID, "c", 100, 100), nil)
	return c
}

func TestGroupSwitchoverGoesToTheBestOrTheNamedBackup(t *testing.T) {
	c := groupCore(t, "")
	if c.peer.FailoverID != bID {
		t.Fatalf("best backup %s, want b", c.peer.Node)
	}
	out, err := c.switchover(at(0.5), "")
	if err != nil || c.handoverTo != bID || out.Beat == nil || out.Beat.HandoverTo != bID {
		t.Fatalf("switchover: %v, handover to %q", err, c.handoverTo)
	}
	c = groupCore(t, "")
	if _, err := c.switchover(at(0.5), "c"); err != nil || c.handoverTo != cID {
		t.Fatalf("switchover --to c: %v, handover to %q", err, c.handoverTo)
	}
	c = groupCore(t, "")
	if _, err := c.switchover(at(0.5), "zz"); !errors.Is(err, ErrUnknownBackup) || !strings.Contains(err.Error(), `"zz"`) {
		t.Fatalf("switchover --to an unknown node: %v", err)
	}
	c.reply(at(0.6), groupReply(cID, "c", 100, 0), nil) // c's checks are down
	if _, err := c.switchover(at(0.7), "c"); !errors.Is(err, ErrUnhealthyBackup) || c.handoverTo != "" {
		t.Fatalf("switchover --to an unhealthy backup: %v", err)
	}
	if _, err := c.switchover(at(0.7), ""); err != nil || c.handoverTo != bID {
		t.Fatalf("switchover to the best healthy backup: %v, to %q", err, c.handoverTo)
	}
	c = groupCore(t, "")
	c.reply(at(0.3), groupReply(bID, "b", 150, 0), nil)
	c.reply(at(0.3), groupReply(cID, "c", 100, 0), nil)
	if _, err := c.switchover(at(0.5), ""); !errors.Is(err, ErrUnhealthyBackup) {
		t.Fatalf("switchover with every backup unhealthy: %v", err)
	}
}

func TestGroupHeartbeatsListTheMembersAndAgentsEveryBackup(t *testing.T) {
	c := groupCore(t, "")
	out := c.tick(at(1))
	if len(out.Members) != 2 || out.Members[0].Node != "b" || out.Members[1].Node != "c" || out.Members[0].Priority != 150 {
		t.Fatalf("members %+v", out.Members)
	}
	if out.Command == nil || strings.Join(out.Command.FailoverServers, ",") != "b:1,c:1" {
		t.Fatalf("failover-servers %v", out.Command)
	}
	if !out.Beat.HasPriority || out.Beat.Priority != 0 || out.Beat.Effective != protocol.DefaultPriority {
		t.Fatalf("own priority in the heartbeat: %+v", out.Beat)
	}
}

func TestGroupStoppingOneBackupKeepsFailoverOn(t *testing.T) {
	c := groupCore(t, "")
	stop := groupReply(bID, "b", 150, 150)
	stop.Stopping = true
	c.reply(at(0.5), stop, nil)
	var s Status
	c.status(at(0.6), &s)
	if !s.BackupConfigured || s.Backup == nil || s.Backup.Node != "c" || len(s.Backups) != 1 {
		t.Fatalf("after b's clean stop: %+v", s)
	}
}

func TestGroupUnhealthyPrimaryHandsOverToTheBestHealthyBackup(t *testing.T) {
	c := groupCore(t, "")
	c.reply(at(0.3), groupReply(bID, "b", 150, 0), nil) // b's checks are down
	out := c.health(at(0.5), 0)
	if c.handoverTo != cID || out.Beat == nil || out.Beat.HandoverTo != cID {
		t.Fatalf("handover to %q, want c (b is unhealthy)", c.handoverTo)
	}
}

func TestGroupUnhealthyPrimaryWithNoHealthyBackupStaysAndWarns(t *testing.T) {
	c := groupCore(t, "")
	c.reply(at(0.3), groupReply(bID, "b", 150, 0), nil)
	c.reply(at(0.3), groupReply(cID, "c", 100, 0), nil)
	c.health(at(0.5), 0)
	if c.handoverTo != "" {
		t.Fatalf("handed over to an unhealthy backup %q", c.handoverTo)
	}
	var s Status
	c.tick(at(1))
	c.status(at(1), &s)
	if !strings.Contains(strings.Join(s.Warnings, "|"), "no healthy backup") {
		t.Fatalf("warnings %q", s.Warnings)
	}
	// A backup's health returns: the next tick hands over to it.
	c.reply(at(1.1), groupReply(cID, "c", 100, 100), nil)
	c.tick(at(2))
	if c.handoverTo != cID {
		t.Fatalf("handover to %q once c is healthy", c.handoverTo)
	}
}

func TestGroupNoAutomaticHandoverBackToTheServerThatGaveUp(t *testing.T) {
	c := groupCore(t, bID) // b handed us the role
	c.health(at(0.5), 0)
	if c.handoverTo != cID {
		t.Fatalf("health handover to %q, want c (not b, which just gave up)", c.handoverTo)
	}
	c = groupCore(t, bID)
	p := groupReply(bID, "b", 150, 150)
	p.Preempt = true
	c.reply(at(0.5), p, nil)
	if c.handoverTo != "" {
		t.Fatalf("preempted by the server that just gave up the role")
	}
	// The operator may.
	if _, err := c.switchover(at(0.6), "b"); err != nil || c.handoverTo != bID {
		t.Fatalf("operator switchover to b: %v", err)
	}
}

func TestGroupPreemptOnlyByAHealthierBackup(t *testing.T) {
	c := groupCore(t, "")
	c.health(at(0.3), 120)
	p := groupReply(cID, "c", 100, 100)
	p.Preempt = true
	c.reply(at(0.5), p, nil)
	if c.handoverTo != "" {
		t.Fatal("a backup less healthy than the primary preempted it")
	}
	p = groupReply(bID, "b", 150, 150)
	p.Preempt = true
	c.reply(at(0.6), p, nil)
	if c.handoverTo != bID {
		t.Fatalf("preempt by the healthier b: handover to %q", c.handoverTo)
	}
}
