package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/backup"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
)

// runBackup runs the backup role until it decides a takeover, then takes over.
func (n *Node) runBackup(ctx context.Context, loc string) error {
	n.mu.Lock()
	ch := n.next
	n.next = roleChange{}
	n.mu.Unlock()
	ch.Reason = nonEmpty(ch.Reason, "start")
	ch.Why = "backup of the primary at " + loc
	n.setRole(RoleBackup, ch)
	reason := ch.Reason
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
	rc := backup.RoleConfig{
		Node: n.cfg.Node, Token: failoverid.Token{ID: n.id, Epoch: st.Epoch}, Advertise: n.advertise,
		Period: n.cfg.Heartbeat.Period, ReplyPeriod: n.cfg.Heartbeat.ReplyPeriod, Window: n.cfg.Heartbeat.FailWindow,
		Maintenance: st.Maintenance, Dest: n.dest, Signer: n.signer, Clock: n.clock, Alive: n.notify.Alive,
		Instance: n.instance, StartedMS: n.startedMS,
		Log: n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "role": "backup"}), Seed: st.Peer,
		Heard: st.HeardPrimary == loc,
		OnPrimary: func(p failoverid.Peer) {
			if err := n.save(func(s *failoverid.State) { s.Peer = &p; s.HeardPrimary = loc }); err != nil {
				n.entry().WithError(err).Warn("could not remember the primary in state.json")
			}
		},
	}
	n.backupGroupConfig(&rc, loc)
	role := backup.NewRole(rc, link)
	n.mu.Lock()
	n.back = role
	n.mu.Unlock()
	// The primary's roster, kept in DATA/roster.json.
	if rsub, err := link.Subscribe(n.dest.Roster); err == nil {
		recv := &rosterReceiver{n: n}
		rdone := make(chan struct{})
		go func() {
			defer close(rdone)
			for m := range rsub.C() {
				if err := recv.receive(m, role.Status().Primary.FailoverID); err != nil {
					n.entry().WithError(err).Debug("roster message ignored")
				}
			}
		}()
		defer func() { rsub.Close(); <-rdone }()
	}
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
			n.files.Highest(wctx)
			select {
			case <-wctx.Done():
				return
			case <-t.C():
			}
		}
	}()
	end, err := role.Run(ctx)
	n.mu.Lock()
	n.peers = role.Status().Peers // for the next backup role (a follow)
	n.mu.Unlock()
	stopWarm()
	<-warmDone
	if end.Duplicate != "" {
		return fmt.Errorf("%w: %s", ErrDuplicateID, end.Duplicate)
	}
	if err == nil && end.Follow {
		return n.follow(end)
	}
	if err != nil || !end.Takeover {
		if err != nil && ctx.Err() == nil {
			return err
		}
		return nil
	}
	from := &failoverid.Peer{Node: end.Primary.Node, FailoverID: end.Primary.FailoverID, Epoch: end.Primary.Epoch, Address: loc}
	reason = "failover"
	if end.Switch {
		reason = "switchover"
	}
	n.entry().WithField("why", end.Reason).Warn("taking over as primary")
	n.takeoverBegan()
	n.setWhy(end.Reason)
	err = n.takeOver(ctx, reason, from, end.SeenEpoch)
	if errors.Is(err, errNotElected) {
		// Another server holds the group's election: the primary is alive
		// where etcd sees it, or a better backup won. Watch again.
		n.entry().WithError(err).Warn("not taking over: another server holds the group's election")
		n.mu.Lock()
		n.next = roleChange{Reason: "arbiter", Why: "another server holds the group's election"}
		n.mu.Unlock()
		return nil
	}
	return err
}

