// Package node runs one tandem server process: it owns the data dir, the
// embedded broker, the admin API, and switches roles — backup → taking-over
// → primary, primary → fenced, primary → backup after a planned switchover.
//
// One engine: the node's state store (failoverid.Store) is the only writer
// of state.json; the takeover, operator commands, fences and hooks hand it
// mutations. Each role runs under a context that ends the instant the role
// ends, and the role's goroutines (after_takeover) have stopped before the
// next role's side effects (on_fenced) start. What a node uses from the
// outside world — the bus dialer, the embedded broker, the state store's
// disk, the agent fleet, the epoch source, the clock and the hook runner —
// comes in as Options, so whole nodes run in unit tests on broker.MemHub.
package node

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/backup"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/health"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/hooks"
	"github.com/tandem-ha/tandem/internal/sdnotify"
	"github.com/tandem-ha/tandem/primary"
	"github.com/tandem-ha/tandem/protocol"
)

// Sentinel errors; cmd/tandem maps them to exit codes.
var (
	// ErrFenced: refused to start as primary because a higher epoch exists (exit 3).
	ErrFenced = errors.New("node: refused to act as primary: a higher epoch exists")
	// ErrBadInput: a file in the data dir is malformed (exit 2).
	ErrBadInput = errors.New("node: bad input")
	// ErrDuplicateID: another, earlier-started server uses this failover id
	// (a cloned VM); this one stops (exit 2).
	ErrDuplicateID = errors.New("node: duplicate failover_id")
	// ErrNotPrimary: a control request for the wrong role.
	ErrNotPrimary = errors.New("node: not the active primary")
	// ErrTakingOver: an operator command that cannot be applied while a
	// takeover is under way.
	ErrTakingOver = errors.New("node: a takeover is in progress")
)

// Options are the node's seams. The zero value is production: real
// STOMP links, the embedded broker, state.json on disk, the agent files the
// config's globs match, epochs from the token arithmetic, the system clock
// and hooks run by /bin/sh.
type Options struct {
	// Dial opens a bus to a broker URL (default: broker.Dial).
	Dial Dialer
	// Broker starts the embedded broker (default: broker.StartServer).
	Broker BrokerStarter
	// Store seams the state store's disk writes (fault injection).
	Store failoverid.StoreOptions
	// Fleet is the set of agents this server repoints on a takeover
	// (default: the address.yaml files the agents globs match).
	Fleet Fleet
	// NextEpoch picks a takeover's epoch (default failoverid.NextEpoch):
	// the seam an arbiter plugs into.
	NextEpoch func(ctx context.Context, own, seen uint64) (uint64, error)
	// Clock is the time source (default: the system clock).
	Clock clock.Clock
	// RunHook runs the operator's hooks (default hooks.Run).
	RunHook hooks.Func
	// Notify speaks sd_notify (default: from $NOTIFY_SOCKET).
	Notify *sdnotify.Notifier
	// Probe runs one health check (default health.Probe).
	Probe health.ProbeFunc
	// StopHandover bounds a clean stop's handover to the backup (0: up to
	// fail_window + hooks.timeout, at most 45 s; negative: none, a stop is
	// like a kill — for tests that stop nodes to fail them over).
	StopHandover time.Duration
}

