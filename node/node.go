// Package node runs one tandem server process: it owns the data dir, the
// embedded broker, the admin API, and switches roles — backup → taking-over
// → primary, primary → fenced, primary → backup after a planned switchover.
package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/backup"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
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
	// ErrNotPrimary / ErrNotBackup: a control request for the wrong role.
	ErrNotPrimary = errors.New("node: not the active primary")
)

// Node is one server process.
type Node struct {
	cfg    *config.Config
	log    *logrus.Logger
	clock  clock.Clock
	dest   protocol.Destinations
	signer *protocol.Signer
	files  *agentFiles
	notify *sdnotify.Notifier
	events *eventlog.Log

	// serverTLS secures the embedded broker (nil: plain STOMP); clientTLS
	// verifies brokers this server dials over TLS (nil: system roots);
	// ownTLS is for the primary's own link to its own broker.
	serverTLS, clientTLS, ownTLS *tls.Config
	ownURL                       string

	// AdminAddr is the bound admin address once Run is serving (for tests
	// that use port 0). Read it after Ready is closed.
	AdminAddr  string
	BrokerAddr string
	ready      chan struct{}
	// advertise is cfg.Advertise with a port of 0 replaced by the port the
	// broker bound (tests listen on port 0).
	advertise string

	wg sync.WaitGroup // goroutines the node starts (after_takeover)

	// instance and startedMS identify this process on the wire.
	instance  string
	startedMS int64

	mu        sync.Mutex
	id        string
	st        failoverid.State
	role      string
	prim      *primary.Role
	back      *backup.Role
	hbURL     string
	hbUp      bool
	started   time.Time
	takeovers uint64
	runbook   string
	hbRecv    uint64
}

// New prepares a node; nothing happens until Run.
func New(cfg *config.Config, log *logrus.Logger) (*Node, error) {
	key, err := cfg.Secret()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	serverTLS, err := cfg.ServerTLS()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	clientTLS, err := cfg.ClientTLS()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	return &Node{
		cfg: cfg, log: log, clock: clock.Real{},
		serverTLS: serverTLS, clientTLS: clientTLS, ownTLS: trustOnly(serverTLS),
		dest:      protocol.NewDestinations(cfg.DestinationPrefix),
		signer:    protocol.NewSigner(key),
		files:     newAgentFiles(cfg.Agents, log.WithField("node", cfg.Node)),
		notify:    sdnotify.FromEnv(),
		ready:     make(chan struct{}),
		role:      "starting",
		instance:  newInstance(),
		startedMS: time.Now().UnixMilli(),
	}, nil
}

// Ready is closed once the broker and admin API are serving.
func (n *Node) Ready() <-chan struct{} { return n.ready }

func (n *Node) entry() *logrus.Entry {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "role": n.role, "epoch": n.st.Epoch})
}

func (n *Node) setRole(role string) { n.setRoleWithRunbook(role, "") }

// setRoleWithRunbook changes the role and, when runbook is not empty, the
// operator's next step in the same instant: status never shows a fenced
// node without its way out.
func (n *Node) setRoleWithRunbook(role, runbook string) {
	n.mu.Lock()
	changed := n.role != role
	n.role = role
	if runbook != "" {
		n.runbook = runbook
	}
	n.mu.Unlock()
	if changed {
		if role == "backup" || role == "fenced" {
			n.files.endTerm()
		}
		st := n.state()
		n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: "role", Role: role, FailoverID: n.id, Epoch: st.Epoch})
		n.entry().Info("role is now " + role)
		_ = n.notify.Send("STATUS=" + role)
	}
}

func (n *Node) save(mut func(s *failoverid.State)) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	next := n.st
	mut(&next)
	if err := failoverid.SaveState(n.cfg.DataDir, next); err != nil {
		return err
	}
	n.st = next
	return nil
}

func (n *Node) state() failoverid.State {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.st
}

