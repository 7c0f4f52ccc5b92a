package agent

import (
	"context"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/protocol"
)

// Agents on their own hosts: no server can write their address.yaml, so a
// new primary reaches them over the bus with a signed rebind, and the agent
// rewrites its own file.
//
//   - The bound server's pings carry failover-servers (the group's other
//     servers); the agent keeps them in its file as failover_servers and
//     holds a standby subscription on agent-command at each of them (shared
//     per server in a Pool, like bound links). When a standby link
//     connects, the agent reports its status there once, so that server
//     sees its token and can rebind it if it is behind.
//   - A rebind (command: rebind) from any link is obeyed only when the
//     message carries the group's signature (--server-key), its
//     failover-sig covers its failover id, epoch and advertise address, its
//     token is above the file's, and its seq is above the last rebind
//     accepted from that token. The file is then compare-and-swapped
//     (agentcfg.CompareAndSwapWith: I2, I3), --on-rebind runs, and the agent
//     follows the file as after any rewrite.
//
// The rebind's checks that need no file (signatures) run where it arrives;
// the rest, the write and the hook run in a short-lived worker, so a rebind
// never delays the agent's reaction to its file.

// Protocol names of the rebind (to move into protocol/).
const (
	hCommand         = "command"          // "rebind"; a ping has none (or "ping")
	cmdRebind        = "rebind"           // the command header of a rebind
	hFailoverServers = "failover-servers" // a ping: HOST:PORT,HOST:PORT
	rolePrimary      = "primary"
)

// DefaultOnRebindTimeout bounds --on-rebind.
const DefaultOnRebindTimeout = 60 * time.Second

// maxRebindQueue bounds the verified rebinds waiting for the worker.
const maxRebindQueue = 16

func isRebind(m broker.Message) bool { return m.Headers[hCommand] == cmdRebind }

// rebinds is an agent's rebind state. Counters, lastReject, seqs and view
// are guarded by the agent's mu; the queue by qmu.
type rebinds struct {
	kick chan struct{} // a rewrite of the file (rebind, failover_servers) was tried

	acc, rej   uint64
	lastReject string
	seqs       map[failoverid.Token]uint64      // last seq accepted per token
	view       map[string]*standbyLink          // standby links, for Status
	noKey      atomic.Bool                      // "no --server-key" was logged
	writing    atomic.Bool                      // a rewrite of the file is under way (rewrite)
	applied    atomic.Pointer[failoverid.Token] // the token of the last rebind tried (applyRebind)

	qmu      sync.Mutex
	queue    []rebindReq
	applying failoverid.Token // the rebind the worker is applying (zero: none)
	servers  *serversReq      // a failover_servers write waiting
	busy     bool
	wg       sync.WaitGroup
}

// holdsLocked reports whether a rebind to tok, or to a higher token, is
// queued or being applied (qmu held).
func (r *rebinds) holdsLocked(tok failoverid.Token) bool {
	if r.applying.ID != "" && !tok.Above(r.applying) {
		return true
	}
	for _, q := range r.queue {
		if !tok.Above(q.tok) {
			return true
		}
	}
	return false
}

// pending reports whether a rebind waits for the file worker, or a
// rewrite of the file is under way (not its hook, which runs after it).
func (r *rebinds) pending() bool {
	if r.writing.Load() {
		return true
	}
	r.qmu.Lock()
	defer r.qmu.Unlock()
	return len(r.queue) > 0
}

func (r *rebinds) init() {
	r.kick = make(chan struct{}, 1)
	r.seqs = map[failoverid.Token]uint64{}
	r.view = map[string]*standbyLink{}
}

// rebindReq is a rebind whose signatures checked out.
type rebindReq struct {
	ctx  context.Context
	tok  failoverid.Token
	seq  uint64
	node string
	host string
	port int
	sig  string
	via  string // the link it came on
}

type serversReq struct {
	ctx  context.Context
	list []string
}

func (a *Agent) rejectRebind(level logrus.Level, fields func() logrus.Fields, reason string) {
	a.mu.Lock()
	a.rb.rej++
	a.rb.lastReject = reason
	a.mu.Unlock()
	if !logEnabled(a.cfg.Log, level) {
		return // a fleet rejects thousands of repeats: no fields built for nothing
	}
	f := fields()
	f["agent"] = a.cfg.ID
	a.cfg.Log.WithFields(f).Log(level, "rejected a rebind: "+reason)
}

