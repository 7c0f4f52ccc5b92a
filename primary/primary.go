// Package primary is the primary role: it publishes heartbeats, listens for
// the backup's replies (is failover enabled?), and watches for any sign of a
// higher epoch — on the heartbeat channel, in an agent's status, or in the
// managed address.yaml files — upon which it stops at once (fenced).
//
// Run owns every goroutine it starts and returns when the role ends: the
// context is done, the node is fenced, or a planned switchover completed.
// After a fence it sends nothing more (invariant I5): every send happens on
// the Run goroutine, after the checks.
package primary

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
)

// Sentinel errors.
var (
	ErrNoBackup        = errors.New("primary: no backup has replied; nothing to hand over to")
	ErrNotRunning      = errors.New("primary: not running")
	ErrSwitchoverState = errors.New("primary: a switchover is already in progress")
	// ErrUnknownBackup: switchover --to names no live backup.
	ErrUnknownBackup = errors.New("primary: no such backup")
	// ErrUnhealthyBackup: the backup a switchover would go to has its
	// health checks down.
	ErrUnhealthyBackup = errors.New("primary: the backup is unhealthy")
)

// EndKind says why Run returned.
type EndKind int

const (
	Stopped    EndKind = iota // context done
	Fenced                    // a higher epoch exists
	HandedOver                // a planned switchover completed
	Duplicate                 // another, earlier process uses our failover id
	Deposed                   // the arbiter's term is over (and no failsafe holds)
)

func (k EndKind) String() string {
	return [...]string{"stopped", "fenced", "handed-over", "duplicate", "deposed"}[k]
}

// End is Run's result.
type End struct {
	Kind EndKind
	// By is the higher token that fenced us or took over.
	By failoverid.Token
	// ByNode and ByAdvertise describe the new primary (handover, or a fence
	// seen on the heartbeat channel).
	ByNode, ByAdvertise string
	Reason              string
}

// Config is what the primary role needs.
type Config struct {
	Node        string
	Token       failoverid.Token
	Advertise   string // host:port agents should use
	Period      time.Duration
	ReplyPeriod time.Duration
	// HandoverTimeout bounds a switchover: how long this primary waits for
	// the backup's higher epoch before it gives up and stays primary. It
	// must cover the backup's before_takeover hook and its rewrite of every
	// agent file (the server passes fail_window + hooks.timeout).
	HandoverTimeout time.Duration
	Dest            protocol.Destinations
	Signer          *protocol.Signer
	Clock           clock.Clock
	Log             logrus.FieldLogger
	// Instance and StartedMS identify this process (see protocol.Envelope):
	// they let two servers with one failover id (a cloned VM) be told apart.
	Instance  string
	StartedMS int64
	// SeqBase starts the heartbeat sequence; use a value that grows across
	// restarts (wall-clock milliseconds at start) so receivers can drop replays.
	SeqBase uint64
	// CheckFiles looks for a higher epoch in the managed address.yaml files.
	// It is called after the process woke late (it may have been frozen while
	// a backup took over) before anything else is sent, and every CheckEvery.
	// RebindPeriods: how many periods from the start a rebind goes out
	// (0: DefaultRebindPeriods; negative: none).
	RebindPeriods int
	CheckFiles    func() (*failoverid.Token, error)
	CheckEvery    time.Duration
	// OnPeer is called (from Run) when a backup's reply names a new or
	// changed peer, so the node can remember it in state.json.
	OnPeer func(failoverid.Peer)
	// Started, when set, is called (on the Run goroutine) once the first
	// heartbeat has been published.
	Started func()
	// Maintenance, when set, says whether heartbeats announce maintenance
	// mode (the backup then pauses automatic takeover).
	Maintenance func() bool
	// Alive, when set, is called on every tick of the loop (systemd watchdog).
	Alive func()
	// Sent, when set, is told of every heartbeat ("heartbeat") and command
	// ("command") published, on the Run goroutine (the event log).
	Sent func(kind string, env protocol.Envelope)
	// Ping sends a harmless sequenced command to the agents every period, so
	// that fencing can be observed end to end (agents count accepted and
	// rejected commands per failover id and epoch).
	Ping bool
	// Notify are extra buses, the previous primary's broker after a
	// takeover: with the embedded heartbeat channel (SecondPath unset)
	// each receives a copy of every heartbeat, so that a primary that
	// resumes from a freeze learns at once that it was replaced. Rebinds
	// go there too, for the agents still bound to that primary, and the
	// agents' reports there are heard as on the own broker (from the first
	// bus that can subscribe), whatever the heartbeat channel.
	Notify []broker.Bus
	// SecondPath: the heartbeat channel is an external broker; heartbeats
	// also go out on the agents' broker (this server's own), and replies
	// are read there too, so a backup tells the broker's outage from a
	// dead primary.
	SecondPath bool
	// Priority is this server's configured priority (see coreConfig);
	// GaveUp the primary that handed this one the role by a switchover.
	Priority int
	GaveUp   string
	// Term, when set, is the arbiter's term: nothing is sent unless it is
	// valid (or failsafe holds), checked before every send; the role ends
	// Deposed when neither holds.
	Term Term
	// Failsafe > 0: arbiter.failsafe (see the core); the grace is
	// fail_window less a margin.
	Failsafe time.Duration
	// OnHandover, when set, is called (on the Run goroutine) once the first
	// heartbeat of a planned handover to a backup is out: with an arbiter
	// the node resigns the election there, so the backup can win it. The
	// role then sends nothing more while the handover runs, and ends
	// Deposed if it times out (no failsafe after a resignation).
	OnHandover func(to string)
}