// Run runs the server until ctx ends. It returns ErrFenced (wrapped) when it
// refuses to start as primary, ErrBadInput for malformed data-dir files.
func (n *Node) Run(ctx context.Context) error {
	if err := os.MkdirAll(n.cfg.DataDir, 0o700); err != nil {
		return err
	}
	unlock, err := failoverid.Lock(n.cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	id, created, err := failoverid.LoadOrCreateID(n.cfg.DataDir)
	if err != nil {
		return badInput(err)
	}
	st, err := failoverid.LoadState(n.cfg.DataDir)
	if err != nil {
		return badInput(err)
	}
	loc, isBackup, err := config.ReadPrimaryLocation(n.cfg.DataDir)
	if err != nil {
		return badInput(err)
	}
	n.mu.Lock()
	n.id, n.st, n.started = id, st, n.clock.Now()
	n.mu.Unlock()
	if n.events, err = eventlog.Open(n.cfg.EventLog); err != nil {
		return fmt.Errorf("event_log: %w", err)
	}
	defer n.events.Close()
	if created {
		n.entry().WithField("failover_id", id).Info("created a new failover id")
	}

	// A server about to act as primary looks for a higher epoch first.
	if st.Takeover == nil && !isBackup {
		if err := n.startupFenceCheck(ctx); err != nil {
			return err
		}
	}

	srv, err := broker.StartServer(broker.ServerConfig{
		Listen: n.cfg.Listen, Login: n.cfg.Broker.Login, Passcode: n.cfg.Broker.Passcode,
		TLS: n.serverTLS, Log: n.log.WithField("component", "broker"),
	})
	if err != nil {
		return fmt.Errorf("embedded broker: %w", err)
	}
	defer srv.Close()
	n.BrokerAddr = srv.Addr()
	n.advertise = effectiveAdvertise(n.cfg.Advertise, srv.Addr())

	actx, stopAdmin := context.WithCancel(context.Background())
	adminAddr, adminDone, err := ServeAdmin(actx, n.cfg.Admin, AdminHandler(n))
	if err != nil {
		stopAdmin()
		return err
	}
	defer func() { stopAdmin(); adminDone() }()
	n.AdminAddr = adminAddr
	n.entry().WithFields(logrus.Fields{"broker": srv.Addr(), "admin": adminAddr, "failover_id": id}).Info("serving")
	close(n.ready)
	_ = n.notify.Send("READY=1")

	own := n.brokerURL(loopback(srv.Addr()))
	n.ownURL = own
	defer n.wg.Wait()
	for ctx.Err() == nil {
		st := n.state()
		loc, isBackup, err = config.ReadPrimaryLocation(n.cfg.DataDir)
		if err != nil {
			return badInput(err)
		}
		switch {
		case st.Takeover != nil && failoverid.StepIndex(st.Takeover.Step) < failoverid.StepIndex(failoverid.StepLocationDormant):
			// An interrupted takeover resumes before anything else (I7).
			if err := n.takeOver(ctx, "", nil, 0); err != nil {
				return err
			}
		case st.Takeover == nil && isBackup:
			if err := n.runBackup(ctx, loc); err != nil {
				return err
			}
		default:
			done, err := n.runPrimary(ctx, own)
			if err != nil || done {
				return err
			}
		}
	}
	n.entry().Info("stopping")
	return nil
}

// effectiveAdvertise replaces port 0 in advertise with the bound port.
func effectiveAdvertise(advertise, bound string) string {
	host, port, err := net.SplitHostPort(advertise)
	if err != nil || port != "0" {
		return advertise
	}
	_, bport, err := net.SplitHostPort(bound)
	if err != nil {
		return advertise
	}
	return net.JoinHostPort(host, bport)
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

// closeLater closes a link without waiting: closing a link to a frozen broker
// can block until a timeout, and role changes must not wait for it.
func (n *Node) closeLater(l *broker.Link) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		l.Close()
	}()
}