// logEnabled reports whether log writes level (true when it cannot tell).
func logEnabled(log logrus.FieldLogger, level logrus.Level) bool {
	switch l := log.(type) {
	case *logrus.Logger:
		return l.IsLevelEnabled(level)
	case *logrus.Entry:
		return l.Logger.IsLevelEnabled(level)
	}
	return true
}

// fixed is fields already built.
func fixed(f logrus.Fields) func() logrus.Fields { return func() logrus.Fields { return f } }

// rebindFields are the log fields of a rebind (built only when logged).
func rebindFields(m broker.Message, via string) logrus.Fields {
	return logrus.Fields{"via": via, "from_node": m.Headers[protocol.HNode], "advertise": m.Headers[protocol.HAdvertise]}
}

// tokenSigKey names a rebind's failover_sig check: it depends on the
// message's headers and the group's public key only, so the agents of a
// pool share it (broker.Message.Memo).
type tokenSigKey struct{ signer *protocol.Signer }

// offerRebind checks what a rebind's signatures say and hands a valid one to
// the worker. It never blocks.
func (a *Agent) offerRebind(ctx context.Context, m broker.Message, via string) {
	lazy := func() logrus.Fields { return rebindFields(m, via) }
	if !a.cfg.Signer.Secure() {
		// Whoever reaches a broker could repoint an agent that cannot
		// check the group's signature.
		level := logrus.DebugLevel
		if !a.rb.noKey.Swap(true) {
			level = logrus.WarnLevel
		}
		a.rejectRebind(level, lazy, "no --server-key: this agent cannot verify a rebind and ignores every one")
		return
	}
	// The new primary repeats its rebind for a while: one not above the
	// token this agent already holds (its last good file) changes nothing,
	// and costs no signature check and no re-read of the file.
	if pre, err := decode(m); err == nil {
		t := failoverid.Token{ID: pre.FailoverID, Epoch: pre.Epoch}
		if !a.aboveHeld(t) {
			a.rejectRebind(logrus.DebugLevel, lazy, notNewer)
			return
		}
		// Nor does a repeat of a rebind the worker already holds (queued
		// or being applied): in a fleet's burst each agent would otherwise
		// queue every repeat and re-read its file for each.
		a.rb.qmu.Lock()
		covered := a.rb.holdsLocked(t)
		a.rb.qmu.Unlock()
		if covered {
			a.rejectRebind(logrus.DebugLevel, lazy, beingApplied)
			return
		}
	}
	f := rebindFields(m, via)
	if err := a.verify(m); err != nil {
		a.rejectRebind(logrus.WarnLevel, fixed(f), "message signature: "+err.Error())
		return
	}
	env, err := decode(m)
	if err != nil {
		a.rejectRebind(logrus.WarnLevel, fixed(f), err.Error())
		return
	}
	tok := failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}
	f["from"] = tok.String()
	if env.Role != rolePrimary {
		a.rejectRebind(logrus.WarnLevel, fixed(f), "role is "+strconv.Quote(env.Role)+", not primary")
		return
	}
	host, ps, err := net.SplitHostPort(env.Advertise)
	port, perr := strconv.Atoi(ps)
	u := agentcfg.Update{StompInterface: host, StompPort: port, FailoverID: env.FailoverID, Epoch: env.Epoch, FailoverSig: env.FailoverSig}
	if err != nil || perr != nil || u.Validate() != nil || env.Epoch == 0 {
		a.rejectRebind(logrus.WarnLevel, fixed(f), "advertise, failover-id or epoch is not a valid binding")
		return
	}
	if err := m.Memo.Do(tokenSigKey{a.cfg.Signer}, func() error {
		return a.cfg.Signer.VerifyTokenSig(env.FailoverSig, env.FailoverID, env.Epoch, host, port)
	}); err != nil {
		a.rejectRebind(logrus.WarnLevel, fixed(f), "failover-sig does not cover this failover id, epoch and address: "+err.Error())
		return
	}
	req := rebindReq{ctx: ctx, tok: tok, seq: env.Seq, node: env.Node, host: host, port: port, sig: env.FailoverSig, via: via}
	a.rb.qmu.Lock()
	if len(a.rb.queue) >= maxRebindQueue {
		a.rb.qmu.Unlock()
		a.rejectRebind(logrus.DebugLevel, fixed(f), "too many rebinds waiting")
		return
	}
	if a.rb.holdsLocked(tok) {
		a.rb.qmu.Unlock()
		a.rejectRebind(logrus.DebugLevel, fixed(f), beingApplied)
		return
	}
	a.rb.queue = append(a.rb.queue, req)
	a.startWorkerLocked()
	a.rb.qmu.Unlock()
}

