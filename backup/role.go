package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
)

// RoleConfig is what the backup role needs.
type RoleConfig struct {
	Node        string
	Token       failoverid.Token // this backup's id and epoch
	Advertise   string           // this backup's own broker, for the primary's records
	Period      time.Duration
	ReplyPeriod time.Duration
	Window      time.Duration
	Maintenance bool // start paused
	Dest        protocol.Destinations
	Signer      *protocol.Signer
	Clock       clock.Clock
	Log         logrus.FieldLogger
	// Instance and StartedMS identify this process (cloned-VM detection).
	Instance  string
	StartedMS int64
	// Seed is the primary known from an earlier run, if any.
	Seed *failoverid.Peer
	// Heard: a valid heartbeat of this primary was counted in an earlier
	// run (state.json). Without it the backup takes over only after it has
	// heard one (see DetectorConfig.Heard).
	Heard bool
	// Alive, when set, is called on every tick of the loop (systemd watchdog).
	Alive func()
	// OnPrimary is called (from Run) when the watched primary changes, so
	// the node can remember it.
	OnPrimary func(failoverid.Peer)

	// Groups. Priority is this backup's configured priority (0 with
	// Manual: never takes over automatically); Location is its
	// primary_location (host:port), which follows a new primary.
	Priority int
	Manual   bool
	Location string
	// DialPeer, when set, opens a link to another server's embedded broker
	// (peers of a group with embedded heartbeat channels).
	DialPeer func(ctx context.Context, addr string) (broker.Bus, error)
	// SecondPath, with an external heartbeat broker, is the primary's
	// embedded broker address (dialed with DialPeer): heartbeats there
	// count too, so the broker's outage is not a dead primary.
	SecondPath string
	// ChannelUp, when set, says whether the heartbeat channel's link is
	// connected: while it is not, the silence does not count (an external
	// broker's outage, or this backup's own link to it, is not a dead
	// primary).
	ChannelUp func() bool
	// Preempt: a healthier, higher-priority backup up for PreemptDelay
	// asks the primary for a switchover.
	Preempt      bool
	PreemptDelay time.Duration
	// StaggerBy overrides the election's stagger (tests; 0: default).
	StaggerBy time.Duration
	// Peers seeds the election with the backups an earlier role of this
	// process knew (a role that restarts to follow a new primary must not
	// forget them and take over as if it were the only candidate).
	Peers []PeerInfo
	// Effective, when set, is the effective priority the role starts with
	// (default Priority); SetEffective changes it.
	Effective func() int
	// ReplySeq, when set, numbers the replies across every backup role of
	// this process (a primary takes a reply only if its seq is above the
	// last of the same process; a role that restarts to follow a new
	// primary must not start again at 1).
	ReplySeq *atomic.Uint64
}

// End is why Run returned a takeover.
type End struct {
	Takeover bool // false: the context ended, or Duplicate
	// Duplicate: another, earlier-started process uses our failover id.
	Duplicate string
	Reason    string
	Switch    bool   // a planned switchover, not a failure
	SeenEpoch uint64 // highest epoch seen on the channel
	Primary   PrimaryView
	// Follow: another server became the primary (a backup of the group
	// took over, or a switchover): the node points primary_location at
	// Primary.Advertise and watches it.
	Follow bool
}

// Status is a snapshot for the admin API.
type Status struct {
	Maintenance        bool
	Primary            PrimaryView
	LastHeartbeatAgeMS int64 // -1: never heard
	SilentForMS        int64
	SeenEpoch          uint64
	Received           uint64 // every well-formed heartbeat, counted or not
	Ignored            uint64 // of those, not the watched primary's (stale, duplicate, unknown)
	Dropped            uint64 // malformed
	SignatureFails     uint64 // unsigned or badly signed
	Unechoed           uint64 // of the ignored, heartbeats that echo none of our nonces (early or replayed)
	// Heard: a heartbeat of the primary was counted (now or in an earlier
	// run); until then there is no automatic takeover.
	Heard bool
	// TakeoverInMS counts down to the takeover while a heard primary is
	// silent; -1 when none is coming (maintenance, never heard).
	TakeoverInMS int64
	// PrimaryMaintenance: the primary announces maintenance (set there).
	PrimaryMaintenance bool
	// Unknown is the last server heard that is not the watched primary
	// (another failover id on the channel), "" if none.
	Unknown string
	// Groups: this backup's effective priority, its rank in the election
	// (0: best), why it is not eligible ("" if it is), and the other
	// backups it knows.
	Effective  int
	Rank       int
	Ineligible string
	Peers      []PeerInfo
	Holding    string // why the silence is not counted ("" when it is)
}