// lazyBus is a publish-only bus whose link is dialed in the background, so a
// frozen or unreachable peer never delays the role that uses it. Until the
// link exists, Publish reports broker.ErrNotConnected.
type lazyBus struct {
	mu   sync.Mutex
	link *broker.Link
	done bool
}

func (n *Node) dialLazy(ctx context.Context, url string) *lazyBus {
	lb := &lazyBus{}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		l, err := n.dial(ctx, url, false)
		if err != nil {
			return
		}
		lb.mu.Lock()
		defer lb.mu.Unlock()
		if lb.done {
			go l.Close()
			return
		}
		lb.link = l
	}()
	return lb
}

func (b *lazyBus) Publish(ctx context.Context, dest string, h map[string]string, body []byte) error {
	b.mu.Lock()
	l := b.link
	b.mu.Unlock()
	if l == nil {
		return broker.ErrNotConnected
	}
	return l.Publish(ctx, dest, h, body)
}

func (b *lazyBus) Subscribe(string) (broker.Subscription, error) {
	return nil, errors.New("node: lazy notify bus is publish-only")
}

// Close releases the link (in the background) and stops a pending dial from
// keeping its link.
func (b *lazyBus) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	if b.link != nil {
		go b.link.Close()
		b.link = nil
	}
	return nil
}

// newInstance is a random per-process nonce.
func newInstance() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return hex.EncodeToString(b[:])
}

func badInput(err error) error { return fmt.Errorf("%w: %v", ErrBadInput, err) }

// loopback turns a listen address into one this host can dial.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

func (n *Node) heartbeatURL(primaryLoc string) string {
	if n.cfg.HeartbeatBroker != "" {
		return n.cfg.HeartbeatBroker
	}
	return n.brokerURL(primaryLoc)
}

// ownLinkBuffer is the per-subscription buffer of the primary's link to its
// own broker: at least one status report per agent of a 10,000-agent fleet.
const ownLinkBuffer = 16384

// brokerURL is the URL of an embedded broker (ours or the peer's) at
// host:port: a pair is configured alike, so both speak TLS when we do.
func (n *Node) brokerURL(hostport string) string {
	if n.serverTLS != nil {
		return "stomp+ssl://" + hostport
	}
	return "stomp://" + hostport
}

// trustOnly is the client side of a link to our own TLS broker: it reaches
// it on a loopback address its certificate need not name, so instead of a
// host name check it accepts exactly the certificate the broker serves.
func trustOnly(srv *tls.Config) *tls.Config {
	if srv == nil || len(srv.Certificates) == 0 || len(srv.Certificates[0].Certificate) == 0 {
		return nil
	}
	own := srv.Certificates[0].Certificate[0]
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the exact match below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) > 0 && bytes.Equal(raw[0], own) {
				return nil
			}
			return errors.New("the broker on our own address did not present our own certificate")
		},
	}
}

func (n *Node) dial(ctx context.Context, url string, track bool) (*broker.Link, error) {
	cfg := broker.LinkConfig{
		URL: url, Login: n.cfg.Broker.Login, Passcode: n.cfg.Broker.Passcode, VHost: n.cfg.Broker.Vhost,
		Log: n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "link": url}),
	}
	if broker.URLUsesTLS(url) {
		cfg.TLS = n.clientTLS
		if url == n.ownURL && n.ownTLS != nil {
			cfg.TLS = n.ownTLS
		}
	}
	if url == n.ownURL {
		// The primary's own link carries agent statuses, which come in a
		// burst (every agent reports on the first ping after a takeover):
		// room for a large fleet's burst before the oldest are dropped.
		cfg.BufferSize = ownLinkBuffer
	}
	if track {
		n.mu.Lock()
		n.hbURL, n.hbUp = url, false
		n.mu.Unlock()
		cfg.OnState = func(s broker.State) {
			n.mu.Lock()
			n.hbUp = s.State == broker.StateConnected
			n.mu.Unlock()
		}
	}
	return broker.Dial(ctx, cfg)
}

