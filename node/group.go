package node

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/backup"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/health"
	"github.com/tandem-ha/tandem/primary"
)

// Groups: the node runs its health checks (health.Checker) for as long as
// it runs, and tells the role it holds its effective priority whenever it
// changes. The managed service (service.start / service.stop) is the
// primary's singleton: started when the primary role starts, stopped when
// it ends, whatever the end (fence, switchover, clean stop); a failed
// start counts as a failed check.

func (n *Node) newChecker() *health.Checker {
	return health.New(n.cfg.Checks, healthPriority(n.cfg), n.cfg.Health, health.Options{Clock: n.clock, Probe: n.opts.Probe,
		Log: n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "component": "health"}), OnChange: n.healthChanged})
}

// healthPriority is the priority the checker scales: a manual server
// (priority 0) still needs to know whether its checks are down (a primary
// at 0 hands over).
func healthPriority(cfg *config.Config) int { return max(cfg.Priority, 1) }

// effective is this node's effective priority as others see it: 0 for a
// manual server (priority 0), else the checks' verdict.
func (n *Node) effective() int {
	if n.cfg.Priority == 0 {
		return 0
	}
	return n.checker.Effective()
}

// healthChanged hands the new effective priority to the role in place.
func (n *Node) healthChanged() {
	n.mu.Lock()
	prim, back := n.prim, n.back
	n.mu.Unlock()
	if prim != nil {
		prim.SetEffective(n.checker.Effective())
	}
	if back != nil {
		back.SetEffective(n.effective())
	}
}

// runChecks runs the health checks until ctx ends (owned by the node's group).
func (n *Node) runChecks(ctx context.Context) {
	if len(n.cfg.Checks) == 0 && n.cfg.Service.Start == "" {
		return
	}
	n.g.Go(func() { n.checker.Run(ctx) })
}

// startService runs service.start for a new primary term, under the role's
// context (a fence kills it); a failure marks the synthetic "service"
// check down, which at health: all makes the effective priority 0 and so
// hands the role to a healthy backup.
//
// After a planned switchover the old primary is alive and stops its
// service when it learns it was replaced, then replies as this primary's
// backup: the new term's start waits for that reply (bounded by
// fail_window + hooks.timeout), so the singleton never runs twice. After
// a failover the old primary is gone or fenced: the start is at once.
func (n *Node) startService(rctx context.Context, role *primary.Role, gaveUp string) {
	if n.cfg.Service.Start == "" {
		return
	}
	if gaveUp != "" {
		n.waitForBackup(rctx, role, gaveUp, n.cfg.Heartbeat.FailWindow+n.cfg.Hooks.Timeout)
	}
	err := n.opts.RunHook(rctx, "service.start", n.cfg.Service.Start, n.cfg.Hooks.Timeout, n.hookEnv(), n.entry())
	if rctx.Err() != nil {
		return
	}
	if err != nil {
		n.hookFailed("service.start", err)
		n.checker.SetService(true, err.Error())
		return
	}
	n.clearService()
}

func (n *Node) clearService() {
	if n.cfg.Service.Start != "" {
		n.checker.SetService(false, "")
	}
}

// groupStatus fills the group part of status.
func (n *Node) groupStatus(s *Status, prim *primary.Role, back *backup.Role) {
	s.Priority, s.EffectivePriority, s.Health = n.cfg.Priority, n.effective(), n.checker.Mode()
	s.Checks = []CheckStatus{}
	for _, c := range n.checker.Status() {
		cs := CheckStatus{Name: c.Name, Up: c.Up, Output: c.Output, Failures: c.Failures, Successes: c.Successes}
		if !c.Since.IsZero() {
			cs.Since = c.Since.UTC().Format(time.RFC3339)
		}
		s.Checks = append(s.Checks, cs)
		if !c.Up {
			s.Warnings = append(s.Warnings, fmt.Sprintf("health check %s is down: %s", c.Name, c.Output))
		}
	}
	s.Backups = []GroupMember{}
	if prim != nil {
		ps := prim.Status()
		for _, b := range ps.Backups {
			s.Backups = append(s.Backups, GroupMember{Node: b.Node, FailoverID: b.FailoverID, Address: b.Address, Epoch: b.Epoch, Priority: b.Priority,
				EffectivePriority: b.Effective, Maintenance: b.Maintenance, LastReplyAgeMS: b.LastReplyAgeMS})
		}
		s.Warnings = append(s.Warnings, equalPriorities("", 0, s.Backups)...) // the backups among themselves
	}
	if back == nil && s.Role == RoleBackup.String() {
		// Between two backup roles (following a new primary): the
		// setting still says whether this backup may take over.
		if why := backup.Ineligible(n.cfg.Priority == 0, n.effective()); why != "" {
			s.Ineligible = why
			s.Warnings = append(s.Warnings, "not eligible for automatic takeover: "+why)
		}
	}
	if back != nil {
		bs := back.Status()
		now := n.clock.Now()
		for _, p := range bs.Peers {
			s.Backups = append(s.Backups, GroupMember{Node: p.Node, FailoverID: p.FailoverID, Address: p.Address, Priority: p.Priority,
				EffectivePriority: p.Effective, Maintenance: p.Maintenance, LastReplyAgeMS: now.Sub(p.Seen).Milliseconds()})
		}
		rank := bs.Rank
		s.Rank, s.Ineligible = &rank, bs.Ineligible
		if s.Primary != nil {
			s.Primary.Priority, s.Primary.EffectivePriority = bs.Primary.Priority, bs.Primary.Effective
		}
		if bs.Ineligible != "" {
			s.Warnings = append(s.Warnings, "not eligible for automatic takeover: "+bs.Ineligible)
		}
		if bs.Holding != "" {
			s.Warnings = append(s.Warnings, bs.Holding)
		}
		s.Warnings = append(s.Warnings, equalPriorities(n.cfg.Node, n.cfg.Priority, s.Backups)...)
	}
}

