package backup

import (
	"fmt"
	"sort"
	"time"
)

// Groups: a primary may have several backups. When it goes silent, the
// eligible backup with the highest effective priority takes over after the
// window; ties go to the backup that heard the most recent heartbeat (the
// highest seq), then to the lowest failover id. The others wait longer, by
// rank (Stagger each), and stand down when they hear the new primary.
//
// A backup is eligible when its configured and effective priorities are
// above 0, it is not in maintenance, and it has heard the primary. What a
// backup knows of its peers comes from their replies (on the channels it
// listens to) and from the members list of the primary's heartbeats; a
// peer not heard of for PeerTTL no longer ranks (a dead peer only delays
// the others, it never stops them).

// PeerInfo is another backup of the same primary, as last heard.
type PeerInfo struct {
	Node        string
	FailoverID  string
	Address     string
	Priority    int
	Effective   int
	HeardSeq    uint64 // the last heartbeat seq it counted (0: never heard the primary)
	Maintenance bool
	Seen        time.Time // when this was true (receiver's clock)
}

func (p PeerInfo) eligible() bool {
	return p.Priority > 0 && p.Effective > 0 && !p.Maintenance && p.HeardSeq > 0
}

// maxPeers bounds the peers a detector keeps (hostile replies).
const maxPeers = 32

// Stagger is how much longer each rank waits after the window: two
// periods and half the window, time enough for the best candidate's
// takeover to be heard.
func (c DetectorConfig) Stagger() time.Duration {
	if c.StaggerBy > 0 {
		return c.StaggerBy
	}
	return 2*c.Period + c.Window/2
}

// PeerTTL is how long a peer counts after it was last heard of.
func (c DetectorConfig) PeerTTL() time.Duration {
	rp := c.ReplyPeriod
	if rp <= 0 {
		rp = 30 * c.Period
	}
	return 2*rp + c.Window
}

// ObservePeer records another backup of our primary (from its reply or a
// heartbeat's members list). The newer word wins.
func (d *Detector) ObservePeer(p PeerInfo) {
	if p.FailoverID == "" || p.FailoverID == d.cfg.Self {
		return
	}
	if d.peers == nil {
		d.peers = map[string]PeerInfo{}
	}
	old, ok := d.peers[p.FailoverID]
	if ok && old.Seen.After(p.Seen) {
		return
	}
	if !ok && len(d.peers) >= maxPeers {
		return
	}
	if ok && p.Address == "" {
		p.Address = old.Address
	}
	d.peers[p.FailoverID] = p
}

// ForgetPeer drops a peer (it stopped cleanly, or became the primary).
func (d *Detector) ForgetPeer(id string) { delete(d.peers, id) }

// SetEffective sets this backup's effective priority (health checks).
func (d *Detector) SetEffective(eff int) { d.effective = eff }

// Effective is this backup's effective priority.
func (d *Detector) Effective() int { return d.effective }

// Peers are the backups known at now (fresh ones), highest rank first.
func (d *Detector) Peers(now time.Time) []PeerInfo {
	var out []PeerInfo
	for _, p := range d.peers {
		if now.Sub(p.Seen) <= d.cfg.PeerTTL() {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return outranks(out[i], out[j]) })
	return out
}

// outranks is the election's order: effective priority, then the most
// recent heartbeat heard, then the lowest failover id.
func outranks(a, b PeerInfo) bool {
	if a.Effective != b.Effective {
		return a.Effective > b.Effective
	}
	if a.HeardSeq != b.HeardSeq {
		return a.HeardSeq > b.HeardSeq
	}
	return a.FailoverID < b.FailoverID
}

func (d *Detector) self() PeerInfo {
	seq := d.primary.Seq
	if seq == 0 && d.heard {
		seq = 1 // heard in an earlier run
	}
	prio := d.cfg.Priority
	if d.cfg.Manual {
		prio = 0
	}
	return PeerInfo{FailoverID: d.cfg.Self, Priority: prio, Effective: d.effective, HeardSeq: seq, Maintenance: d.Maintenance()}
}

// Eligible reports whether this backup may take over automatically, and
// if not, why.
func (d *Detector) Eligible() (bool, string) {
	why := Ineligible(d.cfg.Manual, d.effective)
	return why == "", why
}

// Ineligible says why a backup with this setting (manual: priority 0) and
// effective priority never takes over automatically ("": it may).
func Ineligible(manual bool, effective int) string {
	switch {
	case manual:
		return "priority is 0: this backup never takes over automatically (tandem switchover --to it)"
	case effective == 0:
		return "effective priority is 0 (health checks down)"
	}
	return ""
}

// Rank is this backup's place in the election at now: 0 for the best
// candidate, k when k eligible peers outrank it.
func (d *Detector) Rank(now time.Time) int {
	me := d.self()
	rank := 0
	for _, p := range d.Peers(now) {
		if p.eligible() && outranks(p, me) {
			rank++
		}
	}
	return rank
}

// extra is how much longer than the window this backup waits at now.
func (d *Detector) extra(now time.Time) time.Duration {
	return time.Duration(d.Rank(now)) * d.cfg.Stagger()
}

// Contender is a heartbeat from another server at a token above the
// watched primary's that this backup cannot count yet (it does not echo
// our nonce: the new primary has not heard our reply). The backup stands
// down: the window restarts, once per such token, so that a replayed
// message delays a takeover by one window at most.
func (d *Detector) Contender(node, id string, epoch uint64, now time.Time) Decision {
	if d.decided || id == d.cfg.Self || epoch <= d.primary.Epoch || id == d.primary.FailoverID {
		return Decision{}
	}
	key := fmt.Sprintf("%s@%d", id, epoch)
	if d.stoodDown == nil {
		d.stoodDown = map[string]bool{}
	}
	if d.stoodDown[key] || len(d.stoodDown) >= maxPeers {
		return Decision{}
	}
	d.stoodDown[key] = true
	d.since = now
	d.ForgetPeer(id)
	return Decision{Action: WindowRestarted, Reason: fmt.Sprintf("standing down: server %s heartbeats as primary at epoch %d (waiting to count its heartbeats)", node, epoch)}
}