// Status is a snapshot for the admin API.
type Status struct {
	Epoch            uint64
	BackupConfigured bool
	Backup           *failoverid.Peer
	LastReplyAgeMS   int64 // -1: never
	// BackupMaintenance: the backup's last reply says maintenance is on
	// there (failover paused), so the primary can show it too.
	BackupMaintenance bool
	HeartbeatsSent    uint64
	CommandsSent      uint64
	Received          uint64 // valid messages from other servers and agents handled (own echoes not counted)
	Tampered          uint64 // agent reports of a higher token without a valid server signature
	RebindsSent       uint64 // rebinds published for agents on their own hosts
	// Failsafe: the arbiter's term is not valid and the primary acts on
	// because its backups vouch for it (arbiter.failsafe).
	Failsafe       bool
	Dropped        uint64 // messages dropped as malformed
	SignatureFails uint64 // messages dropped: unsigned or badly signed
	// AgentSignatureFails counts agents' status reports among them, and
	// LastBadAgent is the id the last one claimed (an agent whose
	// --secret-file differs from the servers' secret).
	AgentSignatureFails uint64
	LastBadAgent        string
	Handover            string // failover id of the backup being handed to
	Warnings            []string
	// Effective is this server's effective priority; Backups every live
	// backup of the group, best first.
	Effective int
	Backups   []BackupStatus
}

// BackupStatus is one backup of the group (status JSON "backups").
type BackupStatus struct {
	Node           string `json:"node"`
	FailoverID     string `json:"failover_id"`
	Address        string `json:"address,omitempty"`
	Epoch          uint64 `json:"epoch"`
	Priority       int    `json:"priority"`
	Effective      int    `json:"effective_priority"`
	Maintenance    bool   `json:"maintenance"`
	LastReplyAgeMS int64  `json:"last_reply_age_ms"`
}

// Role is a running primary: a thin driver around the pure core (core.go).
// It owns the subscriptions, the ticker and the scanning goroutine, feeds
// the core its inputs and carries out its outputs.
type Role struct {
	handedOff bool // OnHandover was called (Run goroutine only)
	cfg       Config
	hb        broker.Bus // heartbeat channel
	ag        broker.Bus // agents' channel (the embedded broker)

	switchReq chan switchReq
	health    chan int

	mu   sync.Mutex // guards core and the counters in st
	core *core
	st   Status // the driver's counters; the rest comes from core
}

// AgentView is what the primary knows of one agent from its status reports.
type AgentView struct {
	ID         string    `json:"id"`
	Path       string    `json:"path"`        // its address.yaml, as the agent reports it
	FailoverID string    `json:"failover_id"` // the token the agent is bound to
	Epoch      uint64    `json:"epoch"`
	Accepted   uint64    `json:"accepted"`
	Rejected   uint64    `json:"rejected"`
	FileError  string    `json:"file_error,omitempty"`
	LastSeen   time.Time `json:"last_seen"`
	Connected  bool      `json:"connected"` // reported within the connected window
}