// equalPriorities warns of backups configured with the same priority (a
// backup: as this one, own, or as each other): the election then falls back to who heard the
// last heartbeat, which surprises (keepalived #1515, #2323, #1528).
func equalPriorities(self string, own int, ms []GroupMember) []string {
	seen := map[int][]string{}
	if own > 0 {
		seen[own] = []string{self}
	}
	for _, m := range ms {
		if m.Priority > 0 {
			seen[m.Priority] = append(seen[m.Priority], m.Node)
		}
	}
	var w []string
	for p, nodes := range seen {
		if len(nodes) > 1 {
			sort.Strings(nodes)
			w = append(w, fmt.Sprintf("WARNING: equal configured priority %d on %s: the election then goes by the last heartbeat heard; give each server its own priority", p, strings.Join(nodes, ", ")))
		}
	}
	sort.Strings(w)
	return w
}

// waitForBackup waits until the server id replies as one of role's backups
// (or limit passes, or rctx ends).
func (n *Node) waitForBackup(rctx context.Context, role *primary.Role, id string, limit time.Duration) {
	t := n.clock.NewTicker(max(n.cfg.Heartbeat.Period/4, time.Millisecond))
	defer t.Stop()
	deadline := n.clock.After(limit)
	for {
		for _, b := range role.Status().Backups {
			if b.FailoverID == id {
				return
			}
		}
		select {
		case <-rctx.Done():
			return
		case <-deadline:
			n.entry().WithFields(logrus.Fields{"old_primary": id, "waited": limit.String()}).Warn("service.start: the old primary did not reply as a backup in time (its service.stop may still run); starting anyway")
			return
		case <-t.C():
		}
	}
}

// stopService runs service.stop when the primary role has ended (bounded
// by hooks.timeout; it runs even when the node is stopping).
func (n *Node) stopService() {
	if n.cfg.Service.Stop == "" {
		n.clearService()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Hooks.Timeout+time.Second)
	defer cancel()
	if err := n.opts.RunHook(ctx, "service.stop", n.cfg.Service.Stop, n.cfg.Hooks.Timeout, n.hookEnv(), n.entry()); err != nil {
		n.hookFailed("service.stop", err)
	}
	// A failed start belonged to that term: as a backup this node is
	// judged by its checks again (the new primary never hands the role
	// straight back to it: GaveUp).
	n.checker.SetService(false, "")
}

func (n *Node) hookEnv() []string {
	return []string{"TANDEM_NODE=" + n.cfg.Node, "TANDEM_FAILOVER_ID=" + n.id, fmt.Sprintf("TANDEM_EPOCH=%d", n.state().Epoch)}
}

// backupGroupConfig fills the group part of a backup role's config.
func (n *Node) backupGroupConfig(rc *backup.RoleConfig, loc string) {
	rc.Priority, rc.Manual, rc.Location = n.cfg.Priority, n.cfg.Priority == 0, loc
	rc.ReplySeq = &n.replySeq
	n.mu.Lock()
	rc.Peers = n.peers
	n.mu.Unlock()
	rc.Effective = n.effective
	rc.Preempt, rc.PreemptDelay = n.cfg.Preempt, n.cfg.PreemptDelay
	rc.DialPeer = func(ctx context.Context, addr string) (broker.Bus, error) {
		return n.dial(ctx, n.brokerURL(addr), false)
	}
	if n.cfg.HeartbeatBroker != "" {
		// A broker outage is not a dead primary: its silence counts only
		// while this backup's own link to the broker is up, and the
		// primary's own broker is the second path.
		rc.SecondPath = loc
		rc.ChannelUp = func() bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			return n.channel.up
		}
	}
}

// follow points primary_location at the group's new primary (a peer took
// over, or a switchover went to a third server): this backup watches it
// from now on, with no operator step.
func (n *Node) follow(end backup.End) error {
	p := end.Primary
	if err := config.WritePrimaryLocation(n.cfg.DataDir, p.Advertise); err != nil {
		return fmt.Errorf("following the new primary %s: %w", p.Advertise, err)
	}
	loc, _, err := config.ReadPrimaryLocation(n.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("following the new primary: %w", err)
	}
	peer := failoverid.Peer{Node: p.Node, FailoverID: p.FailoverID, Epoch: p.Epoch, Address: p.Advertise}
	if err := n.save(func(s *failoverid.State) { s.Peer = &peer; s.HeardPrimary = loc }); err != nil {
		return err
	}
	n.mu.Lock()
	n.next = roleChange{Reason: "follow", To: p.Node}
	n.mu.Unlock()
	n.entry().WithFields(logrus.Fields{"primary": p.Node, "address": p.Advertise, "epoch": p.Epoch}).Warn("the group has a new primary: this backup follows it (primary_location rewritten)")
	return nil
}