// startupFenceCheck refuses to start as primary when a higher epoch exists:
// recorded in state.json, in a managed address.yaml, or on the known peer's
// heartbeat channel.
func (n *Node) startupFenceCheck(ctx context.Context) error {
	st := n.state()
	if st.FencedBy != nil && st.FencedBy.Epoch > st.Epoch {
		return fmt.Errorf("%w: this node was fenced by %s at epoch %d (ours %d); make it a backup with `tandem rejoin --config FILE --primary HOST:PORT`",
			ErrFenced, st.FencedBy.ID, st.FencedBy.Epoch, st.Epoch)
	}
	higher, err := n.files.scan(failoverid.Token{ID: n.id, Epoch: st.Epoch}, nil)
	if err != nil {
		return badInput(err)
	}
	if higher != nil {
		return fmt.Errorf("%w: a managed address.yaml is at epoch %d from %s, above ours (%d): another server took over; make this node its backup with `tandem rejoin --config FILE --primary HOST:PORT`",
			ErrFenced, higher.Epoch, higher.ID, st.Epoch)
	}
	if st.Peer == nil || st.Peer.Address == "" {
		return nil
	}
	wait := n.cfg.Heartbeat.Period + n.cfg.Heartbeat.Period/2
	if wait > 20*time.Second {
		wait = 20 * time.Second
	}
	url := n.heartbeatURL(st.Peer.Address)
	n.entry().WithFields(logrus.Fields{"peer": st.Peer.Node, "channel": url, "wait": wait.String()}).Info("checking the peer's heartbeat channel for a higher epoch before starting as primary")
	cctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	link, err := n.dial(cctx, url, false)
	if err != nil {
		return nil // unreachable peer: nothing to learn
	}
	defer link.Close()
	sub, err := link.Subscribe(n.dest.Heartbeat)
	if err != nil {
		return nil
	}
	defer sub.Close()
	for {
		select {
		case <-cctx.Done():
			return nil
		case m, ok := <-sub.C():
			if !ok {
				return nil
			}
			if n.signer.Verify(m.Destination, m.Headers, m.Body) != nil {
				continue
			}
			env, err := protocol.Decode(m.Headers)
			if err != nil || env.FailoverID == n.id {
				continue
			}
			if env.Epoch > st.Epoch {
				return fmt.Errorf("%w: server %s heartbeats as primary at epoch %d, above ours (%d); make this node its backup with `tandem rejoin --config FILE --primary %s`",
					ErrFenced, env.Node, env.Epoch, st.Epoch, env.Advertise)
			}
		}
	}
}

func (n *Node) update(epoch uint64) agentcfg.Update {
	host, portS, _ := net.SplitHostPort(n.advertise)
	port, err := strconv.Atoi(portS)
	if err != nil || host == "" {
		host, port = n.cfg.AdvertiseHostPort()
	}
	return agentcfg.Update{StompInterface: host, StompPort: port, FailoverID: n.id, Epoch: epoch}
}

