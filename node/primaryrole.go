package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/primary"
	"github.com/tandem-ha/tandem/protocol"
)

// runPrimary runs the primary role until it ends. done is true when the node
// should stop (context ended, or fenced and then stopped).
//
// The role's work runs under rctx, which is cancelled the instant
// primary.Role.Run returns, whatever the end; the role's goroutines
// (after_takeover) are waited for before the end is acted on, so on_fenced
// never runs beside after_takeover and nothing of the old term is written
// after the fence.
func (n *Node) runPrimary(ctx context.Context) (done bool, err error) {
	st := n.state()
	if st.Epoch == 0 {
		if err := n.save(func(s *failoverid.State) { s.Epoch = 1 }); err != nil {
			return true, err
		}
		st = n.state()
		n.entry().Info("fresh primary: epoch 1")
	}
	epochMoved := false
	if n.arb != nil {
		// With an arbiter the primary acts only while it holds the
		// group's election; winning it back may raise the epoch.
		want := st.Epoch
		if j := st.Takeover; j != nil {
			want = j.Epoch
		}
		var epoch uint64
		epoch, err = n.acquireTerm(ctx, want)
		if err != nil {
			if ctx.Err() != nil {
				return true, nil
			}
			return true, err
		}
		if epoch != want {
			if err := n.termEpoch(epoch); err != nil {
				n.arb.drop(true)
				return true, err
			}
			st = n.state()
			n.entry().WithFields(logrus.Fields{"from": want, "to": epoch}).Warn("the group's epoch moved while this server held no term: acting at the term's epoch")
			epochMoved = true
		}
	}
	if st.Takeover == nil || epochMoved {
		// Claim: files with no epoch or a lower one point at us (also those
		// of a takeover being finished, when its epoch moved with the term).
		n.files.Rewrite(ctx, n.update(st.Epoch))
	}
	ch := roleChange{Reason: "start", Why: fmt.Sprintf("primary since its start at epoch %d", st.Epoch)}
	if j := st.Takeover; j != nil {
		n.mu.Lock()
		decision := n.decision
		n.mu.Unlock()
		ch = roleChange{Reason: j.Reason, To: n.cfg.Node, Why: fmt.Sprintf("took over at epoch %d (%s)", j.Epoch, j.Reason)}
		if j.From != nil {
			ch.From = j.From.Node
			ch.Why = fmt.Sprintf("took over from %s at epoch %d (%s)", nonEmpty(j.From.Node, j.From.Address), j.Epoch, j.Reason)
		}
		if decision != "" {
			ch.Why += ": " + decision
		}
	}
	if ro, err := LoadRoster(n.cfg.DataDir); err != nil {
		n.entry().WithError(err).Warn("the roster of agents is unreadable: agents on their own hosts are known once they report")
	} else {
		ids := make(map[string]bool, len(ro.Agents))
		for _, a := range ro.Agents {
			ids[a.ID] = true
		}
		n.mu.Lock()
		n.inherited = ids
		n.mu.Unlock()
	}
	n.setRole(RolePrimary, ch)

	// The role's context outlives a stop request by as long as a clean
	// stop's handover takes (stopHandover); it ends with the role.
	rctx, endRole := context.WithCancel(context.WithoutCancel(ctx))
	defer endRole()
	var work sync.WaitGroup // the role's own goroutines
	defer work.Wait()

	var hb, agents broker.Bus
	ownLink, err := n.dial(rctx, n.ownURL, n.cfg.HeartbeatBroker == "")
	if err != nil {
		return true, err
	}
	defer n.closeLater(ownLink)
	agents, hb = ownLink, ownLink
	if n.cfg.HeartbeatBroker != "" {
		l, err := n.dial(rctx, n.cfg.HeartbeatBroker, true)
		if err != nil {
			return true, err
		}
		defer n.closeLater(l)
		hb = l
	}
	// The notify link, to the embedded broker of the peer this server
	// remembers (after a takeover: the replaced primary's), whatever the
	// heartbeat channel: agents still bound to that server are heard and
	// rebound there, and, with the embedded heartbeat channel, a primary
	// that was only frozen learns there that it was replaced (with an
	// external heartbeat_broker that server hears the channel itself, and
	// the link carries no heartbeats).
	var notify []broker.Bus
	peerAddr := ""
	if st.Takeover != nil && st.Takeover.From != nil {
		peerAddr = st.Takeover.From.Address
	} else if st.Peer != nil {
		peerAddr = st.Peer.Address
	}
	if peerAddr != "" && peerAddr != n.advertise {
		lb := n.dialLazy(rctx, n.brokerURL(peerAddr))
		defer lb.Close()
		notify = append(notify, lb)
	}
	upd := n.update(st.Epoch)
	token := failoverid.Token{ID: n.id, Epoch: st.Epoch}
	finishing := st.Takeover != nil
	gaveUp := ""
	if j := st.Takeover; j != nil && j.Reason == "switchover" && j.From != nil {
		gaveUp = j.From.FailoverID
	}
	var role *primary.Role // Started runs inside role.Run, after the assignment
	pc := primary.Config{
		Priority: n.cfg.Priority, GaveUp: gaveUp, SecondPath: n.cfg.HeartbeatBroker != "",
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
			return n.files.Scan(token, &upd)
		},
		OnPeer: func(p failoverid.Peer) {
			if err := n.save(func(s *failoverid.State) { s.Peer = &p }); err != nil {
				n.entry().WithError(err).Warn("could not remember the backup in state.json")
			}
		},
		Started: func() {
			// The managed service is the primary's singleton.
			work.Add(1)
			go func() {
				defer work.Done()
				n.startService(rctx, role, gaveUp)
			}()
			if finishing {
				n.takeoverStep(failoverid.StepPrimaryHeartbeat)
				// after_takeover may take a while: not on the heartbeat loop.
				work.Add(1)
				go func() {
					defer work.Done()
					n.finishTakeover(rctx)
				}()
			}
		},
		Maintenance: func() bool { return n.state().Maintenance },
		Ping:        true,
		Sent: func(kind string, env protocol.Envelope) {
			if n.cfg.EventLogMessages {
				n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: kind, FailoverID: env.FailoverID, Epoch: env.Epoch, Seq: env.Seq, Role: "primary"})
			}
		},
		Alive:  n.notify.Alive,
		Notify: notify,
	}
	if n.arb != nil {
		pc.Term = termGate{n.arb}
		if n.cfg.Arbiter.Failsafe {
			pc.Failsafe = n.cfg.Heartbeat.FailWindow - 2*n.cfg.Heartbeat.Period
		}
		pc.OnHandover = func(to string) {
			// Resign at once (off the role's loop): the backup can win.
			work.Add(1)
			go func() {
				defer work.Done()
				n.arb.drop(true)
				n.entry().WithField("to", to).Info("resigned the group's election for the handover")
			}()
		}
		if pc.Failsafe > 0 {
			work.Add(1)
			go func() {
				defer work.Done()
				n.reclaimInFailsafe(rctx, st.Epoch)
			}()
		}
	}
	role = primary.New(pc, hb, agents)
	role.SetEffective(n.checker.Effective())
	n.mu.Lock()
	n.prim = role
	n.mu.Unlock()
	// The roster goes to the backups every few periods: after a takeover
	// the new primary knows whom to expect.
	work.Add(1)
	go func() {
		defer work.Done()
		t := n.clock.NewTicker(rosterEvery(n.cfg.Heartbeat.Period))
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C():
				if role.Status().BackupConfigured {
					n.sendRoster(rctx, hb, role.Agents(), n.id, st.Epoch, uint64(time.Now().UnixMilli()))
				}
			}
		}
	}()
	runDone := make(chan struct{})
	work.Add(1)
	go func() {
		defer work.Done()
		select {
		case <-runDone:
		case <-ctx.Done():
			n.stopHandover(role, runDone)
			endRole()
		}
	}()
	end, err := role.Run(rctx)
	close(runDone)
	// The role has ended: stop its work before anything else happens.
	endRole()
	n.mu.Lock()
	n.prim = nil
	n.mu.Unlock()
	work.Wait()
	// The primary's term is over, whatever the end: the managed service
	// stops before anything else (on_fenced, becoming a backup).
	n.stopService()
	if end.Kind == primary.Fenced {
		n.arb.drop(true) // a fenced server never holds the election (it stays up)
	}
	if err != nil {
		return true, err
	}
	switch end.Kind {
	case primary.Fenced:
		return true, n.fenced(ctx, end)
	case primary.HandedOver:
		n.mu.Lock()
		n.next = roleChange{Reason: "switchover", From: n.cfg.Node, To: end.ByNode}
		n.mu.Unlock()
		err := n.becomeBackupOf(end)
		if err == nil && ctx.Err() != nil {
			// A clean stop's handover: this process ends here; say so, as
			// the backup it comes back as.
			n.setRole(RoleBackup, roleChange{Reason: "clean-stop", From: n.cfg.Node, To: end.ByNode,
				Why: "stopped cleanly after handing over to " + nonEmpty(end.ByNode, end.ByAdvertise)})
		}
		return false, err
	case primary.Duplicate:
		return true, fmt.Errorf("%w: %s", ErrDuplicateID, end.Reason)
	case primary.Deposed:
		// The arbiter's term is over: nothing was sent since. Win it back
		// (or learn who took over) before acting again.
		n.arb.drop(false)
		n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: eventlog.KindDeposed, FailoverID: n.id, Epoch: st.Epoch, Detail: end.Reason})
		n.entry().WithField("why", end.Reason).Error("stopped acting as primary: " + end.Reason)
		return false, nil
	}
	return true, nil
}