// askServers hands a failover_servers write to the worker (replacing one
// still waiting).
func (a *Agent) askServers(ctx context.Context, list []string) {
	a.rb.qmu.Lock()
	a.rb.servers = &serversReq{ctx: ctx, list: list}
	a.startWorkerLocked()
	a.rb.qmu.Unlock()
}

func (a *Agent) startWorkerLocked() {
	if !a.rb.busy {
		a.rb.busy = true
		a.rb.wg.Add(1)
		a.cfg.Workers.Go(a.fileWorker)
	}
}

// fileWorker applies the waiting rebinds and failover_servers writes, one at
// a time, until none waits.
func (a *Agent) fileWorker() {
	defer a.rb.wg.Done()
	for {
		a.rb.qmu.Lock()
		var req *rebindReq
		srv := a.rb.servers
		if len(a.rb.queue) > 0 {
			r := a.rb.queue[0]
			a.rb.queue = a.rb.queue[1:]
			req, srv = &r, nil
			a.rb.applying = r.tok // in the same section: a repeat sees it queued or applying
		} else {
			a.rb.servers = nil
		}
		if req == nil && srv == nil {
			a.rb.busy = false
			a.rb.qmu.Unlock()
			return
		}
		a.rb.qmu.Unlock()
		if req != nil {
			a.applyRebind(*req)
			a.rb.qmu.Lock()
			a.rb.applying = failoverid.Token{}
			a.rb.qmu.Unlock()
		} else {
			a.writeServers(*srv)
		}
	}
}

func (a *Agent) writeServers(r serversReq) {
	if r.ctx.Err() != nil {
		return
	}
	res := a.rewrite(func(opt agentcfg.BatchOptions) agentcfg.Result {
		return agentcfg.SetFailoverServersWith(a.cfg.Path, r.list, opt)
	})
	log := a.cfg.Log.WithFields(logrus.Fields{"agent": a.cfg.ID, "failover_servers": agentcfg.FormatFailoverServers(r.list)})
	switch res.Outcome {
	case agentcfg.Rewritten:
		log.Log(a.perAgentLevel(), "wrote the group's servers (from the primary's ping) into address.yaml")
	case agentcfg.Unchanged:
	default:
		log.WithError(res.Err).Warn("could not write failover_servers into address.yaml (the standby links follow the ping anyway)")
	}
}

// rewrite runs one of the agent's own rewrites of its file (with the
// fleet's Flusher), then tells Run, whatever the outcome. While it is under
// way Run defers the file watch's events: the rename fires the watch before
// the rewrite has returned, and that echo of the agent's own write would be
// one more read and parse of the file. The kick that follows makes Run
// catch up: a file that is what the rewrite left (wrote) is not read again,
// anything else is.
func (a *Agent) rewrite(do func(agentcfg.BatchOptions) agentcfg.Result) agentcfg.Result {
	a.rb.writing.Store(true)
	res := do(agentcfg.BatchOptions{Flusher: a.cfg.Flusher})
	a.wrote(res)
	a.rb.writing.Store(false)
	a.kickRun()
	return res
}

