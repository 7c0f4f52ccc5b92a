package node

import (
	"context"
	"fmt"
	"time"

	"github.com/tandem-ha/tandem/backup"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/version"
	"github.com/tandem-ha/tandem/primary"
)

// Status implements Controller.
func (n *Node) Status() Status {
	st := n.state()
	n.mu.Lock()
	why := n.channel.why
	s := Status{
		Node: n.cfg.Node, Role: n.role.String(), FailoverID: n.id, Epoch: st.Epoch,
		Maintenance: st.Maintenance, Advertise: n.advertise, Listen: n.BrokerAddr,
		HeartbeatChannel: ChannelInfo{URL: n.channel.url, Connected: n.channel.up},
		Runbook:          n.runbook, Warnings: []string{}, Version: version.Version,
		Heartbeat: HeartbeatTiming{PeriodMS: n.cfg.Heartbeat.Period.Milliseconds(), ReplyPeriodMS: n.cfg.Heartbeat.ReplyPeriod.Milliseconds(),
			FailWindowMS: n.cfg.Heartbeat.FailWindow.Milliseconds()},
	}
	if !n.started.IsZero() {
		s.UptimeMS = n.clock.Now().Sub(n.started).Milliseconds()
	}
	if !n.roleSince.IsZero() {
		s.Since, s.Why = n.roleSince.UTC().Format(time.RFC3339), n.roleWhy
	}
	if n.hookWarn != "" {
		s.Warnings = append(s.Warnings, n.hookWarn)
	}
	if j := st.Takeover; j != nil {
		s.Takeover = &Takeover{Epoch: j.Epoch, Reason: j.Reason, Step: j.Step}
	}
	if f := st.FencedBy; f != nil && n.role == RoleFenced {
		s.FencedBy = &PeerStatus{FailoverID: f.ID, Epoch: f.Epoch, Node: n.fencedBy.Node, Address: n.fencedBy.Address}
	}
	prim, back := n.prim, n.back
	n.mu.Unlock()

	s.Agents = n.files.Status()
	failsafe := false
	if prim != nil {
		ps := prim.Status()
		failsafe = ps.Failsafe
		s.BackupConfigured = ps.BackupConfigured
		if ps.Backup != nil {
			s.Backup = &PeerStatus{Node: ps.Backup.Node, FailoverID: ps.Backup.FailoverID, Epoch: ps.Backup.Epoch, Address: ps.Backup.Address, AgeMS: ps.LastReplyAgeMS, Maintenance: ps.BackupMaintenance}
			if ps.BackupMaintenance && ps.BackupConfigured {
				s.Warnings = append(s.Warnings, "maintenance mode on the backup "+ps.Backup.Node+": automatic failover is paused (tandem maintenance off there to resume)")
			}
		}
		s.Warnings = append(s.Warnings, ps.Warnings...)
		if ps.Tampered > 0 {
			s.Warnings = append(s.Warnings, fmt.Sprintf("%d agent report(s) claimed a token above ours without a valid server signature: ignored (a tampered address.yaml or a forged report); see the log", ps.Tampered))
		}
		if ps.AgentSignatureFails > 0 {
			s.Warnings = append(s.Warnings, fmt.Sprintf("%d agent status report(s) failed verification (the last from agent %q): that agent's --secret-file differs from this server's secret", ps.AgentSignatureFails, ps.LastBadAgent))
		}
		s.Agents.Connected = prim.ConnectedAgents()
		s.Agents.Remote, s.Agents.Bound = n.rosterCounts(prim.Agents(), s.FailoverID, s.Epoch)
	} else if s.Role == RolePrimary.String() {
		s.Agents.Remote, s.Agents.Bound = n.rosterCounts(nil, s.FailoverID, s.Epoch) // the role is starting
	}
	var arbWarn []string
	s.Arbiter, arbWarn = n.arbiterStatus(failsafe)
	s.Warnings = append(s.Warnings, arbWarn...)
	if back != nil {
		bs := back.Status()
		s.Maintenance = bs.Maintenance
		s.Primary = &PrimaryStatus{Node: bs.Primary.Node, FailoverID: bs.Primary.FailoverID, Epoch: bs.Primary.Epoch,
			Advertise: bs.Primary.Advertise, LastHeartbeatAgeMS: bs.LastHeartbeatAgeMS, SilentForMS: bs.SilentForMS,
			Heard: bs.Heard, TakeoverInMS: bs.TakeoverInMS, Maintenance: bs.PrimaryMaintenance}
		if s.Maintenance {
			s.Warnings = append(s.Warnings, "maintenance mode: automatic failover is paused (tandem maintenance off to resume)")
		}
		s.Warnings = append(s.Warnings, n.backupWarnings(bs, s.HeartbeatChannel, why)...)
	}
	n.groupStatus(&s, prim, back)
	s.Warnings = append(s.Warnings, n.configWarnings(s)...)
	if n.cfg.Insecure {
		s.Warnings = append(s.Warnings, "insecure: true: no group key; anyone who reaches the broker can speak for a server (tandem keygen, then signing_key)")
	}
	if s.Agents.Tampered > 0 {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%d agent file(s) claim a token without a valid server signature (tampered?); they fence nobody (tandem agents list)", s.Agents.Tampered))
	}
	if s.Agents.Failed > 0 {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%d agent file(s) could not be rewritten; retried every check (tandem agents list)", s.Agents.Failed))
	}
	if s.Role == "fenced" && s.Runbook != "" {
		s.Warnings = append(s.Warnings, "fenced: "+s.Runbook)
	}
	return s
}