// Agents returns the registry, sorted by id.
func (r *Role) Agents() []AgentView {
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.core.agentViews(now)
}

// ConnectedAgents counts agents that reported within the connected window.
func (r *Role) ConnectedAgents() int {
	n := 0
	for _, a := range r.Agents() {
		if a.Connected {
			n++
		}
	}
	return n
}

// New builds a primary role on a heartbeat bus and an agents bus (they may be
// the same bus).
func New(cfg Config, hb, agents broker.Bus) *Role {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	if cfg.CheckEvery == 0 {
		cfg.CheckEvery = 10 * cfg.Period
	}
	if cfg.RebindPeriods == 0 {
		cfg.RebindPeriods = DefaultRebindPeriods
	}
	if cfg.HandoverTimeout == 0 {
		cfg.HandoverTimeout = 6 * cfg.Period
	}
	c := newCore(coreConfig{Node: cfg.Node, Token: cfg.Token, Advertise: cfg.Advertise, Period: cfg.Period,
		ReplyPeriod: cfg.ReplyPeriod, HandoverTimeout: cfg.HandoverTimeout, CheckEvery: cfg.CheckEvery, RebindPeriods: max(cfg.RebindPeriods, 0),
		Files: cfg.CheckFiles != nil, Ping: cfg.Ping, Instance: cfg.Instance, StartedMS: cfg.StartedMS, SeqBase: cfg.SeqBase,
		Priority: cfg.Priority, GaveUp: cfg.GaveUp, Failsafe: cfg.Failsafe})
	return &Role{cfg: cfg, hb: hb, ag: agents, switchReq: make(chan switchReq), health: make(chan int, 1), core: c}
}

// Status returns a snapshot.
func (r *Role) Status() Status {
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.st
	r.core.status(now, &s)
	return s
}

type switchReq struct {
	to    string
	reply chan error
}

// SetEffective tells the role this server's effective priority (health
// checks); at 0 it hands over to the best healthy backup.
func (r *Role) SetEffective(eff int) {
	select {
	case r.health <- eff:
	default:
		select {
		case <-r.health:
		default:
		}
		r.health <- eff
	}
}