// applyRebind does the checks that need the file, then the
// compare-and-swap and the hook.
func (a *Agent) applyRebind(r rebindReq) {
	if r.ctx.Err() != nil {
		return
	}
	f := logrus.Fields{"via": r.via, "from": r.tok.String(), "from_node": r.node, "seq": r.seq,
		"advertise": net.JoinHostPort(r.host, strconv.Itoa(r.port))}
	a.mu.Lock()
	last := a.rb.seqs[r.tok]
	a.mu.Unlock()
	if r.seq <= last {
		a.rejectRebind(logrus.InfoLevel, fixed(f), "replayed (its seq is not above the last rebind accepted from that token)")
		return
	}
	// The compare-and-swap reads the file under its lock and rewrites it
	// only if the rebind's token is above the file's (I2): no read before.
	// Run, kicked at its end, tells by applied that a file at this token
	// came from a rebind (set before: the kick may be taken at once).
	tok := r.tok
	a.rb.applied.Store(&tok)
	res := a.rewrite(func(opt agentcfg.BatchOptions) agentcfg.Result {
		return agentcfg.CompareAndSwapWith(a.cfg.Path, agentcfg.Update{StompInterface: r.host, StompPort: r.port,
			FailoverID: r.tok.ID, Epoch: r.tok.Epoch, FailoverSig: r.sig}, opt)
	})
	bound := failoverid.Token{ID: res.Before.FailoverID, Epoch: res.Before.FailoverEpoch}
	if res.Outcome == agentcfg.Rewritten || res.Outcome == agentcfg.Unchanged {
		f["bound"] = bound.String()
	}
	switch res.Outcome {
	case agentcfg.Rewritten:
	case agentcfg.Unchanged:
		level := logrus.InfoLevel
		if r.tok.Same(bound) {
			level = logrus.DebugLevel // the new primary repeating itself
		}
		a.rejectRebind(level, fixed(f), notNewer)
		return
	default:
		a.rejectRebind(logrus.WarnLevel, fixed(f), "address.yaml not rewritten: "+res.Outcome.String()+": "+errString(res.Err))
		return
	}
	a.mu.Lock()
	a.rb.acc++
	if _, ok := a.rb.seqs[r.tok]; !ok && len(a.rb.seqs) >= maxCounts {
		delete(a.rb.seqs, lowest(a.rb.seqs)) // it is below the file's token now
	}
	a.rb.seqs[r.tok] = r.seq
	a.mu.Unlock()
	if level := a.perAgentLevel(); logEnabled(a.cfg.Log, level) {
		f["agent"] = a.cfg.ID
		a.cfg.Log.WithFields(f).Log(level, "rebound: address.yaml now names the new primary")
	}
	noteRebound(a.cfg.Log, r.tok, r.node)
	if a.cfg.OnRebind != "" {
		env := []string{"TANDEM_AGENT_ID=" + a.cfg.ID, "TANDEM_AGENT_CONFIG=" + a.absPath, "TANDEM_FAILOVER_ID=" + r.tok.ID,
			"TANDEM_EPOCH=" + strconv.FormatUint(r.tok.Epoch, 10), "TANDEM_SERVER=" + net.JoinHostPort(r.host, strconv.Itoa(r.port))}
		_ = a.cfg.RunHook(r.ctx, "on_rebind", a.cfg.OnRebind, a.cfg.OnRebindTimeout, env, a.cfg.Log.WithField("agent", a.cfg.ID))
	}
}

// wrote takes what the agent's own rewrite put in its file as the last good
// read, with the identity of the file it renamed into place: Run follows it
// without reading the file again, and any later change of the file (a new
// inode, mtime or size) is still read when a command or tick comes.
func (a *Agent) wrote(res agentcfg.Result) {
	if res.Outcome != agentcfg.Rewritten || res.Written == nil {
		return
	}
	a.mu.Lock()
	a.good, a.goodStat, a.fileErr, a.ownWrite = res.After, idOf(res.Written), "", true
	a.checkedAt = a.cfg.Clock.Now()
	a.noteHeld(res.After)
	a.mu.Unlock()
}

// running counts the agents of this process in Run: more than one is a
// fleet (tandem agent --fleet).
var running atomic.Int64

// perAgentLevel is the level of the lines every agent logs for one event
// (a rebind, a reconnect): info for a lone agent, debug in a fleet, where a
// takeover would log thousands of them (noteRebound sums rebinds up).
func (a *Agent) perAgentLevel() logrus.Level {
	if running.Load() > 1 {
		return logrus.DebugLevel
	}
	return logrus.InfoLevel
}

// rebindSummaryQuiet is how long after a process's last rebind to a token
// its summary line is logged.
const rebindSummaryQuiet = 500 * time.Millisecond

// rebound sums up the rebinds of a fleet: one info line per new token
// ("rebound N agents"), once they have been quiet for rebindSummaryQuiet.
var rebound struct {
	mu    sync.Mutex
	tok   failoverid.Token
	node  string
	n     int
	first time.Time
	log   logrus.FieldLogger
	timer *time.Timer
}

