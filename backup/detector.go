package backup

import (
	"fmt"
	"time"

	"github.com/tandem-ha/tandem/protocol"
)

// Action is what the detector asks its driver to do.
type Action int

const (
	// None: keep waiting.
	None Action = iota
	// Takeover: the primary is gone (or handed over): take over now.
	Takeover
	// WindowRestarted: the backup itself stalled (or left maintenance);
	// the silence window starts again from now.
	WindowRestarted
	// Ignored: the heartbeat was not counted (own echo, stale epoch,
	// duplicate or reordered sequence number, unknown server).
	Ignored
	// NeverHeard: the window passed, but no heartbeat of the primary was
	// ever counted: no takeover (reported once).
	NeverHeard
	// NotEligible: the window passed, but this backup may not take over
	// automatically (priority 0, health checks down): reported once per
	// silence.
	NotEligible
)

func (a Action) String() string {
	switch a {
	case None:
		return "none"
	case Takeover:
		return "takeover"
	case WindowRestarted:
		return "window-restarted"
	case Ignored:
		return "ignored"
	case NeverHeard:
		return "never-heard"
	case NotEligible:
		return "not-eligible"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// Decision is the detector's output for one input.
type Decision struct {
	Action Action
	Reason string
	// Switchover marks a Takeover the primary asked for (planned), not a failure.
	Switchover bool
}

// DetectorConfig tunes the detector.
type DetectorConfig struct {
	// Window is how long a silence must last before a takeover.
	Window time.Duration
	// Period is the primary's heartbeat period (used for the stall guard).
	Period time.Duration
	// Self is this backup's failover id: its own heartbeats are ignored and a
	// handover addressed to it triggers an immediate takeover.
	Self string
	// Heard says a valid heartbeat of the primary was counted before (in an
	// earlier run: state.json). Until one is, the silence never ends in an
	// automatic takeover: a backup that has never heard its primary (a typo
	// in primary_location, another group key) must not take the role from
	// a healthy primary it cannot see.
	Heard bool
	// Priority is this backup's configured priority (0: the default,
	// protocol.DefaultPriority); the effective one starts equal
	// (SetEffective). Manual: priority 0 in tandem.yaml, never takes
	// over automatically.
	Priority int
	Manual   bool
	// ReplyPeriod is how often backups reply (how long a peer counts).
	ReplyPeriod time.Duration
	// StaggerBy overrides Stagger (0: the default).
	StaggerBy time.Duration
}

// StallThreshold is how late the backup's own loop may wake before the
// detector assumes the backup itself was paused (GC, VM freeze, SIGSTOP) and
// restarts the window instead of blaming the primary: max(2 s, 2 × period).
func (c DetectorConfig) StallThreshold() time.Duration {
	t := 2 * c.Period
	if t < 2*time.Second {
		t = 2 * time.Second
	}
	return t
}

// PrimaryView is what the detector knows about the primary it watches.
type PrimaryView struct {
	Node       string
	FailoverID string
	Epoch      uint64
	Advertise  string
	Seq        uint64
	// Heard is when the last counted heartbeat arrived (zero: never).
	Heard time.Time
	// Priority and Effective are what its heartbeats say of it.
	Priority, Effective int
}

// Detector decides when a backup must take over. It is pure: time comes in
// as arguments (readings of the receiver's monotonic clock), heartbeats come
// in through Observe, and decisions come out; it never sleeps, reads a clock
// or does IO, so it is tested with a table of inputs.
//
// A takeover is decided when no counted heartbeat arrived for Window, the
// detector is not in maintenance, and the backup did not itself stall.
type Detector struct {
	cfg         DetectorConfig
	since       time.Time // start of the current silence window
	lastTick    time.Time
	maintenance bool
	// primaryMaint: the primary's heartbeats announce maintenance (set with
	// `tandem maintenance on` on the primary).
	primaryMaint bool
	primary      PrimaryView
	seenEpoch    uint64
	decided      bool
	heard        bool // a heartbeat of the primary was counted (now or before)
	neverWarned  bool // the silence of a never-heard primary was reported
	// Groups (group.go).
	effective   int
	peers       map[string]PeerInfo
	stoodDown   map[string]bool
	inelWarned  bool // this silence's NotEligible was reported
	suspectSent bool // this silence's half-window reply was asked for
}

// NewDetector starts a detector whose first window opens at now.
func NewDetector(cfg DetectorConfig, now time.Time) *Detector {
	if cfg.Priority <= 0 {
		cfg.Priority = protocol.DefaultPriority
	}
	return &Detector{cfg: cfg, since: now, lastTick: now, heard: cfg.Heard, effective: cfg.Priority}
}

// Heard reports whether a heartbeat of the primary was ever counted (in
// this run or, per DetectorConfig.Heard, before).
func (d *Detector) Heard() bool { return d.heard }

// TakeoverIn is how long until the window ends and the backup takes over
// (0: it is due), and false when no takeover is coming: in maintenance,
// already decided, or a primary never heard.
func (d *Detector) TakeoverIn(now time.Time) (time.Duration, bool) {
	if ok, _ := d.Eligible(); d.decided || d.Maintenance() || !d.heard || !ok {
		return 0, false
	}
	left := d.cfg.Window + d.extra(now) - now.Sub(d.since)
	if left < 0 {
		left = 0
	}
	return left, true
}

// Seed tells the detector the primary it knew from an earlier run (state.json).
func (d *Detector) Seed(p PrimaryView) {
	p.Heard = time.Time{}
	p.Seq = 0
	d.primary = p
	if p.Epoch > d.seenEpoch {
		d.seenEpoch = p.Epoch
	}
}

// Primary returns the watched primary as last heard.
func (d *Detector) Primary() PrimaryView { return d.primary }

// SeenEpoch is the highest epoch seen on the channel.
func (d *Detector) SeenEpoch() uint64 { return d.seenEpoch }

// PrimaryMaintenance reports whether the primary's heartbeats announce
// maintenance (set there).
func (d *Detector) PrimaryMaintenance() bool { return d.primaryMaint }

// Maintenance reports whether automatic takeover is paused, here or by the
// primary's announcement.
func (d *Detector) Maintenance() bool { return d.maintenance || d.primaryMaint }

// Deadline is the instant the current window ends for this backup (its
// rank's stagger added, as of now): the driver ticks the detector then, so
// a takeover starts when last heartbeat + window expires rather than on
// the next periodic tick.
func (d *Detector) Deadline(now time.Time) time.Time {
	return d.since.Add(d.cfg.Window + d.extra(now))
}

// Suspect reports, once per silence, that the primary has been silent for
// half the window: the driver replies then, so that the other backups
// rank this one on fresh figures (its heard seq, its effective priority).
func (d *Detector) Suspect(now time.Time) bool {
	if d.suspectSent || d.decided || now.Sub(d.since) < d.cfg.Window/2 {
		return false
	}
	d.suspectSent = true
	return true
}

// SilentFor is how long the current window has been open at now.
func (d *Detector) SilentFor(now time.Time) time.Duration { return now.Sub(d.since) }

// SetMaintenance pauses or resumes automatic takeover. Leaving maintenance
// restarts the window, so that resuming never fails over at once.
func (d *Detector) SetMaintenance(on bool, now time.Time) Decision {
	was := d.Maintenance()
	d.maintenance = on
	if !on {
		// An operator turning maintenance off here also overrides what the
		// primary last announced (it may have died while in maintenance);
		// the primary's next heartbeat announces it again if still set.
		d.primaryMaint = false
	}
	if was && !on {
		d.since = now
		return Decision{Action: WindowRestarted, Reason: "maintenance ended"}
	}
	return Decision{}
}

// Observe counts one heartbeat received at now.
func (d *Detector) Observe(hb protocol.Envelope, now time.Time) Decision {
	if hb.FailoverID == d.cfg.Self {
		return Decision{Action: Ignored, Reason: "own heartbeat"}
	}
	if hb.Epoch > d.seenEpoch {
		d.seenEpoch = hb.Epoch
	}
	p := d.primary
	switch {
	case p.FailoverID == "":
		// First primary heard: adopt it.
	case hb.FailoverID == p.FailoverID:
		if hb.Epoch < p.Epoch {
			return Decision{Action: Ignored, Reason: fmt.Sprintf("stale epoch %d < %d", hb.Epoch, p.Epoch)}
		}
		if hb.Epoch == p.Epoch && hb.Seq != 0 && hb.Seq <= p.Seq {
			return Decision{Action: Ignored, Reason: fmt.Sprintf("duplicate or reordered seq %d <= %d", hb.Seq, p.Seq)}
		}
	case hb.Epoch > p.Epoch:
		// A different server at a higher epoch: the pair's primary changed.
	default:
		return Decision{Action: Ignored, Reason: fmt.Sprintf("unknown server %s (node %s) at epoch %d, not above the primary's %d", hb.FailoverID, hb.Node, hb.Epoch, p.Epoch)}
	}
	d.primary = PrimaryView{Node: hb.Node, FailoverID: hb.FailoverID, Epoch: hb.Epoch, Advertise: hb.Advertise, Seq: hb.Seq, Heard: now}
	d.primary.Priority, d.primary.Effective = hb.Priorities()
	d.ForgetPeer(hb.FailoverID)
	d.since = now
	d.suspectSent, d.inelWarned = false, false
	d.heard = true
	d.primaryMaint = hb.Maintenance
	if hb.HandoverTo != "" && hb.HandoverTo == d.cfg.Self && !d.decided && d.effective == 0 && !d.cfg.Manual {
		// Handing the role to a backup whose own checks are down helps
		// nobody: the primary's handover times out and it picks another.
		if !d.inelWarned {
			d.inelWarned = true
			return Decision{Action: NotEligible, Reason: fmt.Sprintf("refusing the handover from %s: this backup's effective priority is 0 (health checks down)", hb.Node)}
		}
		return Decision{}
	}
	if hb.HandoverTo != "" && hb.HandoverTo == d.cfg.Self && !d.decided {
		d.decided = true
		return Decision{Action: Takeover, Reason: fmt.Sprintf("switchover requested by %s at epoch %d", hb.Node, hb.Epoch), Switchover: true}
	}
	return Decision{}
}

// Tick is called by the driver's loop, often (every few hundred ms). It
// detects the backup's own stalls and the end of the window.
func (d *Detector) Tick(now time.Time) Decision {
	gap := now.Sub(d.lastTick)
	d.lastTick = now
	if d.decided {
		return Decision{}
	}
	if gap > d.cfg.StallThreshold() {
		d.since = now
		return Decision{Action: WindowRestarted, Reason: fmt.Sprintf("backup stalled for %s (more than %s): restarting the window", gap.Round(time.Millisecond), d.cfg.StallThreshold())}
	}
	if d.maintenance || d.primaryMaint {
		return Decision{}
	}
	if silent := now.Sub(d.since); silent >= d.cfg.Window {
		if !d.heard {
			if !d.neverWarned {
				d.neverWarned = true
				return Decision{Action: NeverHeard, Reason: fmt.Sprintf("no valid heartbeat from the primary for %s (fail_window %s), and none was ever heard: no automatic takeover until one is (check primary_location, the group key, the network)", silent.Round(time.Millisecond), d.cfg.Window)}
			}
			return Decision{}
		}
		if ok, why := d.Eligible(); !ok {
			if !d.inelWarned {
				d.inelWarned = true
				return Decision{Action: NotEligible, Reason: fmt.Sprintf("no heartbeat from the primary for %s, but %s", silent.Round(time.Millisecond), why)}
			}
			return Decision{}
		}
		if extra := d.extra(now); silent < d.cfg.Window+extra {
			return Decision{}
		}
		d.decided = true
		who := "the primary"
		if d.primary.Node != "" {
			who = "primary " + d.primary.Node
		}
		reason := fmt.Sprintf("no heartbeat from %s for %s (fail_window %s)", who, silent.Round(time.Millisecond), d.cfg.Window)
		if r := d.Rank(now); r > 0 {
			reason += fmt.Sprintf("; %d backup(s) ranked above this one did not take over in %s each", r, d.cfg.Stagger())
		}
		return Decision{Action: Takeover, Reason: reason}
	}
	return Decision{}
}

// Hold restarts the window at now: the heartbeat channel is down, so the
// silence says nothing about the primary.
func (d *Detector) Hold(now time.Time) {
	if !d.decided {
		d.since = now
	}
}
