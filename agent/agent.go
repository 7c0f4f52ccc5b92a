// Package agent is tandem's reference managed agent: it follows its
// address.yaml (stomp_interface, stomp_port, use_ssl, failover_id,
// failover_epoch), and acts only on commands from the server its file names
// at that epoch (invariant I1). It reports its status every period, on
// connecting, and when its bound server first speaks to it on a connection
// (a new primary may not have been listening yet when the agent connected).
// It writes its address.yaml only in two ways, both under the servers'
// lock and atomic write (rebind.go): failover_servers, learned from its
// primary's pings, and a signed rebind from a new primary (agents on their
// own hosts, whose files no server can write).
//
// The agents of one process may share their server connections through a
// Pool; each still follows its own file and checks every command itself.
//
// The binding check happens when a command arrives, against the file as it
// is at that moment (re-read when it changed), not against a cached copy: a
// command from the old primary that arrives after the file was rewritten but
// before the watcher fired is still rejected.
package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/internal/hooks"
	"github.com/tandem-ha/tandem/protocol"
	"golang.org/x/sys/unix"
)

// DialFunc connects to the server an address names. The returned bus keeps
// reconnecting on its own until closed.
type DialFunc func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error)

// Config is an agent's setup.
type Config struct {
	Path   string // its address.yaml
	ID     string // agent id reported in status (default: the file's path)
	Period time.Duration
	Dest   protocol.Destinations
	Signer *protocol.Signer
	Dial   DialFunc
	Clock  clock.Clock
	Log    logrus.FieldLogger
	// Watch reports changes to the file (default agentcfg.Watch).
	Watch func(ctx context.Context, path string, debounce time.Duration) (<-chan struct{}, error)
	// OnEvent, when set, receives every accepted or rejected command (the
	// fault-injection suite's event log). Rebinds are not commands and are
	// not reported here (see Status: rebinds_accepted, rebinds_rejected).
	OnEvent func(Event)
	// OnRebind is a shell command (sh -c) run after a rebind rewrote the
	// file (--on-rebind; a sidecar restarts the real agent with it). Its
	// environment adds TANDEM_AGENT_ID, TANDEM_AGENT_CONFIG,
	// TANDEM_FAILOVER_ID, TANDEM_EPOCH and TANDEM_SERVER (host:port).
	OnRebind string
	// OnRebindTimeout bounds OnRebind (default DefaultOnRebindTimeout).
	OnRebindTimeout time.Duration
	// Flusher, when set, is the group commit of the agent's own rewrites
	// of its file, shared by the agents of a fleet (see agentcfg.Flusher):
	// after a broadcast rebind thousands of them rewrite at once.
	Flusher *agentcfg.Flusher
	// Workers, when set, runs the agent's file work (rebinds,
	// failover_servers writes) on goroutines shared by a fleet's agents
	// (see Workers); nil: the agent starts its own when there is work.
	Workers *Workers
	// TickPhase delays the agent's first periodic tick (file check,
	// standby links, report) to TickPhase after Run starts, the later ones
	// following every Period: a fleet spreads its agents' ticks over the
	// period instead of waking them all at once. 0: the first tick comes a
	// Period after the start.
	TickPhase time.Duration
	// PingGap, in a fleet, is how long after an accepted ping the agent
	// passes over its server's verified repeats (a fleet's:
	// FleetPingGap). 0: every command is checked and counted, as a lone
	// agent does.
	PingGap time.Duration
	// RunHook runs OnRebind (default hooks.Run; tests stand in for it).
	RunHook hooks.Func
}

// Event is one command decision.
type Event struct {
	Agent    string           `json:"agent"`
	Accepted bool             `json:"accepted"`
	From     failoverid.Token `json:"from"`
	FromNode string           `json:"from_node"`
	Bound    failoverid.Token `json:"bound"`
	Seq      uint64           `json:"seq"`
}

