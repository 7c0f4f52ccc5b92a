package primary

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/protocol"
)

// The primary's decisions live in core, a pure state machine in the manner
// of etcd-io/raft and backup.Detector: inputs come in as method calls that
// carry the receiver's clock reading (now) and what the driver decoded or
// scanned; what to do comes out as an Output. The core starts no goroutine,
// reads no clock and does no IO, so its transitions are tested with tables.
//
// Inputs: start (with the start-up scan of the managed files), tick,
// heartbeat, reply, agentStatus, scanDone, switchover. Outputs: a heartbeat
// (and an agent ping) to publish, a file scan to start, a changed backup to
// remember (OnPeer), log lines, and the End of the role. Once an End came
// out, every later input yields an empty Output: a fenced primary sends
// nothing more (I5).

// coreConfig is the part of Config the core decides with.
type coreConfig struct {
	Node            string
	Token           failoverid.Token
	Advertise       string
	Period          time.Duration
	ReplyPeriod     time.Duration
	HandoverTimeout time.Duration
	CheckEvery      time.Duration
	Files           bool // a scan of the managed files is available (Config.CheckFiles)
	Ping            bool
	Instance        string
	StartedMS       int64
	SeqBase         uint64
	// RebindPeriods is how many periods from the start a rebind goes out
	// with every ping (a takeover's, or a fresh primary's claim); later, a
	// rebind goes out in the period after an agent reported a token below
	// ours (an agent that was down, or a new one).
	RebindPeriods int
	// Priority is this server's configured priority, announced in its
	// heartbeats; the effective one starts equal (health input).
	Priority int
	// GaveUp is the failover id of the primary that handed this one the
	// role by a switchover: automatic handovers (health, preemption) never
	// hand it straight back (pg_auto_failover #772); an operator may.
	GaveUp string
	// Failsafe > 0 turns arbiter.failsafe on: a primary whose term is not
	// valid acts on while its backups confirm heartbeats made less than
	// Failsafe ago (fail_window less a margin); see failsafe.
	Failsafe time.Duration
}

// Output is what the driver does after one input: write Logs, then, if End
// is set, end the role at once (nothing else is done); otherwise call OnPeer
// with Peer, start scan number Scan (> 0), publish Beat and then Command.
type Output struct {
	Logs []LogLine
	End  *End
	Peer *failoverid.Peer
	Scan int
	// Beat is a heartbeat to publish. The driver stamps it with what it
	// reads at send time: the wall clock (SentMS) and Config.Maintenance.
	Beat *protocol.Envelope
	// Command is the ping to the agents that goes with Beat (Config.Ping).
	Command *protocol.Envelope
	// Rebind, when set, tells agents on their own hosts to bind to this
	// server (the driver adds the failover-sig and signs it).
	Rebind *protocol.Envelope
	// Members is the group's backups, the body of Beat.
	Members []protocol.Member
}

// LogLine is one log entry the core asks for.
type LogLine struct {
	Level  logrus.Level
	Msg    string
	Fields logrus.Fields
}

func (o *Output) log(level logrus.Level, msg string, fields logrus.Fields) {
	o.Logs = append(o.Logs, LogLine{Level: level, Msg: msg, Fields: fields})
}

// higher reports whether other outranks own in the total order of tokens
// (failoverid.Token.Compare): by epoch, then by failover id. Two primaries
// at one epoch thus end with the one with the lower failover id fenced.
func higher(other, own failoverid.Token) bool { return other.Compare(own) > 0 }

// above says why other outranks own, for a fence's reason.
func above(other, own failoverid.Token) string {
	if other.Epoch > own.Epoch {
		return fmt.Sprintf("at epoch %d, above ours (%d)", other.Epoch, own.Epoch)
	}
	return fmt.Sprintf("at our epoch %d with a greater failover id (%s > %s)", other.Epoch, other.ID, own.ID)
}