// Switchover asks the backup named to (node name or failover id; "": the
// best one) to take over now. It returns once the request is being sent;
// Run ends with HandedOver when the backup has taken over.
func (r *Role) Switchover(ctx context.Context, to string) error {
	reply := make(chan error, 1)
	select {
	case r.switchReq <- switchReq{to: to, reply: reply}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run is the role's loop; see the package doc. It feeds the core and does
// what the core says (do); every send happens here, after the core's checks.
func (r *Role) Run(ctx context.Context) (End, error) {
	dests := []string{r.cfg.Dest.Heartbeat, r.cfg.Dest.Reply, r.cfg.Dest.AgentStatus, r.cfg.Dest.Reply}
	agentStatus := func(c *core, now time.Time, env protocol.Envelope, body []byte) Output {
		return c.agentStatus(now, env, body, r.trusted(env))
	}
	handlers := []func(*core, time.Time, protocol.Envelope, []byte) Output{(*core).heartbeat, (*core).reply, agentStatus, (*core).reply}
	if !r.cfg.SecondPath {
		dests = dests[:3] // replies come on the heartbeat channel only
	}
	chans := make([]<-chan broker.Message, 4)
	for i, d := range dests {
		bus := r.hb
		if i >= 2 {
			bus = r.ag // agents' status, and the second path's replies
		}
		sub, err := bus.Subscribe(d)
		if err != nil {
			return End{}, fmt.Errorf("subscribe %s: %w", d, err)
		}
		defer sub.Close()
		chans[i] = sub.C()
	}
	// The agents' reports on the previous primary's broker too: an agent
	// still bound there that knows no other server (its file named no
	// failover_servers when that server was replaced, or it came up
	// afterwards) is heard here, and, behind this server's token, rebound
	// on that broker with the next heartbeat, however long after the
	// takeover it connects. A bus that cannot subscribe is only published
	// to. (One such bus: the replaced primary's.)
	var notifyStatus <-chan broker.Message
	for _, n := range r.cfg.Notify {
		sub, err := n.Subscribe(r.cfg.Dest.AgentStatus)
		if err != nil {
			r.cfg.Log.WithError(err).Debug("not listening for agents on the previous primary's broker")
			continue
		}
		defer sub.Close()
		notifyStatus = sub.C()
		break
	}
	ticker := r.cfg.Clock.NewTicker(r.cfg.Period)
	defer ticker.Stop()
	// Scans of the managed files run off the loop (they read many files);
	// the loop owns the scanning goroutine and waits for it on return.
	scans := make(chan scanResult, 1)
	var scanWG sync.WaitGroup
	defer scanWG.Wait()
	do := func(out Output) (End, bool) {
		for _, l := range out.Logs {
			r.cfg.Log.WithFields(l.Fields).Log(l.Level, l.Msg)
		}
		if out.End != nil {
			return *out.End, true
		}
		if out.Beat != nil || out.Command != nil || out.Rebind != nil {
			switch end, g := r.gate(); g {
			case gateEnd:
				return end, true
			case gateQuiet:
				out.Beat, out.Command, out.Rebind = nil, nil, nil
			}
		}
		if out.Peer != nil && r.cfg.OnPeer != nil {
			r.cfg.OnPeer(*out.Peer)
		}
		if out.Scan > 0 {
			scanWG.Add(1)
			go func(gen int) {
				defer scanWG.Done()
				t, err := r.cfg.CheckFiles()
				scans <- scanResult{higher: t, err: err, gen: gen} // buffered, one scan at a time: never blocks
			}(out.Scan)
		}
		r.publish(ctx, out.Beat, out.Members, out.Command)
		r.rebind(ctx, out.Rebind)
		if out.Beat != nil && out.Beat.HandoverTo != "" && !r.handedOff && r.cfg.OnHandover != nil {
			r.handedOff = true
			r.cfg.OnHandover(out.Beat.HandoverTo)
		}
		return End{}, false
	}

	// A fresh role checks before its first heartbeat, then beats at once.
	var first *scanResult
	if r.cfg.CheckFiles != nil {
		t, err := r.cfg.CheckFiles()
		first = &scanResult{higher: t, err: err}
	}
	if end, done := do(r.step(func(c *core, now time.Time) Output { return c.start(now, first) })); done {
		return end, nil
	}
	if r.cfg.Started != nil {
		r.cfg.Started()
	}
	var lost <-chan struct{}
	if r.cfg.Term != nil {
		lost = r.cfg.Term.Lost()
	}
	for {
		var out Output
		select {
		case <-ctx.Done():
			return End{Kind: Stopped}, nil
		case <-lost:
			// The term is over: end now, unless failsafe holds (then every
			// send checks again; a term won back is watched from the next
			// tick).
			lost = nil
			if end, g := r.gate(); g == gateEnd {
				return end, nil
			}
			continue
		case req := <-r.switchReq:
			var err error
			do(r.step(func(c *core, now time.Time) (o Output) { o, err = c.switchover(now, req.to); return o }))
			req.reply <- err
			continue
		case eff := <-r.health:
			out = r.step(func(c *core, now time.Time) Output { return c.health(now, eff) })
		case <-ticker.C():
			if r.cfg.Alive != nil {
				r.cfg.Alive()
			}
			if lost == nil && r.cfg.Term != nil && r.cfg.Term.Valid() {
				lost = r.cfg.Term.Lost()
			}
			out = r.step((*core).tick)
		case res := <-scans:
			out = r.step(func(c *core, now time.Time) Output { return c.scanDone(now, res) })
		case m, ok := <-chans[0]:
			out, chans[0] = r.message(m, ok, chans[0], handlers[0])
		case m, ok := <-chans[1]:
			out, chans[1] = r.message(m, ok, chans[1], handlers[1])
		case m, ok := <-chans[2]:
			out, chans[2] = r.message(m, ok, chans[2], handlers[2])
		case m, ok := <-chans[3]:
			out, chans[3] = r.message(m, ok, chans[3], handlers[3])
		case m, ok := <-notifyStatus:
			out, notifyStatus = r.message(m, ok, notifyStatus, agentStatus)
		}
		if end, done := do(out); done {
			return end, nil
		}
	}
}

// gateResult is what the arbiter's term lets the role do now.
type gateResult int

const (
	gateAct   gateResult = iota // send
	gateQuiet                   // send nothing, keep listening (a handover under way)
	gateEnd                     // the role is over: Deposed
)

// gate checks the arbiter's term before anything is sent: the role may act
// while the term is valid, or while failsafe holds; after it resigned for a
// handover it stays quiet while the handover runs; otherwise it ends.
func (r *Role) gate() (End, gateResult) {
	if r.cfg.Term == nil {
		return End{}, gateAct
	}
	if !r.handedOff && r.cfg.Term.Valid() {
		r.step(func(c *core, _ time.Time) Output {
			if c.failsafeSet != nil {
				r.cfg.Log.Warn("the arbiter's lease is fresh again: failsafe over")
			}
			c.termValid()
			r.st.Failsafe = false
			return Output{}
		})
		return End{}, gateAct
	}
	var why string
	entered, handingOver := false, false
	r.step(func(c *core, now time.Time) Output {
		handingOver = c.handoverTo != ""
		if r.handedOff {
			why = "it resigned the election for a handover"
			return Output{}
		}
		entered = c.failsafeSet == nil
		why = c.failsafe(now)
		r.st.Failsafe = why == ""
		return Output{}
	})
	switch {
	case why == "":
		if entered {
			r.cfg.Log.WithField("why", r.cfg.Term.Why()).Warn("FAILSAFE: the arbiter's lease is not fresh; acting on while every backup confirms this primary's heartbeats")
		}
		return End{}, gateAct
	case r.handedOff && handingOver:
		return End{}, gateQuiet
	}
	reason := nonEmpty(r.cfg.Term.Why(), "the lease was not renewed in time")
	return End{Kind: Deposed, Reason: fmt.Sprintf("the arbiter's term is over (%s); %s", reason, why)}, gateEnd
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// step runs one input through the core, under the lock that Status reads by.
func (r *Role) step(f func(*core, time.Time) Output) Output {
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	return f(r.core, now)
}

// message verifies and decodes one message and hands it to the core's
// handler h. A closed subscription is dropped from the loop (nil channel).
func (r *Role) message(m broker.Message, ok bool, ch <-chan broker.Message, h func(*core, time.Time, protocol.Envelope, []byte) Output) (Output, <-chan broker.Message) {
	if !ok {
		return Output{}, nil
	}
	env, err := r.decode(m)
	if err != nil {
		r.mu.Lock()
		if errors.Is(err, protocol.ErrUnsigned) || errors.Is(err, protocol.ErrBadSignature) {
			r.st.SignatureFails++
			if m.Destination == r.cfg.Dest.AgentStatus {
				// An agent without the group's secret, or with another one:
				// say which (its claimed id, bounded; not trusted).
				r.st.AgentSignatureFails++
				r.st.LastBadAgent = truncate(m.Headers[protocol.HNode], 128)
			}
		} else {
			r.st.Dropped++
		}
		r.mu.Unlock()
		r.cfg.Log.WithError(err).WithField("destination", m.Destination).Debug("dropped message")
		return Output{}, ch
	}
	return r.step(func(c *core, now time.Time) Output { return h(c, now, env, m.Body) }), ch
}

// publish sends a heartbeat (on the heartbeat channel and every Notify bus)
// and an agent command (on the agents' broker), stamped at send time.
func (r *Role) publish(ctx context.Context, beat *protocol.Envelope, members []protocol.Member, cmd *protocol.Envelope) {
	if beat != nil {
		r.publishBeat(ctx, *beat, protocol.EncodeMembers(members))
	}
	if cmd == nil {
		return
	}
	ch := cmd.Headers()
	body := []byte(`{"command":"ping"}`)
	r.cfg.Signer.Sign(r.cfg.Dest.AgentCommand, ch, body)
	pctx, cancel := context.WithTimeout(ctx, r.cfg.Period)
	defer cancel()
	if err := r.ag.Publish(pctx, r.cfg.Dest.AgentCommand, ch, body); err == nil {
		r.count(&r.st.CommandsSent)
		if r.cfg.Sent != nil {
			r.cfg.Sent("command", *cmd)
		}
	}
}

// publishBeat sends one heartbeat on the heartbeat channel and every
// Notify bus, stamped at send time.
func (r *Role) publishBeat(ctx context.Context, env protocol.Envelope, body []byte) {
	env.SentMS = time.Now().UnixMilli()
	if r.cfg.Maintenance != nil {
		env.Maintenance = r.cfg.Maintenance()
	}
	h := env.Headers()
	r.cfg.Signer.Sign(r.cfg.Dest.Heartbeat, h, body)
	pctx, cancel := context.WithTimeout(ctx, r.cfg.Period)
	defer cancel()
	err := r.hb.Publish(pctx, r.cfg.Dest.Heartbeat, h, body)
	if r.cfg.SecondPath {
		_ = r.ag.Publish(pctx, r.cfg.Dest.Heartbeat, h, body) // best effort: the backups' second path
	}
	if !r.cfg.SecondPath {
		// With an external heartbeat channel the replaced primary hears
		// it there: its broker gets the rebinds, not heartbeats.
		for _, n := range r.cfg.Notify {
			_ = n.Publish(pctx, r.cfg.Dest.Heartbeat, h, body) // best effort
		}
	}
	if err != nil {
		r.cfg.Log.WithError(err).Debug("heartbeat not sent")
		return
	}
	r.count(&r.st.HeartbeatsSent)
	if r.cfg.Sent != nil {
		r.cfg.Sent("heartbeat", env)
	}
}

func (r *Role) count(n *uint64) {
	r.mu.Lock()
	*n++
	r.mu.Unlock()
}

// rebind publishes a rebind on the agents' broker: the envelope the core
// made, with the failover-sig agents write into their address.yaml, signed
// with the group key. Without a group key there is nothing an agent would
// accept, and nothing is sent.
func (r *Role) rebind(ctx context.Context, env *protocol.Envelope) {
	if env == nil {
		return
	}
	host, portS, err := net.SplitHostPort(env.Advertise)
	port, perr := strconv.Atoi(portS)
	if err != nil || perr != nil {
		return
	}
	e := *env
	if e.FailoverSig = r.cfg.Signer.TokenSig(e.FailoverID, e.Epoch, host, port); e.FailoverSig == "" {
		return
	}
	e.SentMS = time.Now().UnixMilli()
	h := e.Headers()
	body := []byte(`{"command":"rebind"}`)
	r.cfg.Signer.Sign(r.cfg.Dest.AgentCommand, h, body)
	pctx, cancel := context.WithTimeout(ctx, r.cfg.Period)
	defer cancel()
	if err := r.ag.Publish(pctx, r.cfg.Dest.AgentCommand, h, body); err == nil {
		r.count(&r.st.RebindsSent)
		if r.cfg.Sent != nil {
			r.cfg.Sent("rebind", e)
		}
	}
	// The previous primary's broker too (best effort; a link that is down
	// fails at once): an agent still bound there that never learned this
	// server — its file named no failover_servers yet when the takeover
	// came, so it holds no standby link here — gets the rebind on its
	// bound link. Without it such an agent would stay bound to a fenced
	// server, which sends it nothing, for good.
	for _, n := range r.cfg.Notify {
		_ = n.Publish(pctx, r.cfg.Dest.AgentCommand, h, body)
	}
}

// trusted reports whether an agent's reported token is a server's word: the
// failover_sig it forwards verifies with the group key over the token and
// the address it is bound to. Without a group key (insecure) every report
// is trusted, as before the key existed.
func (r *Role) trusted(env protocol.Envelope) bool {
	if !r.cfg.Signer.Secure() {
		return true
	}
	host, portS, err := net.SplitHostPort(env.Bound)
	if err != nil {
		return false
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return false
	}
	return r.cfg.Signer.VerifyTokenSig(env.FailoverSig, env.FailoverID, env.Epoch, host, port) == nil
}

func (r *Role) decode(m broker.Message) (protocol.Envelope, error) {
	if err := r.cfg.Signer.Verify(m.Destination, m.Headers, m.Body); err != nil {
		return protocol.Envelope{}, err
	}
	return protocol.Decode(m.Headers)
}

// DefaultRebindPeriods is how many periods from the start of the primary
// role a rebind goes out with every ping.
const DefaultRebindPeriods = 10

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
