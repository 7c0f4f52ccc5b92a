package primary

import (
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/protocol"
)

// heard is b's reply saying it heard heartbeat seq.
func heard(id, node string, seq uint64) protocol.Envelope {
	e := groupReply(id, node, 100, 100)
	e.HeardSeq = seq
	return e
}

// failsafeCore is a started core with failsafe grace 10 periods and
// backups b and c that heard its first heartbeat.
func failsafeCore(t *testing.T) (*core, uint64) {
	c := testCore(false)
	c.cfg.Failsafe = 10 * period
	first := c.start(at(0), nil).Beat.Seq
	c.reply(at(0.1), heard(bID, "b", first), nil)
	c.reply(at(0.2), heard(cID, "c", first), nil)
	return c, first
}

func TestFailsafeHoldsWhileEveryBackupConfirmsRecentHeartbeats(t *testing.T) {
	c, _ := failsafeCore(t)
	if why := c.failsafe(at(0.5)); why != "" {
		t.Fatalf("both backups confirmed the heartbeat made 0.5 periods ago: %q", why)
	}
	// Heartbeats go on and both backups keep confirming: failsafe holds
	// past the grace counted from the term's loss.
	for n := 1; n <= 30; n++ {
		seq := c.tick(at(float64(n))).Beat.Seq
		c.reply(at(float64(n)+0.1), heard(bID, "b", seq), nil)
		c.reply(at(float64(n)+0.2), heard(cID, "c", seq), nil)
		if why := c.failsafe(at(float64(n) + 0.5)); why != "" {
			t.Fatalf("period %d: %q", n, why)
		}
	}
	// c goes silent (cut from this primary: it may count the silence and
	// campaign after its fail_window): failsafe ends before the grace
	// since the last heartbeat c confirmed.
	var last int
	for n := 31; n <= 45; n++ {
		seq := c.tick(at(float64(n))).Beat.Seq
		c.reply(at(float64(n)+0.1), heard(bID, "b", seq), nil)
		if why := c.failsafe(at(float64(n) + 0.5)); why != "" {
			if !strings.Contains(why, "backup c") {
				t.Fatalf("failsafe ended for %q, want c named", why)
			}
			last = n
			break
		}
	}
	// c confirmed heartbeat 30 (made at period 30): the grace is 10 periods.
	if last != 40 {
		t.Fatalf("failsafe ended at period %d, want 40 (10 periods after c's last confirmed heartbeat)", last)
	}
}

func TestFailsafeNeedsTheBackupsKnownWhenTheLeaseWasLost(t *testing.T) {
	// Nobody answering: nobody vouches.
	c := testCore(false)
	c.cfg.Failsafe = 10 * period
	c.start(at(0), nil)
	if why := c.failsafe(at(0.5)); !strings.Contains(why, "no backup") {
		t.Fatalf("no backup: %q", why)
	}
	// The set is fixed when failsafe starts: a backup that shows up later
	// does not replace one that went away.
	c, _ = failsafeCore(t)
	if why := c.failsafe(at(0.5)); why != "" {
		t.Fatal(why)
	}
	const dID = "dddddddd-0000-4000-8000-000000000000"
	for n := 1; n <= 25; n++ {
		seq := c.tick(at(float64(n))).Beat.Seq
		c.reply(at(float64(n)+0.1), heard(bID, "b", seq), nil)
		c.reply(at(float64(n)+0.1), heard(dID, "d", seq), nil)
	}
	if why := c.failsafe(at(25.5)); !strings.Contains(why, "backup c") {
		t.Fatalf("c gone, d new: %q, want c named", why)
	}
	// A valid term again clears the set: the next loss takes a new one.
	c.termValid()
	if why := c.failsafe(at(25.6)); why != "" {
		t.Fatalf("new set after the term came back: %q", why)
	}
	// Off: never.
	c = testCore(false)
	c.start(at(0), nil)
	if why := c.failsafe(at(0.1)); why == "" {
		t.Fatal("failsafe held with it off")
	}
}