// runBackup runs the backup role until it decides a takeover, then takes over.
func (n *Node) runBackup(ctx context.Context, loc string) error {
	n.setRole("backup")
	st := n.state()
	if st.Role != "backup" {
		if err := n.save(func(s *failoverid.State) { s.Role = "backup" }); err != nil {
			return err
		}
	}
	url := n.heartbeatURL(loc)
	link, err := n.dial(ctx, url, true)
	if err != nil {
		return fmt.Errorf("heartbeat channel %s: %w", url, err)
	}
	defer n.closeLater(link)
	role := backup.NewRole(backup.RoleConfig{
		Node: n.cfg.Node, Token: failoverid.Token{ID: n.id, Epoch: st.Epoch}, Advertise: n.advertise,
		Period: n.cfg.Heartbeat.Period, ReplyPeriod: n.cfg.Heartbeat.ReplyPeriod, Window: n.cfg.Heartbeat.FailWindow,
		Maintenance: st.Maintenance, Dest: n.dest, Signer: n.signer, Clock: n.clock, Alive: n.notify.Alive,
		Instance: n.instance, StartedMS: n.startedMS,
		Log: n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "role": "backup"}), Seed: st.Peer,
		OnPrimary: func(p failoverid.Peer) {
			if err := n.save(func(s *failoverid.State) { s.Peer = &p }); err != nil {
				n.entry().WithError(err).Warn("could not remember the primary in state.json")
			}
		},
	}, link)
	n.mu.Lock()
	n.back = role
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.back = nil
		n.mu.Unlock()
	}()
	// Keep the agent-file survey warm while waiting, so that choosing the
	// takeover epoch (which reads every file) costs stats, not parses.
	wctx, stopWarm := context.WithCancel(ctx)
	warmDone := make(chan struct{})
	go func() {
		defer close(warmDone)
		t := n.clock.NewTicker(warmEvery(n.cfg.Heartbeat.Period))
		defer t.Stop()
		for {
			n.files.highestEpoch(wctx)
			select {
			case <-wctx.Done():
				return
			case <-t.C():
			}
		}
	}()
	end, err := role.Run(ctx)
	stopWarm()
	<-warmDone
	if end.Duplicate != "" {
		return fmt.Errorf("%w: %s", ErrDuplicateID, end.Duplicate)
	}
	if err != nil || !end.Takeover {
		if err != nil && ctx.Err() == nil {
			return err
		}
		return nil
	}
	from := &failoverid.Peer{Node: end.Primary.Node, FailoverID: end.Primary.FailoverID, Epoch: end.Primary.Epoch, Address: loc}
	reason := "failover"
	if end.Switch {
		reason = "switchover"
	}
	n.entry().WithField("why", end.Reason).Warn("taking over as primary")
	return n.takeOver(ctx, reason, from, end.SeenEpoch)
}

// takeOver runs (or resumes) the journaled takeover up to the point where
// the primary role starts; runPrimary finishes the journal.
func (n *Node) takeOver(ctx context.Context, reason string, from *failoverid.Peer, seen uint64) error {
	n.setRole("taking-over")
	st := n.state()
	if st.Takeover == nil {
		// The epoch must be above the primary's even if this backup never
		// heard it (it started during a primary stall): the managed files
		// carry the primary's epoch.
		if fe := n.files.highestEpoch(ctx); fe > seen {
			seen = fe
		}
	}
	// Keep the systemd watchdog fed while hooks and rewrites run.
	tctx, stopPings := context.WithCancel(ctx)
	pingsDone := make(chan struct{})
	go func() {
		defer close(pingsDone)
		t := n.clock.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-tctx.Done():
				return
			case <-t.C():
				n.notify.Alive()
			}
		}
	}()
	defer func() { stopPings(); <-pingsDone }()
	err := backup.RunTakeover(ctx, backup.TakeoverConfig{
		DataDir: n.cfg.DataDir, Node: n.cfg.Node, ID: n.id,
		LocationFile: filepath.Join(n.cfg.DataDir, config.PrimaryLocationFile),
		BeforeHook:   n.cfg.Hooks.BeforeTakeover, HookTimeout: n.cfg.Hooks.Timeout,
		RewriteAgents: func(ctx context.Context, epoch uint64) {
			n.mu.Lock()
			n.st.Epoch = epoch // status shows the new epoch while rewriting
			n.mu.Unlock()
			n.files.rewrite(ctx, n.update(epoch))
		},
		Log: n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "role": "taking-over"}),
	}, &st, reason, from, seen)
	n.mu.Lock()
	n.st = st
	n.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("takeover: %w", err)
	}
	return nil
}