// maxStopHandover bounds how long a clean stop waits for the backup to take
// over (systemd's default stop timeout is 90 s).
const maxStopHandover = 45 * time.Second

// stopHandover is a clean stop's (SIGTERM) handover: unless maintenance is
// on (an upgrade restarts the primary on purpose) or no backup replies, the
// primary hands over to its backup at once — a planned switchover — and
// waits, bounded, until the backup holds the role; the role then ends as
// HandedOver and this node comes back as the new primary's backup. Without
// it the agents would wait a whole fail_window and the node need a rejoin.
func (n *Node) stopHandover(role *primary.Role, runDone <-chan struct{}) {
	if n.opts.StopHandover < 0 {
		return
	}
	if n.state().Maintenance {
		n.entry().Info("clean stop in maintenance mode: no handover")
		return
	}
	if n.state().Takeover != nil {
		n.entry().Info("clean stop while the takeover is being finished: no handover")
		return
	}
	st := role.Status()
	if st.BackupMaintenance {
		n.entry().Info("clean stop while the backup is in maintenance mode: no handover")
		return
	}
	if !st.BackupConfigured || st.Backup == nil {
		n.entry().Warn("clean stop with no backup replying: no handover (the agents wait for this server's return)")
		return
	}
	limit := min(n.cfg.Heartbeat.FailWindow+n.cfg.Hooks.Timeout, maxStopHandover)
	if n.opts.StopHandover > 0 {
		limit = n.opts.StopHandover
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	n.entry().WithFields(logrus.Fields{"to": st.Backup.Node, "limit": limit.String()}).Warn("clean stop: handing over to the backup first")
	if err := role.Switchover(ctx, ""); err != nil {
		n.entry().WithError(err).Warn("clean stop: the handover could not start; stopping without it")
		return
	}
	select {
	case <-runDone:
	case <-ctx.Done():
		n.entry().WithField("limit", limit.String()).Warn("clean stop: the backup did not take over in time; stopping without the handover")
	}
}