// noteRebound counts one agent's rebind to tok (from node) in the fleet's
// summary; a lone agent logs its own line instead.
func noteRebound(log logrus.FieldLogger, tok failoverid.Token, node string) {
	if running.Load() <= 1 {
		return
	}
	s := &rebound
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n > 0 && s.tok != tok {
		flushReboundLocked()
	}
	if s.n == 0 {
		s.tok, s.node, s.first, s.log = tok, node, time.Now(), log
	}
	s.n++
	if s.timer == nil {
		s.timer = time.AfterFunc(rebindSummaryQuiet, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			flushReboundLocked()
		})
	} else {
		s.timer.Reset(rebindSummaryQuiet)
	}
}

func flushReboundLocked() {
	s := &rebound
	if s.n == 0 {
		return
	}
	s.log.WithFields(logrus.Fields{"agents": s.n, "from": s.tok.String(), "from_node": s.node,
		"over": time.Since(s.first).Round(time.Millisecond).String()}).Info("rebound: the agents' address.yaml files now name the new primary")
	s.n = 0
}

// kickRun tells Run that the agent rewrote its file, or tried to.
func (a *Agent) kickRun() {
	select {
	case a.rb.kick <- struct{}{}:
	default:
	}
}

func lowest(m map[failoverid.Token]uint64) failoverid.Token {
	var low failoverid.Token
	first := true
	for t := range m {
		if first || t.Compare(low) < 0 {
			low, first = t, false
		}
	}
	return low
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// standbys are one Run's standby links, owned by its loop.
type standbys struct {
	a     *Agent
	ctx   context.Context
	links map[string]*standbyLink // by target

	// ping is the bound server's last failover-servers (nil: none heard);
	// asked is the last value taken for the file. write, when set, is that
	// value, to be written at the next period tick (writeDue).
	ping     []string
	asked    *string
	write    *[]string
	badPing  string
	havePing bool
	// synced is what the links were last made for (sync): a tick whose
	// file and ping name the same servers changes nothing, and a fleet's
	// 10,000 agents tick every period.
	synced syncedFor
}

// syncedFor is the input of one sync.
type syncedFor struct {
	ok         bool
	bound      string
	ssl        bool
	file, ping []string
}

// standbyLink is one standby subscription, run by its own goroutine.
type standbyLink struct {
	key    string
	addr   agentcfg.Address
	cancel context.CancelFunc
	done   chan struct{}
	poke   chan struct{}
	up     atomic.Bool
}

// learn takes a ping's failover-servers: it reports whether the standby set
// may have changed, and takes a new value that differs from the file's for
// the file, written at the next period tick (writeDue).
func (s *standbys) learn(v string, addr agentcfg.Address) bool {
	list, err := agentcfg.ParseFailoverServers(v)
	if err != nil {
		if v != s.badPing {
			s.badPing = v
			s.a.cfg.Log.WithError(err).WithField("agent", s.a.cfg.ID).Warn("ignoring the bad failover-servers of a ping")
		}
		return false
	}
	canon := agentcfg.FormatFailoverServers(list)
	if s.asked != nil && *s.asked == canon {
		return false
	}
	s.asked = &canon
	changed := !s.havePing || !slices.Equal(list, s.ping)
	s.ping, s.havePing = list, true
	s.write = nil
	if !slices.Equal(list, addr.FailoverServers) {
		s.write = &list
	}
	return changed
}

// writeDue hands the failover_servers learned since the last tick to the
// file writer, unless the file (addr) already lists them. The standby
// links follow a ping at once; only the file waits for the tick, so that
// after a takeover a fleet's agents, bound at once, write their new
// servers spread over a period instead of in the same burst as their
// rebinds.
func (s *standbys) writeDue(addr agentcfg.Address) {
	if s.write == nil {
		return
	}
	list := *s.write
	s.write = nil
	if !slices.Equal(list, addr.FailoverServers) {
		s.a.askServers(s.ctx, list)
	}
}

// sync makes the standby links those of the file's failover_servers and the
// last ping's, except the bound server (bound: its target).
func (s *standbys) sync(addr agentcfg.Address, bound string) {
	if f := s.synced; f.ok && f.bound == bound && f.ssl == addr.UseSSL && slices.Equal(f.file, addr.FailoverServers) && slices.Equal(f.ping, s.ping) {
		return // the links are those already (one that ended is tick's)
	}
	// ping is never modified in place (learn replaces it); the file's
	// list is copied.
	s.synced = syncedFor{ok: true, bound: bound, ssl: addr.UseSSL, file: slices.Clone(addr.FailoverServers), ping: s.ping}
	want := map[string]agentcfg.Address{}
	for _, hp := range append(slices.Clone(addr.FailoverServers), s.ping...) {
		host, ps, err := net.SplitHostPort(hp)
		if err != nil {
			continue
		}
		port, _ := strconv.Atoi(ps)
		sa := agentcfg.Address{StompInterface: host, StompPort: port, UseSSL: addr.UseSSL}
		if k := target(sa); k != bound {
			want[k] = sa
		}
	}
	for k, l := range s.links {
		if _, ok := want[k]; !ok {
			s.stop(l)
		}
	}
	for k, sa := range want {
		if s.links[k] == nil {
			s.start(k, sa)
		}
	}
}

func (s *standbys) start(key string, addr agentcfg.Address) {
	ctx, cancel := context.WithCancel(s.ctx)
	l := &standbyLink{key: key, addr: addr, cancel: cancel, done: make(chan struct{}), poke: make(chan struct{}, 1)}
	s.links[key] = l
	s.a.mu.Lock()
	s.a.rb.view[key] = l
	s.a.mu.Unlock()
	go s.a.runStandby(ctx, l)
}

// stop ends a link without waiting for it (closing a link to a frozen
// server can block).
func (s *standbys) stop(l *standbyLink) {
	l.cancel()
	delete(s.links, l.key)
	s.a.mu.Lock()
	if s.a.rb.view[l.key] == l {
		delete(s.a.rb.view, l.key)
	}
	s.a.mu.Unlock()
}

// tick restarts links that ended on their own and lets the others check
// whether their connection came back (then they report there).
func (s *standbys) tick() {
	for k, l := range s.links {
		select {
		case <-l.done:
			s.stop(l)
			s.start(k, l.addr)
			continue
		default:
		}
		select {
		case l.poke <- struct{}{}:
		default:
		}
	}
}

func (s *standbys) stopAll() {
	s.synced = syncedFor{}
	var all []*standbyLink
	for _, l := range s.links {
		all = append(all, l)
		s.stop(l)
	}
	for _, l := range all {
		<-l.done
	}
}

// linkUp reports whether bus is connected (a bus that cannot tell counts as
// connected).
func linkUp(bus broker.Bus) bool {
	if c, ok := bus.(interface{ Connected() bool }); ok {
		return c.Connected()
	}
	return true
}

// whereSubscriber is a bus that can pick the messages a subscription gets
// (a Pool's).
type whereSubscriber interface {
	SubscribeWhere(dest string, want func(broker.Message) bool) (broker.Subscription, error)
}

// subscribeWhere subscribes to dest, for the messages want keeps where the
// bus can pick them (a Pool's fan-out: picked reports it), else for all
// (the caller checks each itself).
func subscribeWhere(bus broker.Bus, dest string, want func(broker.Message) bool) (sub broker.Subscription, picked bool, err error) {
	if w, ok := bus.(whereSubscriber); ok {
		sub, err = w.SubscribeWhere(dest, want)
		return sub, true, err
	}
	sub, err = bus.Subscribe(dest)
	return sub, false, err
}

// noteHeld records the token of the file's content the agent now follows
// (a.mu held).
func (a *Agent) noteHeld(addr agentcfg.Address) {
	a.held.Store(&failoverid.Token{ID: addr.FailoverID, Epoch: addr.FailoverEpoch})
}

// rebindMayApply reports whether rebind m could change the agent's file:
// its token is above the file's (or cannot be read here: the agent then
// decides). The new primary repeats its rebind every period until the
// agent is bound; in a fleet the pool's fan-out drops the repeats an agent
// already obeys, so that thousands of agents are not woken for each.
func (a *Agent) rebindMayApply(m broker.Message, via string) bool {
	env, err := decode(m)
	if err != nil || a.aboveHeld(failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}) {
		return true
	}
	// Counted and (at debug) logged as offerRebind would, without waking
	// the agent.
	a.rejectRebind(logrus.DebugLevel, func() logrus.Fields { return rebindFields(m, via) }, notNewer)
	return false
}