// runPrimary runs the primary role until it ends. done is true when the node
// should stop (context ended or fenced and then stopped).
func (n *Node) runPrimary(ctx context.Context, own string) (done bool, err error) {
	st := n.state()
	if st.Epoch == 0 {
		if err := n.save(func(s *failoverid.State) { s.Epoch = 1 }); err != nil {
			return true, err
		}
		st = n.state()
		n.entry().Info("fresh primary: epoch 1")
	}
	if st.Takeover == nil {
		// Claim: files with no epoch or a lower one point at us.
		n.files.rewrite(ctx, n.update(st.Epoch))
	}
	n.setRole("primary")

	var hb, agents broker.Bus
	ownLink, err := n.dial(ctx, own, n.cfg.HeartbeatBroker == "")
	if err != nil {
		return true, err
	}
	defer n.closeLater(ownLink)
	agents, hb = ownLink, ownLink
	if n.cfg.HeartbeatBroker != "" {
		l, err := n.dial(ctx, n.cfg.HeartbeatBroker, true)
		if err != nil {
			return true, err
		}
		defer n.closeLater(l)
		hb = l
	}
	var notify []broker.Bus
	if n.cfg.HeartbeatBroker == "" {
		peerAddr := ""
		if st.Takeover != nil && st.Takeover.From != nil {
			peerAddr = st.Takeover.From.Address
		} else if st.Peer != nil {
			peerAddr = st.Peer.Address
		}
		if peerAddr != "" && peerAddr != n.advertise {
			lb := n.dialLazy(ctx, n.brokerURL(peerAddr))
			defer lb.Close()
			notify = append(notify, lb)
		}
	}
	upd := n.update(st.Epoch)
	token := failoverid.Token{ID: n.id, Epoch: st.Epoch}
	finishing := st.Takeover != nil
	role := primary.New(primary.Config{
		Node: n.cfg.Node, Token: token, Advertise: n.advertise,
		Period: n.cfg.Heartbeat.Period, ReplyPeriod: n.cfg.Heartbeat.ReplyPeriod,
		// The backup takes over at once on a handover, then runs its
		// before_takeover hook (up to hooks.timeout) and rewrites the files.
		HandoverTimeout: n.cfg.Heartbeat.FailWindow + n.cfg.Hooks.Timeout,
		Dest:            n.dest, Signer: n.signer, Clock: n.clock,
		Log:      n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "role": "primary", "epoch": st.Epoch}),
		SeqBase:  uint64(time.Now().UnixMilli()),
		Instance: n.instance, StartedMS: n.startedMS,
		CheckFiles: func() (*failoverid.Token, error) {
			return n.files.scan(token, &upd)
		},
		OnPeer: func(p failoverid.Peer) {
			if err := n.save(func(s *failoverid.State) { s.Peer = &p }); err != nil {
				n.entry().WithError(err).Warn("could not remember the backup in state.json")
			}
		},
		Started: func() {
			if finishing {
				// after_takeover may take a while: not on the heartbeat loop.
				n.wg.Add(1)
				go func() {
					defer n.wg.Done()
					n.finishTakeover(ctx)
				}()
			}
		},
		Maintenance: func() bool { return n.state().Maintenance },
		Ping:        true,
		Sent: func(kind string, env protocol.Envelope) {
			n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: kind, FailoverID: env.FailoverID, Epoch: env.Epoch, Seq: env.Seq, Role: "primary"})
		},
		Alive:  n.notify.Alive,
		Notify: notify,
	}, hb, agents)
	n.mu.Lock()
	n.prim = role
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.prim = nil
		n.mu.Unlock()
	}()
	end, err := role.Run(ctx)
	if err != nil {
		return true, err
	}
	switch end.Kind {
	case primary.Fenced:
		return true, n.fenced(ctx, end)
	case primary.HandedOver:
		return false, n.becomeBackupOf(end)
	case primary.Duplicate:
		return true, fmt.Errorf("%w: %s", ErrDuplicateID, end.Reason)
	}
	return true, nil
}

