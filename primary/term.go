package primary

import (
	"fmt"
	"time"
)

// Term is the arbiter's hold on the primary role (arbiter.Term): the role
// acts only while Valid, or in failsafe.
type Term interface {
	// Valid: the term's lease is fresh enough to act on now.
	Valid() bool
	// Lost is closed when the term is over.
	Lost() <-chan struct{}
	// Why says why it ended.
	Why() string
}

// beatMark is when one heartbeat was made.
type beatMark struct {
	seq uint64
	at  time.Time
}

// markBeat remembers when heartbeat seq went out (for failsafe), keeping
// the last keep of them.
func (c *core) markBeat(seq uint64, now time.Time) {
	if c.cfg.Failsafe <= 0 {
		return
	}
	c.beats = append(c.beats, beatMark{seq, now})
	for len(c.beats) > 0 && now.Sub(c.beats[0].at) > c.cfg.Failsafe+2*c.cfg.Period {
		c.beats = c.beats[1:]
	}
}

// beatTime is when heartbeat seq was made (zero: not remembered).
func (c *core) beatTime(seq uint64) time.Time {
	for i := len(c.beats) - 1; i >= 0; i-- {
		if c.beats[i].seq == seq {
			return c.beats[i].at
		}
	}
	return time.Time{}
}

// failsafe decides whether a primary whose term is not valid may still act
// at now (arbiter.failsafe): yes while every backup that was alive when the
// term first failed has answered, within the Failsafe grace, a heartbeat
// made within that grace. A backup counts silence only from the last
// heartbeat it heard and waits a whole fail_window (Failsafe is that
// window less a margin) before it campaigns, so none of them can win the
// election while this holds. With no backup alive there is nobody to vouch:
// no failsafe. The reason is "" when it holds.
func (c *core) failsafe(now time.Time) string {
	if c.cfg.Failsafe <= 0 {
		return "failsafe is off"
	}
	if c.failsafeSet == nil {
		c.failsafeSet = map[string]string{}
		for _, b := range c.alive(now) {
			c.failsafeSet[b.peer.FailoverID] = b.peer.Node
		}
	}
	if len(c.failsafeSet) == 0 {
		return "no backup was answering when the lease was lost"
	}
	for id, node := range c.failsafeSet {
		b := c.backups[id]
		if b == nil {
			return fmt.Sprintf("backup %s no longer answers", node)
		}
		at := c.beatTime(b.heardSeq)
		if at.IsZero() || now.Sub(at) >= c.cfg.Failsafe {
			return fmt.Sprintf("backup %s has not confirmed a heartbeat within %s", node, c.cfg.Failsafe)
		}
	}
	return ""
}

// termValid clears the failsafe snapshot once the term is valid again.
func (c *core) termValid() { c.failsafeSet = nil }