// Role is a running backup.
type Role struct {
	cfg   RoleConfig
	bus   broker.Bus
	maint chan bool
	eff   chan int

	mu  sync.Mutex
	det *Detector
	st  Status
}

// NewRole builds the role on the heartbeat bus (the primary's broker or the
// external heartbeat broker).
func NewRole(cfg RoleConfig, bus broker.Bus) *Role {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	return &Role{cfg: cfg, bus: bus, maint: make(chan bool, 1), eff: make(chan int, 1)}
}

// SetEffective sets the backup's effective priority (health checks); the
// backup replies at once so the primary and its peers rank it right.
func (r *Role) SetEffective(eff int) {
	select {
	case r.eff <- eff:
	default:
		select {
		case <-r.eff:
		default:
		}
		r.eff <- eff
	}
}

// SetMaintenance pauses (true) or resumes automatic takeover.
func (r *Role) SetMaintenance(on bool) {
	r.mu.Lock()
	r.cfg.Maintenance = on
	r.mu.Unlock()
	select {
	case r.maint <- on:
	default:
		// A value is pending: replace it with the newest.
		select {
		case <-r.maint:
		default:
		}
		r.maint <- on
	}
}

// Status returns a snapshot.
func (r *Role) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.st
	s.Maintenance = r.cfg.Maintenance
	s.LastHeartbeatAgeMS = -1
	if r.det != nil {
		s.Maintenance = r.det.Maintenance() // also when the primary announced it
		now := r.cfg.Clock.Now()
		s.Primary = r.det.Primary()
		s.SeenEpoch = r.det.SeenEpoch()
		s.SilentForMS = r.det.SilentFor(now).Milliseconds()
		s.Heard = r.det.Heard()
		s.PrimaryMaintenance = r.det.PrimaryMaintenance()
		s.TakeoverInMS = -1
		if left, ok := r.det.TakeoverIn(now); ok {
			s.TakeoverInMS = left.Milliseconds()
		}
		if !s.Primary.Heard.IsZero() {
			s.LastHeartbeatAgeMS = now.Sub(s.Primary.Heard).Milliseconds()
		}
		s.Effective = r.det.Effective()
		s.Rank = r.det.Rank(now)
		if ok, why := r.det.Eligible(); !ok {
			s.Ineligible = why
		}
		s.Peers = r.det.Peers(now)
	} else {
		// Not watching yet (the role is starting, or restarting to follow
		// a new primary): what makes it ineligible is its setting.
		eff := r.cfg.Priority
		if r.cfg.Effective != nil {
			eff = r.cfg.Effective()
		}
		s.Ineligible = Ineligible(r.cfg.Manual, eff)
	}
	return s
}

// tickEvery is how often the detector is ticked: often enough that the
// window is measured to within a fraction of a period.
func (r *Role) tickEvery() time.Duration {
	t := r.cfg.Period / 4
	if t > 250*time.Millisecond {
		t = 250 * time.Millisecond
	}
	if t < 5*time.Millisecond {
		t = 5 * time.Millisecond
	}
	return t
}