// aboveHeld reports whether tok is above the token of the file the agent
// follows (true while it knows none).
func (a *Agent) aboveHeld(tok failoverid.Token) bool {
	held := a.held.Load()
	return held == nil || held.ID == "" || tok.Above(*held)
}

// Rejections of a rebind that changes nothing, every repeat of the new
// primary's: not above the file's token, or one the worker already holds.
const (
	notNewer     = "not newer than address.yaml's token"
	beingApplied = "a rebind to this token (or a higher one) is already being applied"
)

// wantsRebind handles a standby link's messages in a Pool's fan-out (via:
// its server): a rebind that may apply is offered to the file worker right
// there (offerRebind never blocks), so that a broadcast rebind does not
// wake each of 10,000 agents' standby goroutines only to hand it on.
// Nothing else on a standby link is for the agent.
func (a *Agent) wantsRebind(ctx context.Context, via string) func(broker.Message) bool {
	return func(m broker.Message) bool {
		if isRebind(m) && a.rebindMayApply(m, via) {
			a.offerRebind(ctx, m, via)
		}
		return false
	}
}

// wantsCommand handles the bound link's messages in a Pool's fan-out (via:
// the server, conn: Run's number of the connection). A command is checked
// and counted right there (command: the file as it is now, I1), so that a
// fleet's agents are not each woken for every ping; Run gets only the
// notice of an accepted command whose token or failover-servers differ
// from the last one it was told of on this connection (it then reports or
// learns the servers). A rebind that may apply is offered to the file
// worker right there, as on a standby link (wantsRebind).
//
// An accepted ping is followed by a quiet gap (pingGap): the same server's
// next pings, with nothing new in them, are not offered to the agent until
// the gap has passed (see repeatPing).
func (a *Agent) wantsCommand(ctx context.Context, via string, conn uint64) func(broker.Message) bool {
	// Only the fan-out calls this, one message at a time.
	var last heardNote
	var lastAt time.Time // when the last accepted command was (zero: none yet)
	var lastSeq uint64
	gap := a.cfg.PingGap
	return func(m broker.Message) bool {
		if isRebind(m) {
			if a.rebindMayApply(m, via) {
				a.offerRebind(ctx, m, via)
			}
			return false
		}
		now := a.cfg.Clock.Now()
		if gap > 0 && !lastAt.IsZero() && now.Sub(lastAt) < gap && a.repeatPing(m, last, lastSeq) {
			return false
		}
		addr, ok := a.command(m)
		if !ok {
			return false
		}
		lastAt = now
		if env, err := decode(m); err == nil {
			lastSeq = env.Seq
		}
		v, has := m.Headers[hFailoverServers]
		n := heardNote{conn: conn, tok: tokenOf(addr), servers: v, has: has}
		if n == last {
			return false
		}
		last = n
		if has {
			a.pingServers.Store(&n)
		}
		return true
	}
}

