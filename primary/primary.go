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
	"encoding/json"
	"errors"
	"fmt"
	"sort"
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
)

// EndKind says why Run returned.
type EndKind int

const (
	Stopped    EndKind = iota // context done
	Fenced                    // a higher epoch exists
	HandedOver                // a planned switchover completed
	Duplicate                 // another, earlier process uses our failover id
)

func (k EndKind) String() string {
	return [...]string{"stopped", "fenced", "handed-over", "duplicate"}[k]
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
	CheckFiles func() (*failoverid.Token, error)
	CheckEvery time.Duration
	// OnPeer is called (from Run) when a backup's reply names a new or
	// changed peer, so the node can remember it in state.json.
	OnPeer func(failoverid.Peer)
	// Started, when set, is called (on the Run goroutine) once the first
	// heartbeat has been published.
	Started func()
	// Tick, when set, runs on every period on the Run goroutine while the
	// role is healthy (used to retry failed agent rewrites).
	Tick func()
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
	// Notify are extra buses that receive a copy of every heartbeat: the
	// previous primary's broker after a takeover, so that a primary that
	// resumes from a freeze learns at once that it was replaced.
	Notify []broker.Bus
}

// Status is a snapshot for the admin API.
type Status struct {
	Epoch            uint64
	BackupConfigured bool
	Backup           *failoverid.Peer
	LastReplyAgeMS   int64 // -1: never
	HeartbeatsSent   uint64
	CommandsSent     uint64
	Dropped          uint64 // messages dropped as malformed
	SignatureFails   uint64 // messages dropped: unsigned or badly signed
	Handover         string // failover id of the backup being handed to
	Warnings         []string
}

