// Package agent is tandem's reference managed agent: it follows its
// address.yaml (stomp_interface, stomp_port, use_ssl, failover_id,
// failover_epoch), and acts only on commands from the server its file names
// at that epoch (invariant I1). It only ever reads its address.yaml. It
// reports its status every period, on connecting, and when its bound server
// first speaks to it on a connection (a new primary may not have been
// listening yet when the agent connected).
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
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
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
	// fault-injection suite's event log).
	OnEvent func(Event)
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
}

// Agent is one running agent.
type Agent struct {
	cfg     Config
	absPath string

	mu       sync.Mutex
	good     agentcfg.Address // last good file content
	goodStat os.FileInfo
	fileErr  string
	server   string
	conn     bool
	counts   map[failoverid.Token]*Counts
	acc, rej uint64
	gen      uint64 // connection generation: a report about an older one does not touch conn

	// Status reports are published by one short-lived goroutine at a
	// time, never by Run: a publish on a link to a server that stopped
	// reading must not delay the agent's reaction to its file. A report
	// asked for while one is in flight replaces any still waiting.
	repMu   sync.Mutex
	repNext *reportReq
	repBusy bool
	repWG   sync.WaitGroup
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
	return &Agent{cfg: cfg, absPath: abs, counts: map[failoverid.Token]*Counts{}}
}

// reload re-reads the file if it changed since the last good read. A bad
// version is logged once and the last good configuration is kept.
func (a *Agent) reload(force bool) (addr agentcfg.Address, ok bool) {
	fi, statErr := os.Stat(a.cfg.Path)
	a.mu.Lock()
	if !force && statErr == nil && a.goodStat != nil && sameFile(fi, a.goodStat) && a.fileErr == "" {
		addr, ok = a.good, true
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
		return a.good, a.good.StompInterface != ""
	}
	a.fileErr = ""
	a.good = got
	a.goodStat = fi
	return got, true
}

func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
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
	return s
}

// Run follows the file until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	log := a.cfg.Log.WithField("agent", a.cfg.ID)
	changes, err := a.cfg.Watch(ctx, a.cfg.Path, 20*time.Millisecond)
	if err != nil {
		return fmt.Errorf("watch %s: %w", a.cfg.Path, err)
	}
	tick := a.cfg.Clock.NewTicker(a.cfg.Period)
	defer tick.Stop()
	defer a.repWG.Wait() // a report in flight ends with ctx

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
	disconnect := func() {
		if sub == nil && bus == nil {
			return
		}
		oldSub, oldBus := sub, bus
		sub, bus = nil, nil
		closing.Add(1)
		go func() {
			defer closing.Done()
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
	defer disconnect()
	connect := func(addr agentcfg.Address) {
		t := target(addr)
		if t == cur && bus != nil {
			return
		}
		disconnect()
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
		s, err := b.Subscribe(a.cfg.Dest.AgentCommand)
		if err != nil {
			b.Close()
			log.WithError(err).Warn("subscribe at " + t)
			return
		}
		bus, sub = b, s
		a.mu.Lock()
		a.conn = true
		a.gen++
		a.mu.Unlock()
		log.WithFields(logrus.Fields{"server": t, "failover_id": addr.FailoverID, "epoch": addr.FailoverEpoch}).Info("following address.yaml")
		a.report(ctx, bus, addr) // the new server knows us at once
	}
	if addr, ok := a.reload(true); ok {
		connect(addr)
	}
	var cmds <-chan broker.Message
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
			if addr, ok := a.reload(true); ok {
				connect(addr)
			}
		case <-tick.C():
			addr, ok := a.reload(false)
			if ok && (bus == nil || target(addr) != cur) {
				connect(addr)
			}
			if bus != nil {
				a.report(ctx, bus, addr)
			}
		case m, ok := <-cmds:
			if !ok {
				disconnect()
				continue
			}
			if addr, ok := a.command(m); ok && bus != nil {
				if tok := (failoverid.Token{ID: addr.FailoverID, Epoch: addr.FailoverEpoch}); tok != heard {
					heard = tok
					a.report(ctx, bus, addr)
				}
			}
		}
	}
}

// command applies the binding check to one command. It returns the file it
// checked against and whether the command was accepted.
func (a *Agent) command(m broker.Message) (agentcfg.Address, bool) {
	if err := a.cfg.Signer.Verify(m.Destination, m.Headers, m.Body); err != nil {
		a.cfg.Log.WithError(err).WithField("agent", a.cfg.ID).Debug("dropped a command")
		return agentcfg.Address{}, false
	}
	env, err := protocol.Decode(m.Headers)
	if err != nil {
		return agentcfg.Address{}, false
	}
	addr, _ := a.reload(false) // the file as it is now
	bound := failoverid.Token{ID: addr.FailoverID, Epoch: addr.FailoverEpoch}
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
	body, _ := json.Marshal(a.Status())
	// The token is forwarded with its server signature (failover_sig) and
	// the address that signature covers: a server fences itself only on a
	// token some server signed, never on this agent's word.
	env := protocol.Envelope{FailoverID: r.addr.FailoverID, Epoch: r.addr.FailoverEpoch, Node: a.cfg.ID, Role: "agent",
		FailoverSig: r.addr.FailoverSig, Bound: net.JoinHostPort(r.addr.StompInterface, strconv.Itoa(r.addr.StompPort))}
	if env.FailoverID == "" {
		env.FailoverID = "none"
	}
	h := env.Headers()
	a.cfg.Signer.Sign(a.cfg.Dest.AgentStatus, h, body)
	pctx, cancel := context.WithTimeout(r.ctx, a.cfg.Period)
	defer cancel()
	err := r.bus.Publish(pctx, a.cfg.Dest.AgentStatus, h, body)
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.gen == a.gen {
		a.conn = err == nil
	}
}