// FleetPingGap is a fleet's Config.PingGap for agents of the given
// period: how long after an accepted ping a fleet's agent is not
// offered its server's repeats. It is the agent's period, the pace at which it
// reports anyway. A server pings every one of its periods (100 ms in a
// fast group), a new primary also as agents bind to it, and each check of
// a ping stats the agent's file: during a 10,000-agent takeover the
// fleet's fan-out re-checked agents that had long obeyed, four times a
// second each with a quarter period, and the rewrites of those still to
// move waited for the CPU. A lone agent has none (Config.PingGap 0): it
// checks and counts every command it gets.
func FleetPingGap(period time.Duration) time.Duration { return period }

// repeatPing reports whether m is a ping the agent may pass over, a repeat
// of the last it accepted on this connection (last, lastSeq): a ping
// verified with the group's key, of the same token and failover-servers,
// and a higher seq. Anything else is decided as usual: a rebind or other
// command, a forged ping (dropped), a replayed one (its seq is not above:
// counted as replayed), another server's, or one that names new servers. Passing over a ping acts on nothing, so I1 holds whatever the
// file now says; the next ping after the gap is checked against it.
func (a *Agent) repeatPing(m broker.Message, last heardNote, lastSeq uint64) bool {
	f := a.checks.pingFacts(m)
	return f.ok && f.tok == last.tok && f.seq > lastSeq && f.has == last.has && f.servers == last.servers
}