// Run watches the primary until a takeover is decided or ctx ends.
func (r *Role) Run(ctx context.Context) (End, error) {
	log := r.cfg.Log
	sub, err := r.bus.Subscribe(r.cfg.Dest.Heartbeat)
	if err != nil {
		return End{}, err
	}
	defer sub.Close()
	// Replies are read only to notice a clone of this backup.
	rsub, err := r.bus.Subscribe(r.cfg.Dest.Reply)
	if err != nil {
		return End{}, err
	}
	defer rsub.Close()

	now := r.cfg.Clock.Now()
	det := NewDetector(DetectorConfig{Window: r.cfg.Window, Period: r.cfg.Period, Self: r.cfg.Token.ID, Heard: r.cfg.Heard,
		Priority: r.cfg.Priority, Manual: r.cfg.Manual, ReplyPeriod: r.cfg.ReplyPeriod, StaggerBy: r.cfg.StaggerBy}, now)
	started := now
	for _, p := range r.cfg.Peers {
		det.ObservePeer(p)
	}
	if r.cfg.Effective != nil {
		det.SetEffective(r.cfg.Effective())
	}
	if r.cfg.Seed != nil {
		det.Seed(PrimaryView{Node: r.cfg.Seed.Node, FailoverID: r.cfg.Seed.FailoverID, Epoch: r.cfg.Seed.Epoch, Advertise: r.cfg.Seed.Address})
	}
	r.mu.Lock()
	det.SetMaintenance(r.cfg.Maintenance, now)
	r.det = det
	r.mu.Unlock()

	tick := r.cfg.Clock.NewTicker(r.tickEvery())
	defer tick.Stop()
	replyT := r.cfg.Clock.NewTicker(r.cfg.ReplyPeriod)
	defer replyT.Stop()

	// Extra links: the peers' embedded brokers (a group with embedded
	// heartbeat channels), or the primary's own broker as the second path
	// (an external heartbeat broker).
	extra := newLinks(ctx, r.cfg.DialPeer, r.cfg.Dest)
	defer extra.close()
	extra.add(r.cfg.SecondPath, true, false)
	addPeerLink := func(addr string) {
		if r.cfg.SecondPath == "" && addr != "" && addr != r.cfg.Location && addr != r.cfg.Advertise {
			extra.add(addr, true, true)
		}
	}
	// The peers an earlier role knew are listened to from the start: after
	// a campaign lost to one of them (arbiter) the new primary is heard on
	// its own broker, the old primary's being gone.
	for _, p := range r.cfg.Peers {
		addPeerLink(p.Address)
	}

	// Each reply carries a fresh nonce; only heartbeats that echo one of
	// our recent nonces count as the primary being alive (a recorded
	// stream replayed later echoes nothing this process issued). A
	// heartbeat that does not echo one is answered with a new reply, at
	// most once a period, so a lost reply costs a period, not reply_period.
	var nonces nonceRing
	var clones cloneEchoes
	var lastChallenge, lastPreempt time.Time
	seq := r.cfg.ReplySeq // signed: the primary takes a reply only if newer than the last
	if seq == nil {
		seq = new(atomic.Uint64)
	}
	send := func(preempt bool) {
		replySeq := seq.Add(1)
		r.mu.Lock()
		maint := r.cfg.Maintenance
		prio, eff, heardSeq := r.cfg.Priority, det.Effective(), det.Primary().Seq
		r.mu.Unlock()
		if r.cfg.Manual {
			prio = 0
		}
		lastChallenge = r.cfg.Clock.Now()
		env := protocol.Envelope{FailoverID: r.cfg.Token.ID, Epoch: r.cfg.Token.Epoch, Node: r.cfg.Node,
			Advertise: r.cfg.Advertise, Role: "backup", Maintenance: maint, SentMS: time.Now().UnixMilli(),
			Instance: r.cfg.Instance, StartedMS: r.cfg.StartedMS, Nonce: nonces.next(), Echo: clones.values(), Seq: replySeq,
			HasPriority: true, Priority: prio, Effective: eff, HeardSeq: heardSeq, Preempt: preempt}
		h := env.Headers()
		r.cfg.Signer.Sign(r.cfg.Dest.Reply, h, nil)
		extra.publish(r.cfg.Dest.Reply, h, nil, r.cfg.Period)
		pctx, cancel := context.WithTimeout(ctx, r.cfg.Period)
		defer cancel()
		if err := r.bus.Publish(pctx, r.cfg.Dest.Reply, h, nil); err != nil {
			log.WithError(err).Debug("reply not sent")
		}
	}
	reply := func() { send(false) }
	reply() // at once when starting, so the primary knows
	lastPrimary := det.Primary().FailoverID
	lastInstance := ""
	heardSaved := r.cfg.Heard // OnPrimary has recorded a counted heartbeat
	holding := false          // the heartbeat channel is down: the silence does not count
	// countedHere: this role counted a heartbeat. Only a primary change
	// seen in this role is followed: the primary remembered from an earlier
	// run (the seed, stale after a rejoin) is no evidence that
	// primary_location names the wrong server.
	countedHere := false

	// The window's end is armed as a timer at its exact deadline (the
	// periodic tick still runs for the stall guard and the watchdog).
	var deadline time.Time
	var deadlineC <-chan time.Time
	arm := func() {
		now := r.cfg.Clock.Now()
		r.mu.Lock()
		dl := det.Deadline(now)
		r.mu.Unlock()
		if dl.Equal(deadline) {
			return
		}
		deadline = dl
		deadlineC = r.cfg.Clock.After(dl.Sub(now))
	}
	arm()

	handle := func(d Decision) (End, bool) {
		switch d.Action {
		case Takeover:
			log.WithField("reason", d.Reason).Warn("taking over")
			return End{Takeover: true, Reason: d.Reason, Switch: d.Switchover,
				SeenEpoch: det.SeenEpoch(), Primary: det.Primary()}, true
		case WindowRestarted, NeverHeard, NotEligible:
			log.Warn(d.Reason)
		case Ignored:
			r.st.Ignored++
			if strings.HasPrefix(d.Reason, "unknown server") {
				r.st.Unknown = d.Reason
			}
			log.WithField("reason", d.Reason).Debug("heartbeat ignored")
		}
		return End{}, false
	}

	tickDetector := func() (End, bool) {
		now := r.cfg.Clock.Now()
		if r.cfg.ChannelUp != nil {
			up := r.cfg.ChannelUp()
			r.mu.Lock()
			switch {
			case !up:
				det.Hold(now)
				if !holding {
					holding = true
					r.st.Holding = "the heartbeat channel's link is down: the primary's silence is not counted (a broker outage is not a dead primary)"
					log.Warn(r.st.Holding)
				}
			case holding:
				holding = false
				r.st.Holding = ""
				det.Hold(now) // the window starts again from the link's return
				log.Info("the heartbeat channel's link is back: the silence window starts again")
			}
			r.mu.Unlock()
		}
		r.mu.Lock()
		d := det.Tick(now)
		suspect := d.Action == None && det.Suspect(now)
		r.mu.Unlock()
		if suspect {
			reply() // fresh figures for the other backups' ranking
		}
		return handle(d)
	}

	// onReply is a reply on any channel: a clone of ours, or another
	// backup of the group.
	onReply := func(m broker.Message) (End, bool) {
		if r.cfg.Signer.Verify(r.cfg.Dest.Reply, m.Headers, m.Body) != nil {
			return End{}, false
		}
		env, err := protocol.Decode(m.Headers)
		if err != nil {
			return End{}, false
		}
		if env.Clone(r.cfg.Token.ID, r.cfg.Instance) {
			clones.add(env.Instance)
		}
		if end, stop := r.clone(env); stop {
			return end, true
		} else if env.Clone(r.cfg.Token.ID, r.cfg.Instance) {
			// A later clone: answer at once so that it learns it is
			// the later one and stops (replies are otherwise rare).
			log.WithFields(logrus.Fields{"clone_node": env.Node, "clone_instance": env.Instance}).
				Error("duplicate failover_id: a server that started later uses this server's id; it should stop by itself")
			reply()
			return End{}, false
		}
		if env.FailoverID == r.cfg.Token.ID || env.Role != "backup" {
			return End{}, false
		}
		r.mu.Lock()
		if p := det.Primary().FailoverID; p != "" && env.FailoverID == p {
			// A backup's reply from the server this backup watches as its
			// primary is an old one (replayed, or from before it took
			// over): the primary is no peer, and a link to its broker
			// would hear it on a path the operator did not configure.
			r.mu.Unlock()
			return End{}, false
		}
		if env.Stopping {
			det.ForgetPeer(env.FailoverID)
		} else {
			prio, eff := env.Priorities()
			det.ObservePeer(PeerInfo{Node: env.Node, FailoverID: env.FailoverID, Address: env.Advertise, Priority: prio, Effective: eff,
				HeardSeq: env.HeardSeq, Maintenance: env.Maintenance, Seen: r.cfg.Clock.Now()})
		}
		r.mu.Unlock()
		if !env.Stopping {
			addPeerLink(env.Advertise)
		}
		arm()
		return End{}, false
	}

	onHeartbeat := func(m broker.Message) (End, bool) {
		if err := r.cfg.Signer.Verify(r.cfg.Dest.Heartbeat, m.Headers, m.Body); err != nil {
			r.mu.Lock()
			r.st.SignatureFails++
			r.mu.Unlock()
			log.WithError(err).Debug("dropped heartbeat")
			return End{}, false
		}
		env, err := protocol.Decode(m.Headers)
		if err != nil {
			r.mu.Lock()
			r.st.Dropped++
			r.mu.Unlock()
			log.WithError(err).Debug("dropped heartbeat")
			return End{}, false
		}
		if env.Clone(r.cfg.Token.ID, r.cfg.Instance) {
			clones.add(env.Instance)
		}
		if end, stop := r.clone(env); stop {
			return end, true
		}
		now := r.cfg.Clock.Now()
		if env.FailoverID != r.cfg.Token.ID && !nonces.echoedBy(env) {
			// Sent before the primary heard our reply, or replayed.
			r.mu.Lock()
			r.st.Received++
			r.st.Ignored++
			r.st.Unechoed++
			d := Decision{}
			if env.Role == "primary" {
				d = det.Contender(env.Node, env.FailoverID, env.Epoch, now)
			}
			r.mu.Unlock()
			handle(d)
			log.WithFields(logrus.Fields{"from": env.Node, "seq": env.Seq}).Debug("heartbeat does not echo a nonce of ours: not counted")
			if now.Sub(lastChallenge) >= r.cfg.Period {
				reply()
			}
			arm()
			return End{}, false
		}
		r.mu.Lock()
		r.st.Received++
		d := det.Observe(env, now)
		end, done := handle(d)
		p := det.Primary()
		counted := d.Action != Ignored && env.FailoverID == p.FailoverID
		var members []protocol.Member
		if counted {
			members, _ = protocol.DecodeMembers(m.Body) // a bad list lists nobody
			for _, mb := range members {
				if mb.FailoverID != r.cfg.Token.ID {
					det.ObservePeer(PeerInfo{Node: mb.Node, FailoverID: mb.FailoverID, Address: mb.Address, Priority: mb.Priority,
						Effective: mb.Effective, HeardSeq: mb.HeardSeq, Maintenance: mb.Maintenance,
						Seen: now.Add(-time.Duration(mb.LastReplyAgeMS) * time.Millisecond)})
				}
			}
		}
		r.mu.Unlock()
		for _, mb := range members {
			if mb.FailoverID != r.cfg.Token.ID {
				addPeerLink(mb.Address)
			}
		}
		changed := p.FailoverID != lastPrimary && p.FailoverID != ""
		switch {
		case changed, counted && !heardSaved:
			follow := changed && countedHere && lastPrimary != "" && p.Advertise != "" && p.Advertise != r.cfg.Location
			lastPrimary, lastInstance, heardSaved = p.FailoverID, env.Instance, true
			log.WithFields(logrus.Fields{"primary": p.Node, "primary_failover_id": p.FailoverID, "primary_epoch": p.Epoch}).Info("watching primary")
			if r.cfg.OnPrimary != nil {
				r.cfg.OnPrimary(failoverid.Peer{Node: p.Node, FailoverID: p.FailoverID, Epoch: p.Epoch, Address: p.Advertise})
			}
			if follow && !done {
				log.WithFields(logrus.Fields{"primary": p.Node, "address": p.Advertise}).Warn("a new primary of the group: following it")
				return End{Follow: true, Reason: fmt.Sprintf("%s is the primary at epoch %d", p.Node, p.Epoch), SeenEpoch: det.SeenEpoch(), Primary: p}, true
			}
			reply()
		case counted && env.Instance != lastInstance:
			// The same primary restarted (a new process): answer at
			// once, so it knows it has a backup without waiting up to
			// reply_period.
			lastInstance = env.Instance
			log.WithField("primary_instance", env.Instance).Info("the primary restarted: replying at once")
			reply()
		case counted && r.wantsPreempt(det, p, started, now) && now.Sub(lastPreempt) >= 10*r.cfg.Period:
			lastPreempt = now
			log.WithFields(logrus.Fields{"primary": p.Node, "primary_effective": p.Effective, "effective": det.Effective()}).
				Info("preempt: asking the primary to hand over to this healthier, higher-priority backup")
			send(true)
		}
		if counted {
			countedHere = true
		}
		if done {
			return end, true
		}
		arm()
		return End{}, false
	}

	for {
		select {
		case <-ctx.Done():
			r.sayStopping(extra)
			return End{}, nil
		case on := <-r.maint:
			r.mu.Lock()
			d := det.SetMaintenance(on, r.cfg.Clock.Now())
			r.mu.Unlock()
			log.WithField("maintenance", on).Info("maintenance mode changed")
			handle(d)
			reply()
		case eff := <-r.eff:
			r.mu.Lock()
			was := det.Effective()
			det.SetEffective(eff)
			r.mu.Unlock()
			if eff != was {
				log.WithFields(logrus.Fields{"effective_priority": eff, "was": was}).Info("effective priority changed")
				reply()
				arm()
			}
		case <-tick.C():
			if r.cfg.Alive != nil {
				r.cfg.Alive()
			}
			if end, done := tickDetector(); done {
				return end, nil
			}
			arm()
		case <-deadlineC:
			deadlineC = nil
			if end, done := tickDetector(); done {
				return end, nil
			}
			deadline = time.Time{}
			arm()
		case <-replyT.C():
			reply()
		case m, ok := <-rsub.C():
			if !ok {
				return End{}, broker.ErrClosed
			}
			if end, stop := onReply(m); stop {
				return end, nil
			}
		case in := <-extra.in:
			f := onHeartbeat
			if in.reply {
				f = onReply
			}
			if end, stop := f(in.m); stop {
				return end, nil
			}
		case m, ok := <-sub.C():
			if !ok {
				return End{}, broker.ErrClosed
			}
			if end, stop := onHeartbeat(m); stop {
				return end, nil
			}
		}
	}
}