// Node is one server process.
type Node struct {
	cfg    *config.Config
	opts   Options
	log    *logrus.Logger
	clock  clock.Clock
	dest   protocol.Destinations
	signer *protocol.Signer
	files  Fleet
	notify *sdnotify.Notifier
	events *eventlog.Log
	// stateStore is the one writer of state.json, set once by Run (read
	// through store(): status may be asked before Run opened it).
	stateStore atomic.Pointer[failoverid.Store]

	// serverTLS secures the embedded broker (nil: plain STOMP); clientTLS
	// verifies brokers this server dials over TLS (nil: system roots);
	// ownTLS is for the primary's own link to its own broker.
	serverTLS, clientTLS, ownTLS *tls.Config
	ownURL                       string
	// ownLocal, when the embedded broker offers it (broker.Server.Local),
	// makes the production dialer's link to ownURL an in-process bus. Set
	// with ownURL, before any role dials.
	ownLocal localBroker

	// AdminAddr is the bound admin address once Run is serving (for tests
	// that use port 0). Read it after Ready is closed.
	AdminAddr  string
	BrokerAddr string
	ready      chan struct{}
	// advertise is cfg.Advertise with a port of 0 replaced by the port the
	// broker bound (tests listen on port 0).
	advertise string

	g group // every goroutine the node starts
	// realListeners: the broker and admin listen on real sockets (not a
	// test's stand-in), so their addresses are checked before start.
	realListeners bool
	tel           *Telemetry    // takeover timings (metrics, event log)
	arb           *arbiterState // the group's election in etcd (nil: no arbiter)
	checker       *health.Checker
	replySeq      atomic.Uint64     // the backup roles' reply numbering
	peers         []backup.PeerInfo // the group's backups the last backup role knew

	// instance and startedMS identify this process on the wire.
	instance  string
	startedMS int64

	mu        sync.Mutex
	id        string
	role      Role
	prim      *primary.Role
	back      *backup.Role
	channel   channelState
	started   time.Time
	takeovers uint64
	runbook   string
	roleSince time.Time       // when the current role began
	roleWhy   string          // why
	decision  string          // why the takeover under way was decided
	hookWarn  string          // the last failed hook, until the next takeover
	inherited map[string]bool // the roster's agent ids when this primary started
	fencedBy  failoverid.Peer // who fenced this node (node, address), for status
	// next is why the next role begins, when the last one ended on
	// purpose (switchover, clean-stop).
	next roleChange
}

// New prepares a node; nothing happens until Run.
func New(cfg *config.Config, log *logrus.Logger, opts Options) (*Node, error) {
	keys, err := cfg.GroupKeys()
	if err != nil {
		return nil, badInput(err)
	}
	serverTLS, err := cfg.ServerTLS()
	if err != nil {
		return nil, badInput(err)
	}
	clientTLS, err := cfg.ClientTLS()
	if err != nil {
		return nil, badInput(err)
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.RunHook == nil {
		opts.RunHook = hooks.Run
	}
	electedEpochs := opts.NextEpoch == nil && cfg.Arbiter.Enabled()
	if opts.NextEpoch == nil {
		opts.NextEpoch = func(_ context.Context, own, seen uint64) (uint64, error) { return failoverid.NextEpoch(own, seen) }
	}
	if opts.Notify == nil {
		opts.Notify = sdnotify.FromEnv()
	}
	dest := protocol.NewDestinations(cfg.DestinationPrefix)
	signer := protocol.NewGroupSigner(dest, keys)
	if opts.Fleet == nil {
		opts.Fleet = newAgentFiles(cfg.Agents, log.WithField("node", cfg.Node), fileOptions{maxSize: cfg.MaxAgentFileSize, trust: fileTrust(signer)})
	}
	n := &Node{
		cfg: cfg, opts: opts, log: log, clock: opts.Clock,
		serverTLS: serverTLS, clientTLS: clientTLS, ownTLS: trustOnly(serverTLS),
		dest:      dest,
		signer:    signer,
		files:     opts.Fleet,
		notify:    opts.Notify,
		ready:     make(chan struct{}),
		instance:  newInstance(),
		startedMS: time.Now().UnixMilli(),
		tel:       NewTelemetry(cfg.Heartbeat.Period, cfg.Heartbeat.FailWindow),
	}
	n.checker = n.newChecker()
	if cfg.Arbiter.Enabled() {
		n.tel.EnableArbiter()
		if n.arb, err = n.newArbiter(); err != nil {
			return nil, err
		}
		if electedEpochs {
			n.opts.NextEpoch = n.electedEpoch
		}
	}
	if n.opts.Dial == nil {
		n.opts.Dial = n.dialSTOMP
	}
	if n.opts.Broker == nil {
		n.opts.Broker = startEmbedded
		n.realListeners = true
	}
	return n, nil
}

// Ready is closed once the broker and admin API are serving.
func (n *Node) Ready() <-chan struct{} { return n.ready }

func (n *Node) entry() *logrus.Entry {
	n.mu.Lock()
	role := n.role
	n.mu.Unlock()
	return n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "role": role.String(), "epoch": n.state().Epoch})
}