// AppendJSON appends e as the JSON object encoding/json makes of
// struct{T int64 `json:"t_ms"`; Event} with T = tms, without reflection: a
// fleet's --events writes one per command of every agent.
func (e Event) AppendJSON(b []byte, tms int64) []byte {
	b = append(b, `{"t_ms":`...)
	b = strconv.AppendInt(b, tms, 10)
	b = append(b, `,"agent":`...)
	b = appendJSONString(b, e.Agent)
	b = append(b, `,"accepted":`...)
	b = strconv.AppendBool(b, e.Accepted)
	b = append(b, `,"from":`...)
	b = appendToken(b, e.From)
	b = append(b, `,"from_node":`...)
	b = appendJSONString(b, e.FromNode)
	b = append(b, `,"bound":`...)
	b = appendToken(b, e.Bound)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	return append(b, '}')
}

// AppendJSON appends s as encoding/json encodes it, without reflection: a
// fleet's agents each send one every period.
func (s Status) AppendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, s.ID)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, s.Path)
	b = append(b, `,"server":`...)
	b = appendJSONString(b, s.Server)
	b = append(b, `,"connected":`...)
	b = strconv.AppendBool(b, s.Connected)
	b = append(b, `,"bound":`...)
	b = s.Bound.appendJSON(b)
	b = append(b, `,"commands":`...)
	if s.Commands == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, c := range s.Commands {
			if i > 0 {
				b = append(b, ',')
			}
			b = c.appendJSON(b)
		}
		b = append(b, ']')
	}
	b = append(b, `,"accepted":`...)
	b = strconv.AppendUint(b, s.Accepted, 10)
	b = append(b, `,"rejected":`...)
	b = strconv.AppendUint(b, s.Rejected, 10)
	if s.FileError != "" {
		b = append(b, `,"file_error":`...)
		b = appendJSONString(b, s.FileError)
	}
	b = append(b, `,"rebinds_accepted":`...)
	b = strconv.AppendUint(b, s.RebindsAccepted, 10)
	b = append(b, `,"rebinds_rejected":`...)
	b = strconv.AppendUint(b, s.RebindsRejected, 10)
	if s.LastRebindRejection != "" {
		b = append(b, `,"last_rebind_rejection":`...)
		b = appendJSONString(b, s.LastRebindRejection)
	}
	if len(s.Standby) > 0 {
		b = append(b, `,"standby":[`...)
		for i, l := range s.Standby {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"server":`...)
			b = appendJSONString(b, l.Server)
			b = append(b, `,"connected":`...)
			b = strconv.AppendBool(b, l.Connected)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

func (c Counts) appendJSON(b []byte) []byte {
	b = append(b, `{"failover_id":`...)
	b = appendJSONString(b, c.FailoverID)
	b = append(b, `,"epoch":`...)
	b = strconv.AppendUint(b, c.Epoch, 10)
	b = append(b, `,"accepted":`...)
	b = strconv.AppendUint(b, c.Accepted, 10)
	b = append(b, `,"rejected":`...)
	b = strconv.AppendUint(b, c.Rejected, 10)
	if c.Replayed != 0 {
		b = append(b, `,"replayed":`...)
		b = strconv.AppendUint(b, c.Replayed, 10)
	}
	return append(b, '}')
}

func appendToken(b []byte, t failoverid.Token) []byte {
	b = append(b, `{"failover_id":`...)
	b = appendJSONString(b, t.ID)
	b = append(b, `,"epoch":`...)
	b = strconv.AppendUint(b, t.Epoch, 10)
	return append(b, '}')
}

// appendJSONString appends s quoted as encoding/json quotes it: plain
// printable ASCII directly, anything else through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// Counts are accepted and rejected commands for one (failover id, epoch).
type Counts struct {
	FailoverID string `json:"failover_id"`
	Epoch      uint64 `json:"epoch"`
	Accepted   uint64 `json:"accepted"`
	Rejected   uint64 `json:"rejected"`
	// Replayed counts commands at this token with a sequence number not
	// above the last accepted one (a recorded command sent again):
	// rejected too.
	Replayed uint64 `json:"replayed,omitempty"`
	lastSeq  uint64
}

// maxCounts bounds the per-token counters an agent keeps (a flood of
// made-up tokens in the insecure mode must not grow it).
const maxCounts = 64

// Status is what the agent reports every period (the body of its
// agent-status message, JSON).
type Status struct {
	ID        string   `json:"id"`
	Path      string   `json:"path"`   // absolute path of its address.yaml
	Server    string   `json:"server"` // host:port it is connected to (or trying)
	Connected bool     `json:"connected"`
	Bound     Counts   `json:"bound"` // its file's failover id and epoch
	Commands  []Counts `json:"commands"`
	Accepted  uint64   `json:"accepted"`
	Rejected  uint64   `json:"rejected"`
	FileError string   `json:"file_error,omitempty"`
	// RebindsAccepted counts rebinds that rewrote the file;
	// RebindsRejected those that changed nothing (unsigned, badly signed, a
	// failover_sig that does not cover the token and address, replayed, not
	// newer than the file, a repeat of one already being applied, no
	// --server-key, or a failed write), with the last reason in
	// LastRebindRejection. In a fleet (Pool) the repeats of a rebind the
	// agent already obeys are dropped (and counted) before they reach it.
	RebindsAccepted     uint64 `json:"rebinds_accepted"`
	RebindsRejected     uint64 `json:"rebinds_rejected"`
	LastRebindRejection string `json:"last_rebind_rejection,omitempty"`
	// Standby lists the servers of failover_servers (and of the bound
	// server's last ping) where the agent keeps a standby subscription.
	Standby []StandbyStatus `json:"standby,omitempty"`
}

// StandbyStatus is one standby link.
type StandbyStatus struct {
	Server    string `json:"server"`
	Connected bool   `json:"connected"`
}

// Agent is one running agent.
type Agent struct {
	cfg     Config
	absPath string
	checks  *checks // of the agents' commands

	mu       sync.Mutex
	good     agentcfg.Address // last good file content
	goodStat fileID
	// ownWrite: good and goodStat are what the agent's own last rewrite
	// renamed into place, not yet read back (see reload).
	ownWrite bool
	// checkedAt is when the file was last known to be what good says: a
	// reload that stat'ed or read it, or the agent's own rewrite (zero:
	// not since the last bad read). See recheck.
	checkedAt time.Time
	fileErr   string
	server    string
	conn      bool
	counts    map[failoverid.Token]*Counts
	acc, rej  uint64
	gen       uint64 // connection generation: a report about an older one does not touch conn

	// Status reports are published by one short-lived goroutine at a
	// time, never by Run: a publish on a link to a server that stopped
	// reading must not delay the agent's reaction to its file. A report
	// asked for while one is in flight replaces any still waiting.
	repMu   sync.Mutex
	repNext *reportReq
	repBusy bool
	repWG   sync.WaitGroup

	rb rebinds
	// held is the token of the last good file, for the pool's fan-out
	// to drop rebinds not above it without waking the agent.
	held atomic.Pointer[failoverid.Token]
	// pingServers is the failover-servers of the last accepted command
	// whose notice the pool's fan-out passed to Run (wantsCommand).
	pingServers atomic.Pointer[heardNote]
}

// tokenOf is the token a file names.
func tokenOf(addr agentcfg.Address) failoverid.Token {
	return failoverid.Token{ID: addr.FailoverID, Epoch: addr.FailoverEpoch}
}

type reportReq struct {
	ctx  context.Context
	bus  broker.Bus
	addr agentcfg.Address
	gen  uint64
}

// New returns an agent; call Run.
func New(cfg Config) *Agent {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	if cfg.Period == 0 {
		cfg.Period = time.Second
	}
	if cfg.ID == "" {
		cfg.ID = cfg.Path
	}
	if cfg.Watch == nil {
		cfg.Watch = agentcfg.Watch
	}
	abs, err := filepath.Abs(cfg.Path)
	if err != nil {
		abs = cfg.Path
	}
	if cfg.RunHook == nil {
		cfg.RunHook = hooks.Run
	}
	if cfg.OnRebindTimeout <= 0 {
		cfg.OnRebindTimeout = DefaultOnRebindTimeout
	}
	a := &Agent{cfg: cfg, absPath: abs, counts: map[failoverid.Token]*Counts{}, checks: newChecks(cfg.Signer, cfg.Dest.AgentCommand)}
	a.rb.init()
	return a
}

// reload re-reads the file if it changed since the last good read (force:
// even if its identity, mtime and size look the same). A bad version is
// logged once and the last good configuration is kept.
//
// A forced reload of a file that is still the one the agent's own rewrite
// renamed into place (same inode, mtime and size as that rename) is not
// read again: it is the file watch's echo of that write, whose content the
// agent already holds. In a fleet every rebind would otherwise cost each
// agent one more parse of its file. An edit of the file after the rewrite
// gives it a new inode (editors and tandem rename) or a new mtime or size,
// and is read; what is left is an in-place edit of the same size within
// the file system's timestamp tick, the limit every stat check here has.
func (a *Agent) reload(force bool) (addr agentcfg.Address, ok bool) {
	now := a.cfg.Clock.Now()
	fi := statID(a.cfg.Path)
	a.mu.Lock()
	if (!force || a.ownWrite) && fi.ok && fi == a.goodStat && a.fileErr == "" {
		addr, ok = a.good, true
		a.checkedAt = now
		a.mu.Unlock()
		return addr, ok
	}
	a.mu.Unlock()
	got, err := agentcfg.ReadFile(a.cfg.Path)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		msg := err.Error()
		if msg != a.fileErr {
			a.cfg.Log.WithField("agent", a.cfg.ID).Warn("ignoring a bad address.yaml, keeping the last good configuration: " + msg)
		}
		a.fileErr = msg
		a.checkedAt = time.Time{}
		return a.good, a.good.StompInterface != ""
	}
	a.fileErr = ""
	a.good = got
	a.noteHeld(got)
	a.goodStat = fi
	a.ownWrite = false
	a.checkedAt = now
	return got, true
}

// recheck is reload(false) for the reads that only back the file watch
// up — the period tick, the kick after the agent's own rewrite: a file
// known good less than within ago (a command check stat'ed it, the agent
// just renamed its own rewrite into place) is taken as it was, without
// another stat. A change since then fires the watch, whose reload reads
// it, and every command is still checked against a fresh stat.
//
// In a fleet each stat is a walk of the file's path, thousands of them a
// second: the ticks' and kicks' stats were about 5 % of a 10,000-agent
// fleet's CPU during a takeover (perf, BenchmarkRemoteAgentsFollow).
func (a *Agent) recheck(within time.Duration) (agentcfg.Address, bool) {
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	if a.fileErr == "" && a.good.StompInterface != "" && !a.checkedAt.IsZero() && now.Sub(a.checkedAt) < within {
		addr := a.good
		a.mu.Unlock()
		return addr, true
	}
	a.mu.Unlock()
	return a.reload(false)
}

// fileID is what reload compares to tell whether the file changed: its
// identity, mtime and size (ok: known).
type fileID struct {
	dev, ino    uint64
	mtime, size int64
	ok          bool
}

// statID stats path (following links, as a read does). It allocates
// nothing: a fleet does it for every command of every agent.
func statID(path string) fileID {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}
	}
	return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino), mtime: unix.TimespecToNsec(st.Mtim), size: st.Size, ok: true}
}

// idOf is the fileID of a FileInfo from lstat or stat.
func idOf(fi os.FileInfo) fileID {
	if fi == nil {
		return fileID{}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}
	}
	return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino), mtime: fi.ModTime().UnixNano(), size: fi.Size(), ok: true}
}

func target(addr agentcfg.Address) string {
	s := addr.StompInterface + ":" + strconv.Itoa(addr.StompPort)
	if addr.UseSSL {
		s += " (ssl)"
	}
	return s
}

// Status returns the agent's current report.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{ID: a.cfg.ID, Path: a.absPath, Server: a.server, Connected: a.conn, Accepted: a.acc, Rejected: a.rej, FileError: a.fileErr,
		Bound: Counts{FailoverID: a.good.FailoverID, Epoch: a.good.FailoverEpoch}}
	for _, c := range a.counts {
		s.Commands = append(s.Commands, *c)
	}
	if b, ok := a.counts[failoverid.Token{ID: a.good.FailoverID, Epoch: a.good.FailoverEpoch}]; ok {
		s.Bound = *b
	}
	s.RebindsAccepted, s.RebindsRejected, s.LastRebindRejection = a.rb.acc, a.rb.rej, a.rb.lastReject
	for _, l := range a.rb.view {
		s.Standby = append(s.Standby, StandbyStatus{Server: l.key, Connected: l.up.Load()})
	}
	sort.Slice(s.Standby, func(i, j int) bool { return s.Standby[i].Server < s.Standby[j].Server })
	return s
}

// Run follows the file until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	log := a.cfg.Log.WithField("agent", a.cfg.ID)
	changes, err := a.cfg.Watch(ctx, a.cfg.Path, watchDebounce)
	if err != nil {
		return fmt.Errorf("watch %s: %w", a.cfg.Path, err)
	}
	running.Add(1)
	defer running.Add(-1)
	// The periodic ticks: every Period, the first after TickPhase when
	// one is set (phase fires once, then the ticker starts).
	var tick clock.Ticker
	var tickC, phase <-chan time.Time
	startTicks := func() {
		tick = a.cfg.Clock.NewTicker(a.cfg.Period)
		tickC = tick.C()
	}
	if a.cfg.TickPhase > 0 {
		phase = a.cfg.Clock.After(a.cfg.TickPhase)
	} else {
		startTicks()
	}
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	defer a.repWG.Wait() // a report in flight ends with ctx
	defer a.rb.wg.Wait() // so does a rebind being applied
	sb := &standbys{a: a, ctx: ctx, links: map[string]*standbyLink{}}
	defer sb.stopAll()

	var bus broker.Bus
	var sub broker.Subscription
	var cur string // target of the current connection
	// heard is the bound token last heard from on this connection. The
	// first accepted command proves the bound server is acting as primary
	// on this connection, which it may not have been when the agent
	// connected: during a takeover the new primary's broker is up while
	// its files are still being rewritten, and a report sent then reaches
	// nobody. Reporting on that first command gets the agent into the
	// new primary's registry a ping after it starts instead of up to a
	// period later.
	var heard failoverid.Token
	// Closing a link to a frozen server can block until a timeout: close in
	// the background so the agent moves to its new server at once.
	var closing sync.WaitGroup
	defer closing.Wait()
	var curTok failoverid.Token // the token the current connection was made for
	// checked: the current subscription's commands are checked and counted
	// where they arrive (a Pool's fan-out, wantsCommand), and what reaches
	// this loop is only the notice of an accepted command with a new token
	// or failover-servers. conns numbers the connections, so that a notice
	// of an older one is not taken for the current one's.
	var checked bool
	var conns uint64
	var learned *heardNote // the pingServers last taken at a tick
	// disconnect leaves the current server. With moved set (the agent was
	// rebound to a higher token), it first tells the server it leaves, in
	// the background: a report carrying the new, server-signed token fences
	// an old primary that no file can (agents on their own hosts).
	disconnect := func(moved *agentcfg.Address) {
		if sub == nil && bus == nil {
			return
		}
		oldSub, oldBus := sub, bus
		sub, bus = nil, nil
		closing.Add(1)
		go func() {
			defer closing.Done()
			// A link that is down (the old primary died) would only refuse
			// the report: no status is built and signed for it.
			if moved != nil && oldBus != nil && linkUp(oldBus) {
				pctx, cancel := context.WithTimeout(ctx, min(a.cfg.Period, time.Second))
				_ = a.publishReport(pctx, oldBus, *moved)
				cancel()
			}
			if oldSub != nil {
				oldSub.Close()
			}
			if oldBus != nil {
				oldBus.Close()
			}
		}()
		a.mu.Lock()
		a.conn = false
		a.gen++
		a.mu.Unlock()
	}
	defer disconnect(nil)
	connect := func(addr agentcfg.Address) {
		t := target(addr)
		tok := tokenOf(addr)
		if t == cur && bus != nil {
			curTok = tok // the same server, at a new token (its own claim)
			return
		}
		var moved *agentcfg.Address
		if tok.Above(curTok) && curTok.ID != "" {
			moved = &addr
		}
		disconnect(moved)
		curTok = tok
		cur = t
		heard = failoverid.Token{}
		a.mu.Lock()
		a.server = t
		a.mu.Unlock()
		b, err := a.cfg.Dial(ctx, addr)
		if err != nil {
			log.WithError(err).Warn("connect to " + t)
			return
		}
		conns++
		a.pingServers.Store(nil)
		s, inline, err := subscribeWhere(b, a.cfg.Dest.AgentCommand, a.wantsCommand(ctx, t, conns))
		if err != nil {
			b.Close()
			log.WithError(err).Warn("subscribe at " + t)
			return
		}
		bus, sub, checked = b, s, inline
		a.mu.Lock()
		a.conn = true
		a.gen++
		a.mu.Unlock()
		if level := a.perAgentLevel(); logEnabled(a.cfg.Log, level) {
			log.WithFields(logrus.Fields{"server": t, "failover_id": addr.FailoverID, "epoch": addr.FailoverEpoch}).Log(level, "following address.yaml")
		}
		a.report(ctx, bus, addr) // the new server knows us at once
	}
	if addr, ok := a.reload(true); ok {
		connect(addr)
		sb.sync(addr, cur)
	}
	skipped := 0 // ticks passed over in a row (see maxSkippedTicks)
	onTick := func() {
		switch {
		case skipped < maxSkippedTicks && a.rb.pending():
			skipped++
			return
		case skipped == 0 && a.cfg.Workers.Waiting() > 0:
			skipped++
			return
		}
		skipped = 0
		addr, ok := a.recheck(a.cfg.Period)
		if ok && (bus == nil || target(addr) != cur) {
			connect(addr)
		}
		if ok {
			if n := a.pingServers.Load(); checked && n != nil && n.conn == conns && n != learned {
				// The ping's failover-servers, in case its notice was
				// lost to a full buffer.
				learned = n
				sb.learn(n.servers, addr)
			}
			sb.sync(addr, cur)
			sb.writeDue(addr)
		}
		sb.tick()
		if bus != nil {
			a.report(ctx, bus, addr)
		}
	}
	var cmds <-chan broker.Message
	deferred := false // a file watch event came during the agent's own rewrite
	for {
		cmds = nil
		if sub != nil {
			cmds = sub.C()
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-changes:
			if !ok {
				changes = nil
				continue
			}
			if a.rb.writing.Load() {
				deferred = true // the kick after the rewrite catches up
				continue
			}
			if addr, ok := a.reload(true); ok {
				connect(addr)
				sb.sync(addr, cur)
			}
		case <-a.rb.kick:
			// The agent rewrote its file (a rebind, failover_servers), or
			// tried to: follow it now (the file watch would too, a moment
			// later), and tell a server that stays the same about a new
			// token. The agent's own write left its content and identity
			// as the last good read (wrote): no stat and no re-read
			// (recheck), unless a watch event was deferred during the
			// rewrite (then the file is read unless it is what the rewrite
			// left). prev is the token this loop last followed.
			prev := curTok
			force := deferred
			deferred = false
			var addr agentcfg.Address
			var ok bool
			if force {
				addr, ok = a.reload(true)
			} else {
				addr, ok = a.recheck(a.cfg.Period)
			}
			if ok {
				moved := bus == nil || target(addr) != cur
				connect(addr)
				sb.sync(addr, cur)
				tok := tokenOf(addr)
				if !moved && bus != nil && tok != prev {
					a.report(ctx, bus, addr)
				}
				if t := a.rb.applied.Load(); bus != nil && t != nil && *t == tok {
					// A rebind to this token was just applied: its server
					// acts as primary and hears the report sent now, so its
					// first command needs no second one.
					heard = tok
				}
			}
		case <-phase:
			phase = nil
			startTicks()
			onTick()
		case <-tickC:
			onTick()
		case m, ok := <-cmds:
			if !ok {
				disconnect(nil)
				continue
			}
			if isRebind(m) {
				a.offerRebind(ctx, m, cur)
				continue
			}
			var addr agentcfg.Address
			if checked {
				addr, ok = a.reload(false) // accepted where it arrived
			} else {
				addr, ok = a.command(m)
			}
			if ok && bus != nil {
				if tok := tokenOf(addr); tok != heard {
					heard = tok
					a.report(ctx, bus, addr)
				}
				if v, ok := m.Headers[hFailoverServers]; ok {
					if sb.learn(v, addr) {
						sb.sync(addr, cur)
					}
				}
			}
		}
	}
}

// verifyKey names what a command's signature check depends on besides the
// message: the verifying keys and the destination it must be signed for.
type verifyKey struct {
	signer *protocol.Signer
	dest   string
}

// verify checks a command's signature for the agents' command destination,
// once per message for the agents of a pool that share its keys.
func (a *Agent) verify(m broker.Message) error {
	return a.checks.verify(m)
}

// checks are the signature checks of messages for one destination with
// one signer, shared through each message's Memo by everyone who makes
// them with the same signer and destination. The memo keys are boxed once:
// a key made into an interface at each call would cost an allocation per
// agent and message in a fleet's fan-out.
type checks struct {
	signer             *protocol.Signer
	dest               string
	verifyKey, pingKey any
}

func newChecks(signer *protocol.Signer, dest string) *checks {
	return &checks{signer: signer, dest: dest, verifyKey: verifyKey{signer, dest}, pingKey: pingFactsKey{signer, dest}}
}

// verify checks m's signature, once per message.
func (c *checks) verify(m broker.Message) error {
	return m.Memo.Do(c.verifyKey, func() error { return c.signer.Verify(c.dest, m.Headers, m.Body) })
}

// decodeKey names a message's decoded headers in its Memo: they depend on
// the message alone.
type decodeKey struct{}

// decode is protocol.Decode of m's headers, once per message for the agents
// of a pool.
func decode(m broker.Message) (protocol.Envelope, error) {
	v, err := m.Memo.Value(decodeKey{}, func() (any, error) {
		env, err := protocol.Decode(m.Headers)
		return env, err
	})
	env, _ := v.(protocol.Envelope)
	return env, err
}

// command applies the binding check to one command. It returns the file it
// checked against and whether the command was accepted.
func (a *Agent) command(m broker.Message) (agentcfg.Address, bool) {
	// The signature is checked for the destination the agent subscribed
	// to, not the one the broker names: a server message signed for
	// another destination (a heartbeat) is no command.
	if err := a.verify(m); err != nil {
		a.cfg.Log.WithError(err).WithField("agent", a.cfg.ID).Debug("dropped a command")
		return agentcfg.Address{}, false
	}
	env, err := decode(m)
	if err != nil {
		return agentcfg.Address{}, false
	}
	addr, _ := a.reload(false) // the file as it is now
	bound := tokenOf(addr)
	from := failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}
	ok := bound.ID != "" && from.Same(bound)
	a.mu.Lock()
	c := a.counts[from]
	if c == nil {
		c = &Counts{FailoverID: from.ID, Epoch: from.Epoch}
		if len(a.counts) < maxCounts {
			a.counts[from] = c
		}
	}
	replayed := ok && env.Seq != 0 && env.Seq <= c.lastSeq
	if replayed {
		ok = false
		c.Replayed++
	} else if ok && env.Seq != 0 {
		c.lastSeq = env.Seq
	}
	if ok {
		c.Accepted++
		a.acc++
	} else {
		c.Rejected++
		a.rej++
	}
	a.mu.Unlock()
	if replayed {
		a.cfg.Log.WithFields(logrus.Fields{"agent": a.cfg.ID, "from": from.String(), "seq": env.Seq}).Warn("rejected a replayed command (its sequence number is not above the last accepted one)")
	} else if !ok {
		a.cfg.Log.WithFields(logrus.Fields{"agent": a.cfg.ID, "from": from.String(), "from_node": env.Node, "bound": bound.String()}).Debug("rejected a command from a server this agent is not bound to")
	}
	if a.cfg.OnEvent != nil {
		a.cfg.OnEvent(Event{Agent: a.cfg.ID, Accepted: ok, From: from, FromNode: env.Node, Bound: bound, Seq: env.Seq})
	}
	return addr, ok
}

// report asks for the agent's status to be published on bus, tagged with
// the token it is bound to. It never waits for the publish.
func (a *Agent) report(ctx context.Context, bus broker.Bus, addr agentcfg.Address) {
	a.mu.Lock()
	gen := a.gen
	a.mu.Unlock()
	a.repMu.Lock()
	defer a.repMu.Unlock()
	a.repNext = &reportReq{ctx: ctx, bus: bus, addr: addr, gen: gen}
	if !a.repBusy {
		a.repBusy = true
		a.repWG.Add(1)
		go a.reporter()
	}
}

// reporter publishes the waiting reports, one at a time, until none waits.
func (a *Agent) reporter() {
	defer a.repWG.Done()
	for {
		a.repMu.Lock()
		r := a.repNext
		a.repNext = nil
		if r == nil {
			a.repBusy = false
			a.repMu.Unlock()
			return
		}
		a.repMu.Unlock()
		a.publishStatus(r)
	}
}

// publishStatus publishes one report, bounded by the period.
func (a *Agent) publishStatus(r *reportReq) {
	if r.ctx.Err() != nil {
		return
	}
	err := a.publishReport(r.ctx, r.bus, r.addr)
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.gen == a.gen {
		a.conn = err == nil
	}
}

// publishReport publishes the agent's status on bus, tagged with addr's
// token, bounded by the period.
func (a *Agent) publishReport(ctx context.Context, bus broker.Bus, addr agentcfg.Address) error {
	body := a.Status().AppendJSON(make([]byte, 0, 1024))
	// The token is forwarded with its server signature (failover_sig) and
	// the address that signature covers: a server fences itself only on a
	// token some server signed, never on this agent's word.
	env := protocol.Envelope{FailoverID: addr.FailoverID, Epoch: addr.FailoverEpoch, Node: a.cfg.ID, Role: "agent",
		FailoverSig: addr.FailoverSig, Bound: net.JoinHostPort(addr.StompInterface, strconv.Itoa(addr.StompPort))}
	if env.FailoverID == "" {
		env.FailoverID = "none"
	}
	h := env.Headers()
	a.cfg.Signer.Sign(a.cfg.Dest.AgentStatus, h, body)
	pctx, cancel := context.WithTimeout(ctx, a.cfg.Period)
	defer cancel()
	return bus.Publish(pctx, a.cfg.Dest.AgentStatus, h, body)
}

// maxSkippedTicks bounds the period ticks an agent passes over in a row
// while a rebind of its file waits for the file worker or is being written
// (rebinds.pending): it ticks at least every (maxSkippedTicks+1) periods.
//
// Such a tick would stat a file the worker is about to read under its
// lock, and report the old token to the server the agent is leaving (in a
// takeover, a dead one): the rewrite's kick makes Run read the file,
// connect and report to the new server at once anyway. In a 10,000-agent
// fleet those ticks were a fifth of the process's CPU while a broadcast
// rebind was being applied, and the rewrites of the agents still to move
// waited for it. The bound keeps the file check and the reports going when
// the workers are held up for long (a hook that hangs, a lock that stays
// taken).
//
// An agent with no rebind of its own passes over every other tick while
// its fleet's file workers have work waiting (Workers.Waiting): the agents
// that already follow the new primary report to it every second period
// until the others have moved, within the three seconds a server waits
// before it counts an agent as not connected (at the default 1 s period).
const maxSkippedTicks = 3

// watchDebounce coalesces the events of one change of address.yaml (a
// server's and an agent's own rewrites are one atomic rename; editors may
// write in a few steps): short, since the agent reconnects only after it.
const watchDebounce = 5 * time.Millisecond