// core is the primary's state machine. See the comment at the top of the file.
type core struct {
	cfg coreConfig

	seq       uint64
	started   time.Time
	lastBeat  time.Time // last tick that beat or held (stall detection)
	lastCheck time.Time // last periodic file scan
	ended     bool

	// The best backup (the one a switchover goes to), as its replies
	// describe it; lastReply is the latest reply of any backup.
	peer             failoverid.Peer
	lastReply        time.Time
	backupConfigured bool
	// Every backup of the group, by failover id (bounded by maxEchoes).
	backups map[string]*backupView
	// effective is this server's effective priority (health checks);
	// unhealthy: the last health-handover warning, "" when none.
	effective   int
	healthKnown bool // a health input came (the node runs checks)
	unhealthy   string

	// A planned switchover in progress.
	handoverTo    string
	handoverStart time.Time

	// File scans run one at a time; holdUntil >= 0: no heartbeat until scan
	// number holdUntil (or later) completed, for at most one period.
	scanning, rescan bool
	gen, holdUntil   int
	holdSince        time.Time

	// Failsafe: when recent heartbeats were made, and the backups that
	// vouch for this primary while its term is not valid.
	beats       []beatMark
	failsafeSet map[string]string // failover id → node

	lastPing time.Time                       // the last command to the agents
	replies  map[string]map[string]replyMark // backup failover id → instance → newest reply
	// rebindLeft counts the start's rebinds still to send; rebindDue: an
	// agent behind us reported.
	rebindLeft int
	rebindDue  bool

	// echoes are what our heartbeats echo: the latest nonce of each backup
	// (so a backup counts only heartbeats sent after its own reply) and
	// the instance of each clone heard (so a live clone can prove it is
	// live, and a replayed message never can). Bounded, oldest out.
	echoes []echoEntry

	received uint64 // messages from other servers and agents handled
	tampered uint64 // agent reports of a higher token without a server signature
	// tamperWarned: the token each agent was last warned about (reported
	// every period, a tampered file would fill the log); bounded.
	tamperWarned map[string]failoverid.Token
	// backupStopped is the warning of a backup's clean stop ("" otherwise).
	backupStopped string
	backupMaint   bool   // the backup's last reply said it is in maintenance
	dup           string // duplicate failover id warning, if any
	warnings      []string
	agents        map[string]*AgentView
}

// maxFileError bounds what the registry keeps of an agent's file_error
// (a report is hostile input: 300 fake agents must not cost 263 MiB).
const maxFileError = 512

// pingGap is the least time between two pings sent for agents that just
// bound: a tenth of a period, at least 2 ms, and longer as more agents
// report here. Each ping reaches, and is checked by, every agent of this
// server, so the early pings of a takeover cost the agents (and the
// broker, which delivers each to all of them) about earlyPingDeliveries
// deliveries a period in all, whatever the size of the fleet: with 10,000
// agents at most one early ping a period, with 1,000 one every tenth.
func (c *core) pingGap() time.Duration {
	gap := max(c.cfg.Period/10, 2*time.Millisecond)
	if n := int64(len(c.agents)); n > 0 {
		gap = max(gap, time.Duration(int64(c.cfg.Period)*n/earlyPingDeliveries))
	}
	return gap
}

// earlyPingDeliveries bounds the early pings' deliveries to agents per
// period (see pingGap): the periodic ping's own to 10,000 agents.
const earlyPingDeliveries = 10_000

// ping puts a command to the agents in out (a new seq: agents refuse a
// seq they have seen).
func (c *core) ping(now time.Time, out *Output) {
	c.seq++
	c.lastPing = now
	tok := c.cfg.Token
	out.Command = &protocol.Envelope{FailoverID: tok.ID, Epoch: tok.Epoch, Node: c.cfg.Node, Seq: c.seq, Role: "primary",
		FailoverServers: c.failoverServers()}
}