// roleChange says why a node's role changed, for the logs, status, and
// the event log that tandem history reads.
type roleChange struct {
	Reason   string // start, failover, switchover, clean-stop, fence, resume
	Why      string // one line for status: "took over from a at epoch 3 ..."
	From, To string // the old and new primary, when the primary role moved
	Runbook  string // the operator's next step, when there is one
}

// setRole changes the role and, in the same instant, why (and the runbook
// line, when any): status never shows a fenced node without its way out.
func (n *Node) setRole(role Role, ch roleChange) {
	n.mu.Lock()
	changed := n.role != role
	n.role = role
	if ch.Runbook != "" {
		n.runbook = ch.Runbook
	}
	if changed {
		n.roleSince, n.roleWhy = n.clock.Now(), ch.Why
	}
	n.mu.Unlock()
	if changed {
		if role == RoleBackup || role == RoleFenced {
			n.files.EndTerm()
		}
		n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: eventlog.KindRole, Role: role.String(), FailoverID: n.id, Epoch: n.state().Epoch,
			Reason: ch.Reason, From: ch.From, To: ch.To, Detail: ch.Why})
		n.entry().WithFields(logrus.Fields{"reason": ch.Reason, "why": ch.Why}).Info("role is now " + role.String())
		_ = n.notify.Send("STATUS=" + role.String())
	}
}

// setWhy keeps the reason a takeover was decided, for the role change it
// leads to.
func (n *Node) setWhy(why string) {
	n.mu.Lock()
	n.decision = why
	n.mu.Unlock()
}

// hookFailed keeps a failed hook for status until the next takeover.
func (n *Node) hookFailed(name string, err error) {
	n.mu.Lock()
	n.hookWarn = fmt.Sprintf("hook %s failed at %s: %v (see the log; cleared at the next takeover)", name, n.clock.Now().UTC().Format(time.RFC3339), err)
	n.mu.Unlock()
}

// errNotStarted: a mutation before Run opened the state store.
var errNotStarted = errors.New("node: not started yet")

func (n *Node) store() *failoverid.Store { return n.stateStore.Load() }

// save hands the store a mutation that cannot fail on its own.
func (n *Node) save(mut func(s *failoverid.State)) error {
	st := n.store()
	if st == nil {
		return errNotStarted
	}
	_, err := st.Update(func(s *failoverid.State) error { mut(s); return nil })
	return err
}

func (n *Node) state() failoverid.State {
	st := n.store()
	if st == nil {
		return failoverid.State{}
	}
	return st.Get()
}