// pingFacts is what repeatPing looks at in a message, worked out once per
// message for every agent of a fan-out that checks it with the same key
// and destination (pingFactsKey): a 10,000-agent fan-out of a ping asks it
// 10,000 times.
type pingFacts struct {
	ok      bool // a ping, verified, its headers decoded
	tok     failoverid.Token
	seq     uint64
	servers string // failover-servers
	has     bool
}

type pingFactsKey struct {
	signer *protocol.Signer
	dest   string
}

// pingFacts returns m's pingFacts, once per message.
func (c *checks) pingFacts(m broker.Message) *pingFacts {
	v, _ := m.Memo.Value(c.pingKey, func() (any, error) {
		f := &pingFacts{}
		// The memo is held while this runs: the checks run on their own
		// (the signer keeps the verdict, so the agents' own check of the
		// message through the memo costs no second verification).
		bare := m
		bare.Memo = nil
		if !isPing(m) || c.verify(bare) != nil {
			return f, nil
		}
		env, err := protocol.Decode(m.Headers)
		if err != nil {
			return f, nil
		}
		f.ok, f.tok, f.seq = true, failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}, env.Seq
		f.servers, f.has = m.Headers[hFailoverServers]
		return f, nil
	})
	return v.(*pingFacts)
}

// PingSupersedes is the fleet's rule for Pool.SkipSuperseded: a ping need
// not be fanned out when a later ping of the same server is waiting behind
// it (the same node, failover id and epoch, a higher seq), signed for dest
// as signer checks (once per message, shared with the agents' own check):
// an agent obeys the later one as it would have the first, and a stranger
// cannot have a real ping skipped with a forged one. Rebinds and other
// commands are never superseded.
func PingSupersedes(signer *protocol.Signer, dest string) func(older, newer broker.Message) bool {
	c := newChecks(signer, dest)
	return func(older, newer broker.Message) bool {
		if !isPing(older) || !isPing(newer) {
			return false
		}
		o, err := decode(older)
		if err != nil {
			return false
		}
		n, err := decode(newer)
		if err != nil || n.Node != o.Node || n.FailoverID != o.FailoverID || n.Epoch != o.Epoch || n.Seq <= o.Seq {
			return false
		}
		return c.verify(newer) == nil
	}
}

// isPing reports whether m is a primary's periodic ping (no command
// header, or "ping").
func isPing(m broker.Message) bool {
	c, ok := m.Headers[hCommand]
	return !ok || c == "ping"
}

// heardNote is what Run was last told of a connection's accepted commands.
type heardNote struct {
	conn    uint64
	tok     failoverid.Token
	servers string
	has     bool // the command carried failover-servers
}

// runStandby holds one standby subscription: rebinds that arrive on it go
// to offerRebind (in a Pool's fan-out already, wantsRebind), anything else
// is not for this agent (it obeys only its bound server). Each time the
// link (re)connects it reports once.
func (a *Agent) runStandby(ctx context.Context, l *standbyLink) {
	defer close(l.done)
	defer l.up.Store(false)
	log := a.cfg.Log.WithFields(logrus.Fields{"agent": a.cfg.ID, "standby": l.key})
	bus, err := a.cfg.Dial(ctx, l.addr)
	if err != nil {
		log.WithError(err).Debug("standby link: connect")
		return
	}
	defer bus.Close()
	sub, _, err := subscribeWhere(bus, a.cfg.Dest.AgentCommand, a.wantsRebind(ctx, l.key))
	if err != nil {
		log.WithError(err).Debug("standby link: subscribe")
		return
	}
	defer sub.Close()
	reported := false
	check := func() {
		up := linkUp(bus)
		l.up.Store(up)
		switch {
		case !up:
			reported = false
		case !reported:
			addr, ok := a.reload(false)
			if ok {
				reported = a.publishReport(ctx, bus, addr) == nil
			}
		}
	}
	check()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.poke:
			check()
		case m, ok := <-sub.C():
			if !ok {
				return
			}
			if isRebind(m) {
				a.offerRebind(ctx, m, l.key)
			}
		}
	}
}