// Role is a running primary.
type Role struct {
	cfg Config
	hb  broker.Bus // heartbeat channel
	ag  broker.Bus // agents' channel (the embedded broker)

	switchReq chan chan error

	mu        sync.Mutex
	st        Status
	lastReply time.Time
	started   time.Time
	agents    map[string]*AgentView
	dup       string // duplicate failover id warning, if any
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
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Clock.Now()
	out := make([]AgentView, 0, len(r.agents))
	for _, a := range r.agents {
		v := *a
		v.Connected = now.Sub(v.LastSeen) <= r.connectedWindow()
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// connectedWindow: an agent counts as connected if it reported within
// 3 periods, and at least 3 s (agents report at their own pace).
func (r *Role) connectedWindow() time.Duration {
	w := 3 * r.cfg.Period
	if w < 3*time.Second {
		w = 3 * time.Second
	}
	return w
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

// agentReport is the part of an agent's status body the registry keeps.
type agentReport struct {
	Path      string `json:"path"`
	Accepted  uint64 `json:"accepted"`
	Rejected  uint64 `json:"rejected"`
	FileError string `json:"file_error"`
}

func (r *Role) record(env protocol.Envelope, body []byte) {
	var rep agentReport
	_ = json.Unmarshal(body, &rep) // a malformed body still counts as a sighting
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.agents == nil {
		r.agents = map[string]*AgentView{}
	}
	if _, ok := r.agents[env.Node]; !ok && len(r.agents) >= maxAgents {
		return
	}
	if len(rep.Path) > 4096 {
		rep.Path = ""
	}
	r.agents[env.Node] = &AgentView{ID: env.Node, Path: rep.Path, FailoverID: env.FailoverID, Epoch: env.Epoch,
		Accepted: rep.Accepted, Rejected: rep.Rejected, FileError: rep.FileError, LastSeen: r.cfg.Clock.Now()}
}

// maxAgents bounds the registry against a flood of made-up agent ids.
const maxAgents = 100000

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
	if cfg.HandoverTimeout == 0 {
		cfg.HandoverTimeout = 6 * cfg.Period
	}
	return &Role{cfg: cfg, hb: hb, ag: agents, switchReq: make(chan chan error)}
}

// Status returns a snapshot.
func (r *Role) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.st
	s.Epoch = r.cfg.Token.Epoch
	s.LastReplyAgeMS = -1
	if !r.lastReply.IsZero() {
		s.LastReplyAgeMS = r.cfg.Clock.Now().Sub(r.lastReply).Milliseconds()
	}
	s.Warnings = append([]string(nil), r.st.Warnings...)
	return s
}

// Switchover asks the backup to take over now. It returns once the request
// is being sent; Run ends with HandedOver when the backup has taken over.
func (r *Role) Switchover(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case r.switchReq <- reply:
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

// stallThreshold: a tick more than half a period late means the process may
// have been frozen while a backup took over, so it looks before it speaks.
// The check is cheap next to the cost of a stale heartbeat.
func (r *Role) stallThreshold() time.Duration {
	return r.cfg.Period + r.cfg.Period/2
}

// Run is the role's loop; see the package doc.
func (r *Role) Run(ctx context.Context) (End, error) {
	log := r.cfg.Log
	subs := []struct {
		bus  broker.Bus
		dest string
	}{{r.hb, r.cfg.Dest.Heartbeat}, {r.hb, r.cfg.Dest.Reply}, {r.ag, r.cfg.Dest.AgentStatus}}
	chans := make([]<-chan broker.Message, len(subs))
	for i, s := range subs {
		sub, err := s.bus.Subscribe(s.dest)
		if err != nil {
			return End{}, fmt.Errorf("subscribe %s: %w", s.dest, err)
		}
		defer sub.Close()
		chans[i] = sub.C()
	}

	now := r.cfg.Clock.Now()
	r.mu.Lock()
	r.started = now
	r.mu.Unlock()
	seq := r.cfg.SeqBase
	var handoverTo string
	var handoverStart time.Time
	var handoverReply chan error
	lastBeat := now
	lastCheck := now
	var peer failoverid.Peer

	ticker := r.cfg.Clock.NewTicker(r.cfg.Period)
	defer ticker.Stop()

	fence := func(by failoverid.Token, node, adv, reason string) (End, error) {
		if handoverTo != "" && by.ID == handoverTo {
			if adv == "" && by.ID == peer.FailoverID {
				// Learned from a file or an agent before the new primary's
				// heartbeat: its reply told us where it is.
				adv, node = peer.Address, peer.Node
			}
			log.WithFields(logrus.Fields{"new_primary": node, "new_epoch": by.Epoch}).Info("switchover complete: the backup is primary now")
			return End{Kind: HandedOver, By: by, ByNode: node, ByAdvertise: adv, Reason: "switchover to " + node}, nil
		}
		log.WithFields(logrus.Fields{"by_failover_id": by.ID, "by_epoch": by.Epoch, "by_node": node}).Warn("fenced: " + reason)
		return End{Kind: Fenced, By: by, ByNode: node, ByAdvertise: adv, Reason: reason}, nil
	}
	// Scans of the managed files run off the loop (they read many files);
	// the loop owns the scanning goroutine and waits for it on return.
	type scanResult struct {
		higher *failoverid.Token
		gen    int
	}
	scans := make(chan scanResult, 1)
	var scanWG sync.WaitGroup
	defer scanWG.Wait()
	scanning, rescan := false, false
	gen, holdUntil := 0, -1 // holdUntil: no heartbeat until scan gen >= this completes
	startScan := func() {
		if r.cfg.CheckFiles == nil {
			return
		}
		if scanning {
			rescan = true
			return
		}
		scanning = true
		gen++
		g := gen
		scanWG.Add(1)
		go func() {
			defer scanWG.Done()
			t, err := r.cfg.CheckFiles()
			if err != nil {
				log.WithError(err).Warn("checking managed agent files for a higher epoch")
			}
			scans <- scanResult{t, g} // buffered, one scan at a time: never blocks
		}()
	}
	beat := func() {
		seq++
		env := protocol.Envelope{FailoverID: r.cfg.Token.ID, Epoch: r.cfg.Token.Epoch, Node: r.cfg.Node,
			Seq: seq, Advertise: r.cfg.Advertise, PeriodMS: r.cfg.Period.Milliseconds(), Role: "primary",
			SentMS: time.Now().UnixMilli(), HandoverTo: handoverTo, Instance: r.cfg.Instance, StartedMS: r.cfg.StartedMS}
		if r.cfg.Maintenance != nil {
			env.Maintenance = r.cfg.Maintenance()
		}
		h := env.Headers()
		r.cfg.Signer.Sign(r.cfg.Dest.Heartbeat, h, nil)
		pctx, cancel := context.WithTimeout(ctx, r.cfg.Period)
		err := r.hb.Publish(pctx, r.cfg.Dest.Heartbeat, h, nil)
		for _, n := range r.cfg.Notify {
			_ = n.Publish(pctx, r.cfg.Dest.Heartbeat, h, nil) // best effort
		}
		cancel()
		if err != nil {
			log.WithError(err).Debug("heartbeat not sent")
		} else {
			r.mu.Lock()
			r.st.HeartbeatsSent++
			r.mu.Unlock()
			if r.cfg.Sent != nil {
				r.cfg.Sent("heartbeat", env)
			}
		}
		// Agent commands go through the agents' broker: they do not depend
		// on the heartbeat channel (an external broker may be unreachable).
		if r.cfg.Ping && handoverTo == "" {
			cmd := protocol.Envelope{FailoverID: r.cfg.Token.ID, Epoch: r.cfg.Token.Epoch, Node: r.cfg.Node, Seq: seq, Role: "primary"}
			ch := cmd.Headers()
			body := []byte(`{"command":"ping"}`)
			r.cfg.Signer.Sign(r.cfg.Dest.AgentCommand, ch, body)
			pctx, cancel := context.WithTimeout(ctx, r.cfg.Period)
			if err := r.ag.Publish(pctx, r.cfg.Dest.AgentCommand, ch, body); err == nil {
				r.mu.Lock()
				r.st.CommandsSent++
				r.mu.Unlock()
				if r.cfg.Sent != nil {
					r.cfg.Sent("command", cmd)
				}
			}
			cancel()
		}
	}
	drop := func(err error, m broker.Message) {
		r.mu.Lock()
		if errors.Is(err, protocol.ErrUnsigned) || errors.Is(err, protocol.ErrBadSignature) {
			r.st.SignatureFails++
		} else {
			r.st.Dropped++
		}
		r.mu.Unlock()
		log.WithError(err).WithField("destination", m.Destination).Debug("dropped message")
	}

	// fromPeer decodes a heartbeat or reply from another server. skip: drop
	// it (malformed or badly signed: counted; or our own echo). stop: a
	// clone that started earlier uses our id, and we end with end.
	fromPeer := func(m broker.Message) (env protocol.Envelope, end End, stop, skip bool) {
		env, err := r.decode(m)
		if err != nil {
			drop(err, m)
			return env, End{}, false, true
		}
		if end, stop := r.clone(env); stop {
			return env, end, true, false
		}
		return env, End{}, false, env.FailoverID == r.cfg.Token.ID
	}

	// A fresh role checks before its first heartbeat, then beats at once.
	if r.cfg.CheckFiles != nil {
		if t, err := r.cfg.CheckFiles(); err != nil {
			log.WithError(err).Warn("checking managed agent files for a higher epoch")
		} else if t != nil && t.Epoch > r.cfg.Token.Epoch {
			return fence(*t, "", "", fmt.Sprintf("a managed address.yaml is at epoch %d, above ours (%d)", t.Epoch, r.cfg.Token.Epoch))
		}
	}
	beat()
	lastBeat = r.cfg.Clock.Now() // the start-up check's time is not lateness
	if r.cfg.Started != nil {
		r.cfg.Started()
	}
	var holdSince time.Time

	for {
		select {
		case <-ctx.Done():
			if handoverReply != nil {
				handoverReply <- ctx.Err()
			}
			return End{Kind: Stopped}, nil

		case reply := <-r.switchReq:
			switch {
			case handoverTo != "":
				reply <- ErrSwitchoverState
			case peer.FailoverID == "" || !r.backupConfigured(r.cfg.Clock.Now()):
				reply <- ErrNoBackup
			default:
				handoverTo = peer.FailoverID
				handoverStart = r.cfg.Clock.Now()
				r.mu.Lock()
				r.st.Handover = handoverTo
				r.mu.Unlock()
				log.WithFields(logrus.Fields{"backup": peer.Node, "backup_failover_id": peer.FailoverID}).Info("switchover: asking the backup to take over")
				beat()
				reply <- nil
			}

		case <-ticker.C():
			if r.cfg.Alive != nil {
				r.cfg.Alive()
			}
			now := r.cfg.Clock.Now()
			if late := now.Sub(lastBeat); late > r.stallThreshold() && r.cfg.CheckFiles != nil {
				// We may have been frozen while a backup took over: say
				// nothing until a scan started after waking has looked.
				log.Warn(fmt.Sprintf("primary woke %s late: checking for a higher epoch before sending anything", late.Round(time.Millisecond)))
				if scanning {
					rescan = true
					holdUntil = gen + 1
				} else {
					startScan()
					holdUntil = gen
				}
				holdSince = now
				lastCheck = now
			} else if now.Sub(lastCheck) >= r.cfg.CheckEvery {
				lastCheck = now
				startScan()
			}
			if holdUntil >= 0 {
				// Hold at most one period: a slow scan (many files, a busy
				// machine) must not silence a live primary past the backup's
				// window. A stale heartbeat is harmless (agents check the
				// epoch); a false failover is not. The scan's result still
				// fences us when it arrives.
				if now.Sub(holdSince) < r.cfg.Period {
					lastBeat = now
					continue
				}
				log.Warn("the epoch check is still running after a period: heartbeating meanwhile")
				holdUntil = -1
			}
			if handoverTo != "" && now.Sub(handoverStart) > r.cfg.HandoverTimeout {
				log.WithField("backup_failover_id", handoverTo).Warn("switchover: the backup did not take over in time; staying primary")
				handoverTo = ""
				r.mu.Lock()
				r.st.Handover = ""
				r.mu.Unlock()
			}
			lastBeat = now
			beat()
			r.updateWarnings(now)
			if r.cfg.Tick != nil {
				r.cfg.Tick()
			}

		case res := <-scans:
			scanning = false
			if res.higher != nil && res.higher.Epoch > r.cfg.Token.Epoch {
				return fence(*res.higher, "", "", fmt.Sprintf("a managed address.yaml is at epoch %d, above ours (%d)", res.higher.Epoch, r.cfg.Token.Epoch))
			}
			if holdUntil >= 0 && res.gen >= holdUntil {
				holdUntil = -1
				lastBeat = r.cfg.Clock.Now()
				beat()
			}
			if rescan {
				rescan = false
				startScan()
			}

		case m, ok := <-chans[0]: // heartbeats
			if !ok {
				chans[0] = nil
				continue
			}
			env, end, stop, skip := fromPeer(m)
			if stop {
				return end, nil
			}
			if skip {
				continue
			}
			if env.Epoch > r.cfg.Token.Epoch {
				return fence(failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}, env.Node, env.Advertise,
					fmt.Sprintf("server %s heartbeats as primary at epoch %d, above ours (%d)", env.Node, env.Epoch, r.cfg.Token.Epoch))
			}
			if env.Role == "primary" {
				log.WithFields(logrus.Fields{"other_node": env.Node, "other_failover_id": env.FailoverID, "other_epoch": env.Epoch}).
					Error("another server heartbeats as primary at an epoch not above ours; ignoring it")
			}

		case m, ok := <-chans[1]: // backup replies
			if !ok {
				chans[1] = nil
				continue
			}
			env, end, stop, skip := fromPeer(m)
			if stop {
				return end, nil
			}
			if skip {
				continue
			}
			if env.Epoch > r.cfg.Token.Epoch && env.Role != "backup" {
				return fence(failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}, env.Node, env.Advertise,
					fmt.Sprintf("server %s replies at epoch %d, above ours (%d)", env.Node, env.Epoch, r.cfg.Token.Epoch))
			}
			now := r.cfg.Clock.Now()
			np := failoverid.Peer{Node: env.Node, FailoverID: env.FailoverID, Epoch: env.Epoch, Address: env.Advertise}
			r.mu.Lock()
			r.lastReply = now
			r.st.BackupConfigured = true
			p := np
			r.st.Backup = &p
			r.mu.Unlock()
			if np != peer {
				if peer.FailoverID != np.FailoverID {
					log.WithFields(logrus.Fields{"backup": np.Node, "backup_failover_id": np.FailoverID}).Info("backup replied: failover is enabled")
				}
				peer = np
				if r.cfg.OnPeer != nil {
					r.cfg.OnPeer(np)
				}
			}
			r.updateWarnings(now)

		case m, ok := <-chans[2]: // agent status
			if !ok {
				chans[2] = nil
				continue
			}
			env, err := r.decode(m)
			if err != nil {
				drop(err, m)
				continue
			}
			if env.Epoch > r.cfg.Token.Epoch {
				return fence(failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}, "", "",
					fmt.Sprintf("agent %s is bound to epoch %d, above ours (%d)", env.Node, env.Epoch, r.cfg.Token.Epoch))
			}
			r.record(env, m.Body)
		}
	}
}