// Run runs the server until ctx ends. It returns ErrFenced (wrapped) when it
// refuses to start as primary, ErrBadInput for malformed data-dir files.
func (n *Node) Run(ctx context.Context) error {
	if n.arb != nil {
		defer n.arb.cli.Close() // made by New; closed whatever Run's end
	}
	if err := n.preflight(); err != nil {
		return err
	}
	for _, w := range n.configWarnings(Status{Role: "primary", Agents: AgentsStatus{Managed: 1}}) {
		n.entry().Warn(w)
	}
	if err := os.MkdirAll(n.cfg.DataDir, 0o700); err != nil {
		return badInput(fmt.Errorf("data_dir %s: %w", n.cfg.DataDir, err))
	}
	unlock, err := failoverid.Lock(n.cfg.DataDir)
	if err != nil {
		if errors.Is(err, failoverid.ErrLocked) {
			return err
		}
		return badInput(fmt.Errorf("data_dir %s: %w", n.cfg.DataDir, err))
	}
	defer unlock()
	defer n.files.Close()
	id, created, err := failoverid.LoadOrCreateID(n.cfg.DataDir)
	if err != nil {
		return badInput(err)
	}
	store, err := failoverid.OpenStore(n.cfg.DataDir, n.opts.Store)
	if err != nil {
		return badInput(err)
	}
	n.stateStore.Store(store)
	_, isBackup, err := config.ReadPrimaryLocation(n.cfg.DataDir)
	if err != nil {
		return badInput(err)
	}
	n.mu.Lock()
	n.id, n.started = id, n.clock.Now()
	n.mu.Unlock()
	if n.events, err = eventlog.Open(n.cfg.EventLogFile()); err != nil {
		return fmt.Errorf("event_log %s: %w", n.cfg.EventLogFile(), err)
	}
	defer n.events.Close()
	if created {
		n.entry().WithField("failover_id", id).Info("created a new failover id")
	}

	// A server about to act as primary looks for a higher epoch first.
	if nextStep(n.state(), isBackup) == stepPrimary && n.state().Takeover == nil {
		if err := n.startupFenceCheck(ctx); err != nil {
			n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: eventlog.KindRefused, FailoverID: id, Epoch: n.state().Epoch, Detail: err.Error()})
			return err
		}
	}

	srv, err := n.opts.Broker(n.brokerConfig())
	if err != nil {
		return fmt.Errorf("embedded broker (listen %s): %w", n.cfg.Listen, err)
	}
	defer srv.Close()
	n.mu.Lock() // status may be asked already (tests)
	n.BrokerAddr = srv.Addr()
	n.advertise = effectiveAdvertise(n.cfg.Advertise, srv.Addr())
	n.mu.Unlock()

	adminOpts, err := n.adminOptions() // DATA/admin.token, created on the first start
	if err != nil {
		return err
	}
	actx, stopAdmin := context.WithCancel(context.Background())
	adminAddr, adminDone, err := ServeAdmin(actx, n.cfg.Admin, AdminHandler(n, adminOpts...))
	if err != nil {
		stopAdmin()
		return err
	}
	defer func() { stopAdmin(); adminDone() }()
	n.AdminAddr = adminAddr
	n.entry().WithFields(logrus.Fields{"broker": srv.Addr(), "admin": adminAddr, "failover_id": id}).Info("serving")
	close(n.ready)
	_ = n.notify.Send("READY=1")

	n.ownURL = n.brokerURL(loopback(srv.Addr()))
	n.ownLocal, _ = srv.(localBroker)
	defer n.g.Wait()
	hctx, stopChecks := context.WithCancel(ctx)
	defer stopChecks()
	n.runChecks(hctx)
	if n.arb != nil {
		// A term still held at the end is resigned (a clean stop frees the
		// election at once; a crash leaves it to expire).
		defer n.arb.drop(true)
		n.g.Go(func() { n.watchArbiter(hctx) })
	}
	for ctx.Err() == nil {
		loc, isBackup, err := config.ReadPrimaryLocation(n.cfg.DataDir)
		if err != nil {
			return badInput(err)
		}
		switch nextStep(n.state(), isBackup) {
		case stepResumeTakeover:
			if err := n.takeOver(ctx, "", nil, 0); err != nil {
				return err
			}
		case stepBackup:
			if err := n.runBackup(ctx, loc); err != nil {
				return err
			}
		case stepPrimary:
			done, err := n.runPrimary(ctx)
			if err != nil || done {
				return err
			}
		}
	}
	n.entry().WithField("cause", context.Cause(ctx)).Info("stopping")
	return nil
}

// group starts goroutines and waits for them: every goroutine a node starts
// goes through it, so Run returns only when they have ended.
type group struct{ wg sync.WaitGroup }

func (g *group) Go(f func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
}

func (g *group) Wait() { g.wg.Wait() }

// keepAlive feeds the systemd watchdog every second until ctx ends, while
// long steps (hooks, rewrites) run on the caller's goroutine.
func (n *Node) keepAlive(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := n.clock.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
				n.notify.Alive()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// warmEvery is how often a backup re-surveys the agent files: every 10
// periods, between 1 s and 30 s.
func warmEvery(period time.Duration) time.Duration {
	d := 10 * period
	if d < time.Second {
		d = time.Second
	}
	if d > 30*time.Second {
		d = 30 * time.Second
	}
	return d
}

// newInstance is a random per-process nonce.
func newInstance() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return hex.EncodeToString(b[:])
}

func badInput(err error) error { return fmt.Errorf("%w: %w", ErrBadInput, err) }

func nonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