// Metrics implements Controller.
func (n *Node) Metrics() Metrics {
	n.mu.Lock()
	prim, back := n.prim, n.back
	m := Metrics{Takeovers: n.takeovers}
	n.mu.Unlock()
	m.AgentRewritesOK, m.AgentRewritesFail = n.files.Totals()
	if prim != nil {
		ps := prim.Status()
		m.HeartbeatsSent = ps.HeartbeatsSent
		m.MessagesDropped += ps.Dropped
		m.SignatureFailures += ps.SignatureFails
	}
	if back != nil {
		bs := back.Status()
		m.HeartbeatsReceived = bs.Received
		m.HeartbeatsIgnored = bs.Ignored
		m.MessagesDropped += bs.Dropped
		m.SignatureFailures += bs.SignatureFails
	}
	return m
}

// Switchover implements Controller: only the active primary can hand over.
func (n *Node) Switchover(ctx context.Context, to string) error {
	n.mu.Lock()
	prim := n.prim
	role := n.role
	n.mu.Unlock()
	if prim == nil || role != RolePrimary {
		return fmt.Errorf("%w (this node is %s): run switchover on the primary", ErrNotPrimary, role)
	}
	if n.state().Takeover != nil {
		return fmt.Errorf("this node is still completing its takeover (after_takeover hook); try again in a moment")
	}
	if to != "" && to == n.cfg.Node {
		return fmt.Errorf("switchover --to %s: that is this node, already the primary", to)
	}
	return prim.Switchover(ctx, to)
}

// SetMaintenance implements Controller. The flag is persisted so that a
// restart during an upgrade keeps failover paused.
func (n *Node) SetMaintenance(on bool) error {
	if err := n.save(func(s *failoverid.State) { s.Maintenance = on }); err != nil {
		return err
	}
	n.mu.Lock()
	back := n.back
	n.mu.Unlock()
	if back != nil {
		back.SetMaintenance(on)
	}
	n.entry().WithField("maintenance", on).Info("maintenance mode set")
	n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: eventlog.KindMaintenance, FailoverID: n.id, Epoch: n.state().Epoch,
		Detail: map[bool]string{true: "on", false: "off"}[on]})
	return nil
}

// Agents implements Controller: the live agent registry (primary only).
func (n *Node) Agents() []primary.AgentView {
	n.mu.Lock()
	prim := n.prim
	n.mu.Unlock()
	if prim == nil {
		return []primary.AgentView{}
	}
	return prim.Agents()
}

// backupWarnings say what a backup sees when it cannot take over, or when
// it is about to: a primary never heard (with the cause it can tell) and
// the countdown while a heard primary is silent.
func (n *Node) backupWarnings(bs backup.Status, ch ChannelInfo, why string) []string {
	var w []string
	loc, _, _ := config.ReadPrimaryLocation(n.cfg.DataDir)
	if !bs.Heard {
		cause := "nothing received on it yet"
		switch {
		case !ch.Connected:
			cause = "the heartbeat channel " + ch.URL + " is not connected"
			if why != "" {
				cause += " (" + why + ")"
			}
		case bs.SignatureFails > 0:
			cause = fmt.Sprintf("%d badly signed or unsigned messages (another group key, signing_key or secret?)", bs.SignatureFails)
		case bs.Unknown != "":
			cause = "heartbeats from another server: " + bs.Unknown
		case bs.Unechoed > 0:
			cause = fmt.Sprintf("%d heartbeats that do not answer this backup's replies (does the primary hear this backup?)", bs.Unechoed)
		}
		w = append(w, fmt.Sprintf("never heard a valid heartbeat from the primary at %s: %s; no automatic takeover until it is heard (check primary_location, the group key and the network)", nonEmpty(loc, "?"), cause))
		return w
	}
	if bs.TakeoverInMS >= 0 && bs.SilentForMS > 2*n.cfg.Heartbeat.Period.Milliseconds() {
		w = append(w, fmt.Sprintf("the primary has been silent for %s: automatic takeover in %s (tandem maintenance on to prevent it)",
			(time.Duration(bs.SilentForMS)*time.Millisecond).Round(100*time.Millisecond), (time.Duration(bs.TakeoverInMS)*time.Millisecond).Round(100*time.Millisecond)))
	}
	return w
}

// rosterCounts are status's agents.remote and agents.bound on a primary:
// the agents of the roster it inherited (DATA/roster.json) and of its own
// registry, and how many of them report to it at its token.
func (n *Node) rosterCounts(live []primary.AgentView, id string, epoch uint64) (remote, bound int) {
	n.mu.Lock()
	seen := make(map[string]bool, len(n.inherited)+len(live))
	for id := range n.inherited {
		seen[id] = true
	}
	n.mu.Unlock()
	for _, a := range live {
		seen[a.ID] = true
		if a.Connected && a.FailoverID == id && a.Epoch == epoch {
			bound++
		}
	}
	return len(seen), bound
}