// failoverServers are the group's other servers an agent should keep a
// standby subscription on: for a pair, the backup.
func (c *core) failoverServers() []string {
	if !c.backupConfigured {
		return nil
	}
	var out []string
	for _, b := range c.alive(c.lastBeat) {
		if a := b.peer.Address; a != "" && a != c.cfg.Advertise && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// replyMark is the newest reply taken from one backup process: its start
// and the reply's sequence number in that process (both signed).
type replyMark struct {
	startedMS int64
	seq       uint64
}

// maxInstances bounds the processes remembered per backup failover id (a
// restart, or a clone that has not stopped yet).
const maxInstances = 3

// freshReply reports whether env is newer than every reply taken from the
// same backup process before (a higher reply seq: not the wall clock,
// which may step back), and if so records it. Processes are told apart by
// instance, so a clone's or a restarted process's replies never displace
// another live process's nonce. Per failover id at most maxInstances are
// kept, the latest started. Replies without these stamps (older versions)
// are taken as they come.
func (c *core) freshReply(env protocol.Envelope) bool {
	if env.Instance == "" || env.Seq == 0 {
		return true
	}
	if c.replies == nil {
		c.replies = map[string]map[string]replyMark{}
	}
	procs := c.replies[env.FailoverID]
	if procs == nil {
		if len(c.replies) >= maxEchoes {
			return true // bounded: a flood of made-up backups is not remembered
		}
		procs = map[string]replyMark{}
		c.replies[env.FailoverID] = procs
	}
	if m, ok := procs[env.Instance]; ok {
		if env.Seq <= m.seq {
			return false
		}
	} else if len(procs) >= maxInstances {
		oldest, oldestStart := "", int64(0)
		for inst, m := range procs {
			if oldest == "" || m.startedMS < oldestStart {
				oldest, oldestStart = inst, m.startedMS
			}
		}
		if env.StartedMS <= oldestStart {
			return false // an older process than every one kept: a replay
		}
		delete(procs, oldest)
		c.forget("backup:" + env.FailoverID + "/" + oldest)
	}
	procs[env.Instance] = replyMark{startedMS: env.StartedMS, seq: env.Seq}
	return true
}

// echoEntry is one value our heartbeats echo, keyed by who asked.
type echoEntry struct{ key, value string }

// maxEchoes bounds the echo header (each value ≤ 16 bytes; the header ≤ 256).
const maxEchoes = 12

// remember sets the echo for key, newest last.
func (c *core) remember(key, value string) {
	if value == "" || len(value) > 32 {
		return
	}
	for i, e := range c.echoes {
		if e.key == key {
			c.echoes = append(c.echoes[:i], c.echoes[i+1:]...)
			break
		}
	}
	c.echoes = append(c.echoes, echoEntry{key, value})
	if len(c.echoes) > maxEchoes {
		c.echoes = c.echoes[len(c.echoes)-maxEchoes:]
	}
}

// forget drops the echo for key.
func (c *core) forget(key string) {
	for i, e := range c.echoes {
		if e.key == key {
			c.echoes = append(c.echoes[:i], c.echoes[i+1:]...)
			return
		}
	}
}

func (c *core) echoValues() []string {
	if len(c.echoes) == 0 {
		return nil
	}
	v := make([]string, len(c.echoes))
	for i, e := range c.echoes {
		v[i] = e.value
	}
	return v
}

func newCore(cfg coreConfig) *core {
	eff := cfg.Priority
	if eff <= 0 {
		eff = protocol.DefaultPriority // until the first health input
	}
	return &core{cfg: cfg, seq: cfg.SeqBase, holdUntil: -1, effective: eff}
}

// stallThreshold: a tick more than half a period late means the process may
// have been frozen while a backup took over, so it looks before it speaks.
// The check is cheap next to the cost of a stale heartbeat.
func (c *core) stallThreshold() time.Duration { return c.cfg.Period + c.cfg.Period/2 }

// connectedWindow: an agent counts as connected if it reported within
// 3 periods, and at least 3 s (agents report at their own pace).
func (c *core) connectedWindow() time.Duration {
	w := 3 * c.cfg.Period
	if w < 3*time.Second {
		w = 3 * time.Second
	}
	return w
}

// scanResult is the outcome of one scan of the managed files.
type scanResult struct {
	higher *failoverid.Token
	err    error
	gen    int
}

// start begins the role at now. files is the start-up scan (nil: no files
// to scan); a fresh role checks before its first heartbeat, then beats.
func (c *core) start(now time.Time, files *scanResult) Output {
	var out Output
	c.started, c.lastBeat, c.lastCheck = now, now, now
	c.rebindLeft = c.cfg.RebindPeriods
	if files != nil && c.scanned(*files, &out) {
		return out
	}
	c.beat(now, &out)
	return out
}

// scanned handles a scan's result; true: it fenced.
func (c *core) scanned(res scanResult, out *Output) bool {
	if res.err != nil {
		out.log(logrus.WarnLevel, "checking managed agent files for a higher epoch", logrus.Fields{logrus.ErrorKey: res.err})
	}
	if res.higher != nil && higher(*res.higher, c.cfg.Token) {
		c.fence(out, *res.higher, "", "", "a managed address.yaml is "+above(*res.higher, c.cfg.Token))
		return true
	}
	return false
}

// tick is the period's timer firing at now.
func (c *core) tick(now time.Time) Output {
	var out Output
	if c.ended {
		return out
	}
	if late := now.Sub(c.lastBeat); late > c.stallThreshold() && c.cfg.Files {
		// We may have been frozen while a backup took over: say nothing
		// until a scan started after waking has looked.
		out.log(logrus.WarnLevel, fmt.Sprintf("primary woke %s late: checking for a higher epoch before sending anything", late.Round(time.Millisecond)), nil)
		if c.scanning {
			c.rescan = true
			c.holdUntil = c.gen + 1
		} else {
			c.startScan(&out)
			c.holdUntil = c.gen
		}
		c.holdSince, c.lastCheck = now, now
	} else if now.Sub(c.lastCheck) >= c.cfg.CheckEvery {
		c.lastCheck = now
		c.startScan(&out)
	}
	if c.holdUntil >= 0 {
		// Hold at most one period: a slow scan (many files, a busy machine)
		// must not silence a live primary past the backup's window. A stale
		// heartbeat is harmless (agents check the epoch); a false failover
		// is not. The scan's result still fences us when it arrives.
		if now.Sub(c.holdSince) < c.cfg.Period {
			c.lastBeat = now
			return out
		}
		out.log(logrus.WarnLevel, "the epoch check is still running after a period: heartbeating meanwhile", nil)
		c.holdUntil = -1
	}
	if c.handoverTo != "" && now.Sub(c.handoverStart) > c.cfg.HandoverTimeout {
		out.log(logrus.WarnLevel, "switchover: the backup did not take over in time; staying primary", logrus.Fields{"backup_failover_id": c.handoverTo})
		c.handoverTo = ""
	}
	c.lastBeat = now
	c.beat(now, &out)
	c.checkHealth(now, &out)
	c.updateWarnings(now, &out)
	return out
}

// scanDone is the result of scan number res.gen, arrived at now.
func (c *core) scanDone(now time.Time, res scanResult) Output {
	var out Output
	if c.ended {
		return out
	}
	c.scanning = false
	if c.scanned(res, &out) {
		return out
	}
	if c.holdUntil >= 0 && res.gen >= c.holdUntil {
		c.holdUntil = -1
		c.lastBeat = now
		c.beat(now, &out)
	}
	if c.rescan {
		c.rescan = false
		c.startScan(&out)
	}
	return out
}

// switchover is an operator's request for a planned handover at now, to
// the backup named to (its node name or failover id), or with to empty to
// the best backup.
func (c *core) switchover(now time.Time, to string) (Output, error) {
	var out Output
	switch {
	case c.ended:
		return out, ErrNotRunning
	case c.handoverTo != "":
		return out, ErrSwitchoverState
	}
	var target *backupView
	if to != "" {
		for _, b := range c.alive(now) {
			if b.peer.Node == to || b.peer.FailoverID == to {
				target = b
				break
			}
		}
		if target == nil {
			return out, fmt.Errorf("%w: no live backup is named %q (tandem members lists them)", ErrUnknownBackup, to)
		}
		if target.unhealthy() {
			return out, fmt.Errorf("%w: backup %s's health checks are down (effective priority 0); it would refuse the role", ErrUnhealthyBackup, target.peer.Node)
		}
	} else {
		for _, b := range c.alive(now) {
			if !b.unhealthy() {
				target = b
				break
			}
		}
		if target == nil && len(c.alive(now)) > 0 {
			return out, fmt.Errorf("%w: every live backup's health checks are down (effective priority 0)", ErrUnhealthyBackup)
		}
	}
	if target == nil {
		return out, ErrNoBackup
	}
	c.handOver(now, target, "switchover: asking the backup to take over", &out)
	return out, nil
}

// handOver starts a planned handover to b at now.
func (c *core) handOver(now time.Time, b *backupView, msg string, out *Output) {
	c.handoverTo, c.handoverStart = b.peer.FailoverID, now
	out.log(logrus.InfoLevel, msg, logrus.Fields{"backup": b.peer.Node, "backup_failover_id": b.peer.FailoverID})
	c.beat(now, out)
}

// heartbeat is a valid message on the heartbeat channel.
func (c *core) heartbeat(now time.Time, env protocol.Envelope, _ []byte) Output {
	var out Output
	if c.ended || c.echo(env) {
		return out
	}
	c.received++
	if c.clone(env, &out) {
		return out // a clone's verdict
	}
	if t := token(env); higher(t, c.cfg.Token) {
		c.fence(&out, t, env.Node, env.Advertise, fmt.Sprintf("server %s heartbeats as primary %s", env.Node, above(t, c.cfg.Token)))
		return out
	}
	if env.Role == "primary" {
		out.log(logrus.ErrorLevel, "another server heartbeats as primary with a token not above ours; ignoring it",
			logrus.Fields{"other_node": env.Node, "other_failover_id": env.FailoverID, "other_epoch": env.Epoch})
	}
	return out
}

// reply is a valid message on the reply channel (a backup's answer).
func (c *core) reply(now time.Time, env protocol.Envelope, _ []byte) Output {
	var out Output
	if c.ended || c.echo(env) {
		return out
	}
	c.received++
	if c.clone(env, &out) {
		return out // a clone's verdict
	}
	if t := token(env); higher(t, c.cfg.Token) && env.Role != "backup" {
		c.fence(&out, t, env.Node, env.Advertise, fmt.Sprintf("server %s replies %s", env.Node, above(t, c.cfg.Token)))
		return out
	}
	if env.Stopping {
		delete(c.backups, env.FailoverID)
		if len(c.alive(now)) > 0 {
			out.log(logrus.WarnLevel, fmt.Sprintf("backup %s stopped (a clean stop)", env.Node), nil)
			c.pickBest(now, &out)
			return out
		}
		// A clean stop of the last backup: nobody watches us from now on.
		c.lastReply, c.backupConfigured = time.Time{}, false
		c.backupStopped = fmt.Sprintf("backup %s stopped (a clean stop) at %s: automatic failover is off until a backup replies", env.Node, now.Format(time.RFC3339))
		out.log(logrus.WarnLevel, c.backupStopped, nil)
		c.updateWarnings(now, &out)
		return out
	}
	if !c.freshReply(env) {
		// A replay of an older reply of this backup (its process started
		// earlier, or it sent this before the last one we took): it says
		// nothing about the backup now. Taking its nonce would make our
		// heartbeats echo a stale one, which the live backup does not
		// count (a stranger replaying replies would cause a failover).
		return out
	}
	c.backupStopped = ""
	if env.Nonce != "" {
		c.remember("backup:"+env.FailoverID+"/"+env.Instance, env.Nonce)
	}
	np := failoverid.Peer{Node: env.Node, FailoverID: env.FailoverID, Epoch: env.Epoch, Address: env.Advertise}
	c.lastReply, c.backupConfigured = now, true
	if c.backups == nil {
		c.backups = map[string]*backupView{}
	}
	b := c.backups[np.FailoverID]
	if b == nil {
		if len(c.backups) >= maxEchoes {
			c.dropStale(now)
		}
		if len(c.backups) >= maxEchoes {
			return out // bounded: a flood of made-up backups is not remembered
		}
		b = &backupView{}
		c.backups[np.FailoverID] = b
		out.log(logrus.InfoLevel, "backup replied: failover is enabled", logrus.Fields{"backup": np.Node, "backup_failover_id": np.FailoverID})
	}
	b.peer, b.lastReply, b.maint = np, now, env.Maintenance
	b.priority, b.effective = env.Priorities()
	b.heardSeq = env.HeardSeq
	c.pickBest(now, &out)
	if env.Preempt && c.handoverTo == "" {
		c.preempt(now, b, &out)
	}
	c.updateWarnings(now, &out)
	return out
}

// backupView is one backup of the group as its replies describe it.
type backupView struct {
	peer                failoverid.Peer
	lastReply           time.Time
	maint               bool
	priority, effective int
	heardSeq            uint64
}

func (b *backupView) eligible() bool { return b.priority > 0 && b.effective > 0 && !b.maint }

// unhealthy: its checks are down (a manual backup, priority 0, reports
// effective 0 whatever its checks say, and may still be handed the role).
func (b *backupView) unhealthy() bool { return b.priority > 0 && b.effective == 0 }

// alive are the backups that replied within 2 × reply_period, best first:
// eligible before not, then by effective priority, the most recent
// heartbeat heard, the lowest failover id (the backups' own election order).
func (c *core) alive(now time.Time) []*backupView {
	var out []*backupView
	for _, b := range c.backups {
		if now.Sub(b.lastReply) <= 2*c.cfg.ReplyPeriod {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.eligible() != b.eligible() {
			return a.eligible()
		}
		if a.effective != b.effective {
			return a.effective > b.effective
		}
		if a.heardSeq != b.heardSeq {
			return a.heardSeq > b.heardSeq
		}
		return a.peer.FailoverID < b.peer.FailoverID
	})
	return out
}

// dropStale forgets backups not heard of for 2 × reply_period.
func (c *core) dropStale(now time.Time) {
	for id, b := range c.backups {
		if now.Sub(b.lastReply) > 2*c.cfg.ReplyPeriod {
			delete(c.backups, id)
		}
	}
}

// pickBest makes the best live backup the peer (remembered in state.json
// through Output.Peer) and keeps the maintenance view: failover is paused
// only when every live backup is in maintenance.
func (c *core) pickBest(now time.Time, out *Output) {
	bs := c.alive(now)
	if len(bs) == 0 {
		return
	}
	all := true
	for _, b := range bs {
		all = all && b.maint
	}
	c.backupMaint = all
	if bs[0].peer != c.peer {
		c.peer = bs[0].peer
		p := c.peer
		out.Peer = &p
	}
}

// healthy is the best live backup an automatic handover may go to: eligible
// and not the server that just handed us the role.
func (c *core) healthy(now time.Time) *backupView {
	for _, b := range c.alive(now) {
		if b.eligible() && b.peer.FailoverID != c.cfg.GaveUp {
			return b
		}
	}
	return nil
}

// preempt: backup b asks for the role (preempt: true there). It gets it if
// it is healthier than this primary and did not just give the role up.
func (c *core) preempt(now time.Time, b *backupView, out *Output) {
	switch {
	case !b.eligible() || b.effective <= c.effective:
		out.log(logrus.InfoLevel, "preempt request refused: the backup is not healthier than this primary", logrus.Fields{"backup": b.peer.Node, "backup_effective": b.effective, "effective": c.effective})
	case b.peer.FailoverID == c.cfg.GaveUp:
		out.log(logrus.InfoLevel, "preempt request refused: that backup handed this primary the role (no ping-pong)", logrus.Fields{"backup": b.peer.Node})
	default:
		c.handOver(now, b, "preempt: handing over to a healthier, higher-priority backup", out)
	}
}

// health is this server's effective priority changing at now. At 0 (its
// checks down) it hands over to the best healthy backup; with none it
// stays primary and warns.
func (c *core) health(now time.Time, effective int) Output {
	var out Output
	if c.ended {
		return out
	}
	c.effective, c.healthKnown = effective, true
	c.checkHealth(now, &out)
	return out
}

func (c *core) checkHealth(now time.Time, out *Output) {
	if c.effective > 0 || !c.healthKnown {
		c.unhealthy = ""
		return
	}
	if c.handoverTo != "" {
		return
	}
	if b := c.healthy(now); b != nil {
		c.unhealthy = ""
		c.handOver(now, b, "effective priority 0 (health checks down): handing over to the best healthy backup", out)
		return
	}
	if c.unhealthy == "" {
		c.unhealthy = "effective priority 0 (health checks down) and no healthy backup to hand over to: staying primary"
		out.log(logrus.WarnLevel, c.unhealthy, nil)
	}
}

// members lists the live backups for the heartbeat's body.
func (c *core) members(now time.Time) []protocol.Member {
	bs := c.alive(now)
	if len(bs) == 0 {
		return nil
	}
	ms := make([]protocol.Member, 0, len(bs))
	for _, b := range bs {
		ms = append(ms, protocol.Member{Node: b.peer.Node, FailoverID: b.peer.FailoverID, Address: b.peer.Address,
			Priority: b.priority, Effective: b.effective, Maintenance: b.maint, HeardSeq: b.heardSeq,
			LastReplyAgeMS: now.Sub(b.lastReply).Milliseconds()})
	}
	return ms
}

// agentReport is the part of an agent's status body the registry keeps.
type agentReport struct {
	Path      string `json:"path"`
	Accepted  uint64 `json:"accepted"`
	Rejected  uint64 `json:"rejected"`
	FileError string `json:"file_error"`
}

// maxAgents bounds the registry against a flood of made-up agent ids.
const maxAgents = 100000

// maxTamperWarned bounds the agents whose tampered reports are remembered
// (past it, each such report is a warning again).
const maxTamperWarned = 4096

// agentStatus is a valid agent status report with its body. trusted says
// whether the token it reports carries a server's signature (the
// failover_sig of the agent's file, checked by the driver): only a trusted
// higher token fences; an untrusted one is a tampered report.
func (c *core) agentStatus(now time.Time, env protocol.Envelope, body []byte, trusted bool) Output {
	var out Output
	if c.ended {
		return out
	}
	c.received++
	if t := token(env); higher(t, c.cfg.Token) {
		if !trusted {
			c.tampered++
			level := logrus.WarnLevel
			if c.tamperWarned[env.Node] == t {
				level = logrus.DebugLevel // said once per agent and token
			} else if len(c.tamperWarned) < maxTamperWarned {
				if c.tamperWarned == nil {
					c.tamperWarned = map[string]failoverid.Token{}
				}
				c.tamperWarned[env.Node] = t
			}
			out.Logs = append(out.Logs, LogLine{Level: level, Msg: fmt.Sprintf("agent %s reports a token %s without a valid server signature: ignored (tampered file or forged report)", env.Node, above(t, c.cfg.Token))})
			return out
		}
		c.fence(&out, t, "", "", fmt.Sprintf("agent %s is bound %s", env.Node, above(t, c.cfg.Token)))
		return out
	}
	var rep agentReport
	_ = json.Unmarshal(body, &rep) // a malformed body still counts as a sighting
	if c.agents == nil {
		c.agents = map[string]*AgentView{}
	}
	if t := token(env); env.FailoverID == "none" || t.Compare(c.cfg.Token) < 0 {
		// Behind us (new, or down during the takeover): rebind it with the
		// next ping.
		c.rebindDue = true
	} else if prev, known := c.agents[env.Node]; (!known || prev.Epoch != env.Epoch || prev.FailoverID != env.FailoverID) && c.cfg.Ping && c.handoverTo == "" {
		// An agent that just bound to us (it reports when it connects):
		// ping at once rather than at the next period, so it is obeying
		// this server within milliseconds of a takeover. Bounded: one such
		// ping per pingGap, whatever the size of the fleet.
		if now.Sub(c.lastPing) >= c.pingGap() {
			c.ping(now, &out)
		}
	}
	if _, ok := c.agents[env.Node]; !ok && len(c.agents) >= maxAgents {
		return out
	}
	if len(rep.Path) > 1024 {
		rep.Path = ""
	}
	if len(rep.FileError) > maxFileError {
		rep.FileError = rep.FileError[:maxFileError] + "…"
	}
	c.agents[env.Node] = &AgentView{ID: env.Node, Path: rep.Path, FailoverID: env.FailoverID, Epoch: env.Epoch,
		Accepted: rep.Accepted, Rejected: rep.Rejected, FileError: rep.FileError, LastSeen: now}
	return out
}

// echo: a message of our own process (not a clone's).
func (c *core) echo(env protocol.Envelope) bool {
	return env.FailoverID == c.cfg.Token.ID && !env.Clone(c.cfg.Token.ID, c.cfg.Instance)
}

func token(env protocol.Envelope) failoverid.Token {
	return failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}
}

// fence ends the role on a higher token: HandedOver if it is the backup we
// are handing over to, Fenced otherwise.
func (c *core) fence(out *Output, by failoverid.Token, node, adv, reason string) {
	c.ended = true
	if c.handoverTo != "" && by.ID == c.handoverTo {
		if b := c.backups[by.ID]; adv == "" && b != nil {
			// Learned from a file or an agent before the new primary's
			// heartbeat: its reply told us where it is.
			adv, node = b.peer.Address, b.peer.Node
		}
		out.log(logrus.InfoLevel, "switchover complete: the backup is primary now", logrus.Fields{"new_primary": node, "new_epoch": by.Epoch})
		out.End = &End{Kind: HandedOver, By: by, ByNode: node, ByAdvertise: adv, Reason: "switchover to " + node}
		return
	}
	out.log(logrus.WarnLevel, "fenced: "+reason, logrus.Fields{"by_failover_id": by.ID, "by_epoch": by.Epoch, "by_node": node})
	out.End = &End{Kind: Fenced, By: by, ByNode: node, ByAdvertise: adv, Reason: reason}
}

// clone handles a message from another process using our failover id (a
// cloned VM): the later-started of the two stops (End Duplicate), the
// earlier one warns. True: the message was a clone's.
func (c *core) clone(env protocol.Envelope, out *Output) bool {
	if !env.Clone(c.cfg.Token.ID, c.cfg.Instance) {
		return false
	}
	msg := fmt.Sprintf("duplicate failover_id %s: node %s (instance %s) uses it too; a cloned server must get its own id: stop it and run `tandem id --config FILE --regenerate` on the clone",
		env.FailoverID, env.Node, env.Instance)
	// Our heartbeats echo the clone's instance: a live clone then echoes
	// ours back, which a recorded message replayed later cannot do.
	c.remember("clone:"+env.Instance, env.Instance)
	if env.StartedBefore(c.cfg.StartedMS, c.cfg.Instance) && !env.Echoes(c.cfg.Instance) {
		// Not yet believed: one message, or a replay, never stops us.
		out.log(logrus.WarnLevel, msg+" — it says it started earlier; waiting for it to answer this process before believing it", nil)
		return true
	}
	if env.StartedBefore(c.cfg.StartedMS, c.cfg.Instance) {
		c.ended = true
		out.log(logrus.ErrorLevel, msg+" — this process started later and stops", nil)
		out.End = &End{Kind: Duplicate, Reason: msg, ByNode: env.Node}
		return true
	}
	for _, w := range c.warnings {
		if w == msg {
			return true
		}
	}
	out.log(logrus.ErrorLevel, msg, nil)
	c.dup = msg
	return true
}

// beat puts the next heartbeat (and ping) into out.
func (c *core) beat(now time.Time, out *Output) {
	c.seq++
	c.markBeat(c.seq, now)
	tok := c.cfg.Token
	out.Beat = &protocol.Envelope{FailoverID: tok.ID, Epoch: tok.Epoch, Node: c.cfg.Node, Seq: c.seq,
		Advertise: c.cfg.Advertise, PeriodMS: c.cfg.Period.Milliseconds(), Role: "primary",
		HandoverTo: c.handoverTo, Instance: c.cfg.Instance, StartedMS: c.cfg.StartedMS, Echo: c.echoValues(),
		HasPriority: true, Priority: c.cfg.Priority, Effective: c.effective}
	out.Members = c.members(now)
	// Agent commands go through the agents' broker: they do not depend on
	// the heartbeat channel (an external broker may be unreachable).
	if c.cfg.Ping && c.handoverTo == "" {
		out.Command = &protocol.Envelope{FailoverID: tok.ID, Epoch: tok.Epoch, Node: c.cfg.Node, Seq: c.seq, Role: "primary",
			FailoverServers: c.failoverServers()}
		if c.rebindLeft > 0 || c.rebindDue {
			if c.rebindLeft > 0 {
				c.rebindLeft--
			}
			c.rebindDue = false
			out.Rebind = &protocol.Envelope{FailoverID: tok.ID, Epoch: tok.Epoch, Node: c.cfg.Node, Seq: c.seq, Role: "primary",
				Command: protocol.CommandRebind, Advertise: c.cfg.Advertise}
		}
	}
}

func (c *core) startScan(out *Output) {
	if !c.cfg.Files {
		return
	}
	if c.scanning {
		c.rescan = true
		return
	}
	c.scanning = true
	c.gen++
	out.Scan = c.gen
}

func (c *core) backupAlive(now time.Time) bool {
	return !c.lastReply.IsZero() && now.Sub(c.lastReply) <= 2*c.cfg.ReplyPeriod
}

// updateWarnings keeps OpsCenter's "failover enabled" best-practice check:
// warn when no backup replied for 2 × reply_period.
func (c *core) updateWarnings(now time.Time, out *Output) {
	var w []string
	ref := c.lastReply
	if ref.IsZero() {
		ref = c.started
	}
	if c.backupStopped != "" {
		w = append(w, c.backupStopped)
	} else if now.Sub(ref) > 2*c.cfg.ReplyPeriod {
		c.backupConfigured = false
		if c.lastReply.IsZero() {
			w = append(w, fmt.Sprintf("no backup has replied since start (%s): automatic failover is not enabled", now.Sub(ref).Round(time.Second)))
		} else {
			w = append(w, fmt.Sprintf("no reply from backup for %s (more than 2 × reply_period): automatic failover may be broken", now.Sub(ref).Round(time.Second)))
		}
	}
	if len(w) > 0 && len(c.warnings) == 0 {
		out.log(logrus.WarnLevel, w[0], nil)
	}
	if c.dup != "" {
		w = append(w, c.dup)
	}
	if c.unhealthy != "" {
		w = append(w, c.unhealthy)
	}
	c.warnings = w
}

// status fills the core's part of a Status snapshot at now.
func (c *core) status(now time.Time, s *Status) {
	s.Epoch = c.cfg.Token.Epoch
	s.BackupConfigured = c.backupConfigured
	if c.peer.FailoverID != "" || !c.lastReply.IsZero() {
		p := c.peer
		s.Backup = &p
	}
	s.BackupMaintenance = c.backupMaint
	s.LastReplyAgeMS = -1
	if !c.lastReply.IsZero() {
		s.LastReplyAgeMS = now.Sub(c.lastReply).Milliseconds()
	}
	s.Handover = c.handoverTo
	s.Effective = c.effective
	for _, b := range c.alive(now) {
		s.Backups = append(s.Backups, BackupStatus{Node: b.peer.Node, FailoverID: b.peer.FailoverID, Address: b.peer.Address, Epoch: b.peer.Epoch,
			Priority: b.priority, Effective: b.effective, Maintenance: b.maint, LastReplyAgeMS: now.Sub(b.lastReply).Milliseconds()})
	}
	s.Received = c.received
	s.Tampered = c.tampered
	s.Warnings = append([]string(nil), c.warnings...)
}

// agentViews is the registry at now, sorted by id.
func (c *core) agentViews(now time.Time) []AgentView {
	out := make([]AgentView, 0, len(c.agents))
	for _, a := range c.agents {
		v := *a
		v.Connected = now.Sub(v.LastSeen) <= c.connectedWindow()
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