// wantsPreempt: with preempt on, this backup has been up PreemptDelay, is
// eligible and healthier than the primary (a higher effective priority).
func (r *Role) wantsPreempt(det *Detector, p PrimaryView, started, now time.Time) bool {
	if !r.cfg.Preempt || now.Sub(started) < r.cfg.PreemptDelay || det.Maintenance() {
		return false
	}
	if ok, _ := det.Eligible(); !ok {
		return false
	}
	return det.Effective() > p.Effective
}

// sayStopping publishes a last reply on a clean stop, so the primary knows
// at once that it has no backup (bounded: a dead broker costs a second).
func (r *Role) sayStopping(extra *links) {
	env := protocol.Envelope{FailoverID: r.cfg.Token.ID, Epoch: r.cfg.Token.Epoch, Node: r.cfg.Node,
		Advertise: r.cfg.Advertise, Role: "backup", Stopping: true, SentMS: time.Now().UnixMilli(),
		Instance: r.cfg.Instance, StartedMS: r.cfg.StartedMS}
	h := env.Headers()
	r.cfg.Signer.Sign(r.cfg.Dest.Reply, h, nil)
	extra.publish(r.cfg.Dest.Reply, h, nil, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := r.bus.Publish(ctx, r.cfg.Dest.Reply, h, nil); err != nil {
		r.cfg.Log.WithError(err).Debug("could not tell the primary this backup stops")
	}
}

// clone handles a message from another process using our failover id: the
// later-started of the two stops.
func (r *Role) clone(env protocol.Envelope) (End, bool) {
	if !env.Clone(r.cfg.Token.ID, r.cfg.Instance) || !env.StartedBefore(r.cfg.StartedMS, r.cfg.Instance) {
		return End{}, false
	}
	if !env.Echoes(r.cfg.Instance) {
		// One message, or a replayed one, never stops a process: a live
		// clone answers ours (our replies echo its instance) first.
		r.cfg.Log.WithFields(logrus.Fields{"clone_node": env.Node, "clone_instance": env.Instance}).
			Warn("a server that says it started earlier uses this server's failover_id; waiting for it to answer this process before believing it")
		return End{}, false
	}
	msg := fmt.Sprintf("duplicate failover_id %s: node %s (instance %s) started earlier with the same id; a cloned server must get its own id: stop this one and run `tandem id --config FILE --regenerate`",
		env.FailoverID, env.Node, env.Instance)
	r.cfg.Log.Error(msg)
	return End{Duplicate: msg}, true
}

// nonceRing issues reply nonces and remembers the last few (a heartbeat
// in flight may echo the previous one).
type nonceRing struct {
	vals [4]string
	n    int
}

func (r *nonceRing) next() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("backup: no randomness for a nonce: " + err.Error())
	}
	v := hex.EncodeToString(b[:])
	r.vals[r.n%len(r.vals)] = v
	r.n++
	return v
}

// echoedBy reports whether a heartbeat echoes one of our recent nonces.
func (r *nonceRing) echoedBy(env protocol.Envelope) bool {
	for _, v := range r.vals {
		if v != "" && env.Echoes(v) {
			return true
		}
	}
	return false
}

// cloneEchoes are the instances of clones heard, which our replies echo so
// a live clone can tell it was heard (bounded, newest kept).
type cloneEchoes struct{ vals []string }

func (c *cloneEchoes) add(instance string) {
	if instance == "" || len(instance) > 32 {
		return
	}
	for _, v := range c.vals {
		if v == instance {
			return
		}
	}
	c.vals = append(c.vals, instance)
	if len(c.vals) > 4 {
		c.vals = c.vals[1:]
	}
}

func (c *cloneEchoes) values() []string { return append([]string(nil), c.vals...) }
