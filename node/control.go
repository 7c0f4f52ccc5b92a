package node

import (
	"context"
	"fmt"

	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/version"
	"github.com/tandem-ha/tandem/primary"
)

// Status implements Controller.
func (n *Node) Status() Status {
	st := n.state()
	n.mu.Lock()
	s := Status{
		Node: n.cfg.Node, Role: n.role.String(), FailoverID: n.id, Epoch: st.Epoch,
		Maintenance: st.Maintenance, Advertise: n.advertise, Listen: n.BrokerAddr,
		HeartbeatChannel: ChannelInfo{URL: n.channel.url, Connected: n.channel.up},
		Runbook:          n.runbook, Warnings: []string{}, Version: version.Version,
	}
	if !n.started.IsZero() {
		s.UptimeMS = n.clock.Now().Sub(n.started).Milliseconds()
	}
	if j := st.Takeover; j != nil {
		s.Takeover = &Takeover{Epoch: j.Epoch, Reason: j.Reason, Step: j.Step}
	}
	if f := st.FencedBy; f != nil && n.role == RoleFenced {
		s.FencedBy = &PeerStatus{FailoverID: f.ID, Epoch: f.Epoch}
	}
	prim, back := n.prim, n.back
	n.mu.Unlock()

	s.Agents = n.files.Status()
	if prim != nil {
		ps := prim.Status()
		s.BackupConfigured = ps.BackupConfigured
		if ps.Backup != nil {
			s.Backup = &PeerStatus{Node: ps.Backup.Node, FailoverID: ps.Backup.FailoverID, Epoch: ps.Backup.Epoch, Address: ps.Backup.Address, AgeMS: ps.LastReplyAgeMS}
		}
		s.Warnings = append(s.Warnings, ps.Warnings...)
		s.Agents.Connected = prim.ConnectedAgents()
	}
	if back != nil {
		bs := back.Status()
		s.Maintenance = bs.Maintenance
		s.Primary = &PrimaryStatus{Node: bs.Primary.Node, FailoverID: bs.Primary.FailoverID, Epoch: bs.Primary.Epoch,
			Advertise: bs.Primary.Advertise, LastHeartbeatAgeMS: bs.LastHeartbeatAgeMS, SilentForMS: bs.SilentForMS}
		if s.Maintenance {
			s.Warnings = append(s.Warnings, "maintenance mode: automatic failover is paused (tandem maintenance off to resume)")
		}
	}
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
func (n *Node) Switchover(ctx context.Context) error {
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
	return prim.Switchover(ctx)
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