// clone handles a message from another process using our failover id (a
// cloned VM). The later-started of the two stops; the earlier one warns.
func (r *Role) clone(env protocol.Envelope) (End, bool) {
	if !env.Clone(r.cfg.Token.ID, r.cfg.Instance) {
		return End{}, false
	}
	msg := fmt.Sprintf("duplicate failover_id %s: node %s (instance %s) uses it too; a cloned server must get its own id: stop it and run `tandem id --config FILE --regenerate` on the clone",
		env.FailoverID, env.Node, env.Instance)
	if env.StartedBefore(r.cfg.StartedMS, r.cfg.Instance) {
		r.cfg.Log.Error(msg + " — this process started later and stops")
		return End{Kind: Duplicate, Reason: msg, ByNode: env.Node}, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.st.Warnings {
		if w == msg {
			return End{}, false
		}
	}
	r.cfg.Log.Error(msg)
	r.dup = msg
	return End{}, false
}

func (r *Role) decode(m broker.Message) (protocol.Envelope, error) {
	if err := r.cfg.Signer.Verify(m.Destination, m.Headers, m.Body); err != nil {
		return protocol.Envelope{}, err
	}
	return protocol.Decode(m.Headers)
}

func (r *Role) backupConfigured(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.lastReply.IsZero() && now.Sub(r.lastReply) <= 2*r.cfg.ReplyPeriod
}

// updateWarnings keeps OpsCenter's "failover enabled" best-practice check:
// warn when no backup replied for 2 × reply_period.
func (r *Role) updateWarnings(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var w []string
	ref := r.lastReply
	if ref.IsZero() {
		ref = r.started
	}
	if now.Sub(ref) > 2*r.cfg.ReplyPeriod {
		r.st.BackupConfigured = false
		if r.lastReply.IsZero() {
			w = append(w, fmt.Sprintf("no backup has replied since start (%s): automatic failover is not enabled", now.Sub(ref).Round(time.Second)))
		} else {
			w = append(w, fmt.Sprintf("no reply from backup for %s (more than 2 × reply_period): automatic failover may be broken", now.Sub(ref).Round(time.Second)))
		}
	}
	if len(w) > 0 && len(r.st.Warnings) == 0 {
		r.cfg.Log.Warn(w[0])
	}
	if r.dup != "" {
		w = append(w, r.dup)
	}
	r.st.Warnings = w
}