// takeOver runs (or resumes) the journaled takeover up to the point where
// the primary role starts; runPrimary finishes the journal. Every step is a
// mutation of the node's store: nothing here holds a copy of the state.
func (n *Node) takeOver(ctx context.Context, reason string, from *failoverid.Peer, seen uint64) error {
	n.mu.Lock()
	n.hookWarn = ""
	decision := n.decision
	n.mu.Unlock()
	ch := roleChange{Reason: nonEmpty(reason, "resume"), Why: "resuming an interrupted takeover", To: n.cfg.Node}
	if from != nil {
		ch.From = from.Node
		ch.Why = fmt.Sprintf("taking over from %s (%s): %s", nonEmpty(from.Node, from.Address), ch.Reason, decision)
	}
	n.setRole(RoleTakingOver, ch)
	if n.state().Takeover == nil {
		// The epoch must be above the primary's even if this backup never
		// heard it (it started during a primary stall): the managed files
		// carry the primary's epoch.
		if fe := n.files.Highest(ctx).Epoch; fe > seen {
			seen = fe
		}
	}
	// Keep the systemd watchdog fed while hooks and rewrites run.
	defer n.keepAlive(ctx)()
	_, err := backup.RunTakeover(ctx, backup.TakeoverConfig{
		Store: n.store(), Node: n.cfg.Node, ID: n.id,
		LocationFile: filepath.Join(n.cfg.DataDir, config.PrimaryLocationFile),
		BeforeHook:   n.cfg.Hooks.BeforeTakeover, HookTimeout: n.cfg.Hooks.Timeout,
		RunHook: n.opts.RunHook, NextEpoch: n.opts.NextEpoch, OnStep: n.takeoverStep, OnHookError: n.hookFailed,
		RewriteAgents: func(ctx context.Context, epoch uint64) {
			n.files.Rewrite(ctx, n.update(epoch))
		},
		Log: n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "role": "taking-over"}),
	}, reason, from, seen)
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("takeover: %w", err)
	}
	return nil
}

// finishTakeover records that heartbeats flow, runs after_takeover and
// closes the journal. It runs under the primary role's context: when the
// role ends (a fence, a switchover, a stop) the hook's process group is
// killed and nothing of the takeover is written any more.
func (n *Node) finishTakeover(rctx context.Context) {
	st := n.state()
	if st.Takeover == nil {
		return
	}
	epoch := st.Takeover.Epoch
	stillOurs := func(s *failoverid.State) error {
		if rctx.Err() != nil {
			return fmt.Errorf("the primary role ended: %w", rctx.Err())
		}
		if s.Takeover == nil || s.Takeover.Epoch != epoch {
			return backup.ErrSuperseded
		}
		return nil
	}
	st, err := n.store().Update(func(s *failoverid.State) error {
		if err := stillOurs(s); err != nil {
			return err
		}
		s.Takeover.Step = failoverid.StepPrimaryHeartbeat
		return nil
	})
	if err != nil {
		n.entry().WithError(err).Warn("takeover journal not advanced")
		return
	}
	j := *st.Takeover
	if err := n.opts.RunHook(rctx, "after_takeover", n.cfg.Hooks.AfterTakeover, n.cfg.Hooks.Timeout, backup.HookEnv(n.cfg.Node, n.id, &j), n.entry()); err != nil && rctx.Err() == nil {
		n.hookFailed("after_takeover", err)
	}
	_, err = n.store().Update(func(s *failoverid.State) error {
		if err := stillOurs(s); err != nil {
			return err
		}
		s.Takeover = nil
		s.Role = "primary"
		if j.From != nil {
			p := *j.From
			s.Peer = &p
		}
		return nil
	})
	if err != nil {
		n.entry().WithError(err).Warn("takeover journal not closed")
		return
	}
	n.mu.Lock()
	n.takeovers++
	n.mu.Unlock()
	n.entry().WithField("reason", j.Reason).Info("takeover complete: this node is the primary")
}

func (n *Node) update(epoch uint64) agentcfg.Update {
	host, portS, _ := net.SplitHostPort(n.advertise)
	port, err := strconv.Atoi(portS)
	if err != nil || host == "" {
		host, port = n.cfg.AdvertiseHostPort()
	}
	return agentcfg.Update{StompInterface: host, StompPort: port, FailoverID: n.id, Epoch: epoch,
		FailoverSig: n.signer.TokenSig(n.id, epoch, host, port)}
}