// finishTakeover records that heartbeats flow, runs after_takeover and
// closes the journal.
func (n *Node) finishTakeover(ctx context.Context) {
	st := n.state()
	if st.Takeover == nil {
		return
	}
	j := *st.Takeover
	j.Step = failoverid.StepPrimaryHeartbeat
	if err := n.save(func(s *failoverid.State) { s.Takeover = &j }); err != nil {
		n.entry().WithError(err).Error("takeover journal")
		return
	}
	_ = hooks.Run(ctx, "after_takeover", n.cfg.Hooks.AfterTakeover, n.cfg.Hooks.Timeout, backup.HookEnv(n.cfg.Node, n.id, &j), n.entry())
	err := n.save(func(s *failoverid.State) {
		if s.Takeover == nil {
			return // superseded by a switchover in the meantime
		}
		s.Takeover = nil
		s.Role = "primary"
		if j.From != nil {
			p := *j.From
			s.Peer = &p
		}
	})
	if err != nil {
		n.entry().WithError(err).Error("takeover journal")
		return
	}
	n.mu.Lock()
	n.takeovers++
	n.mu.Unlock()
	n.entry().WithField("reason", j.Reason).Info("takeover complete: this node is the primary")
}

// fenced stops acting as primary for good (until an operator rejoins it),
// keeps answering status, and runs on_fenced.
func (n *Node) fenced(ctx context.Context, end primary.End) error {
	by := end.By
	if end.ByAdvertise == "" {
		// Fenced by a file or an agent's report: the files bound to the
		// higher token name where its server is.
		end.ByAdvertise = n.files.addressOf(by)
	}
	rb := fmt.Sprintf("this node was replaced by %s at epoch %d. Stop it, then make it a backup: tandem rejoin --config FILE --primary %s (see docs/runbook.md, 'after a network split')",
		nonEmpty(end.ByNode, by.ID), by.Epoch, nonEmpty(end.ByAdvertise, "NEW_PRIMARY_HOST:PORT"))
	// Persisted first, so that status shows fenced_by as soon as the role.
	if err := n.save(func(s *failoverid.State) { s.FencedBy = &by; s.Role = "fenced" }); err != nil {
		n.entry().WithError(err).Error("could not record the fence in state.json")
	}
	n.setRoleWithRunbook("fenced", rb)
	n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: "fenced", FailoverID: by.ID, Epoch: by.Epoch, Detail: end.Reason})
	n.entry().WithField("runbook", rb).Error("FENCED: " + end.Reason)
	env := []string{"TANDEM_NODE=" + n.cfg.Node, "TANDEM_FAILOVER_ID=" + n.id, "TANDEM_EPOCH=" + strconv.FormatUint(n.state().Epoch, 10),
		"TANDEM_FENCED_BY=" + by.ID, "TANDEM_FENCED_BY_EPOCH=" + strconv.FormatUint(by.Epoch, 10)}
	_ = hooks.Run(ctx, "on_fenced", n.cfg.Hooks.OnFenced, n.cfg.Hooks.Timeout, env, n.entry())
	// Stay up to answer status; keep the watchdog fed.
	t := n.clock.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			n.notify.Alive()
		}
	}
}

// becomeBackupOf turns a primary that handed over into the new primary's backup.
func (n *Node) becomeBackupOf(end primary.End) error {
	if end.ByAdvertise == "" {
		end.ByAdvertise = n.files.addressOf(end.By)
	}
	if end.ByAdvertise == "" {
		return fmt.Errorf("switchover: the new primary did not say its address")
	}
	if err := config.WritePrimaryLocation(n.cfg.DataDir, end.ByAdvertise); err != nil {
		return fmt.Errorf("switchover: %w", err)
	}
	p := failoverid.Peer{Node: end.ByNode, FailoverID: end.By.ID, Epoch: end.By.Epoch, Address: end.ByAdvertise}
	// A takeover journal still open (after_takeover not done) is superseded.
	if err := n.save(func(s *failoverid.State) { s.Role = "backup"; s.Peer = &p; s.Takeover = nil }); err != nil {
		return err
	}
	n.entry().WithField("primary", end.ByAdvertise).Info("switchover done: this node is now the backup")
	return nil
}

func nonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
