package node

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/primary"
	"github.com/tandem-ha/tandem/protocol"
)

// startupFenceCheck refuses to start as primary when a higher token exists:
// recorded in state.json, in a managed address.yaml, or on the known peer's
// heartbeat channel.
func (n *Node) startupFenceCheck(ctx context.Context) error {
	st := n.state()
	own := failoverid.Token{ID: n.id, Epoch: st.Epoch}
	if st.FencedBy != nil && st.FencedBy.Above(own) {
		return fmt.Errorf("%w: this node was fenced by %s at epoch %d (ours %d); make it a backup with `tandem rejoin --config FILE --primary HOST:PORT`",
			ErrFenced, st.FencedBy.ID, st.FencedBy.Epoch, st.Epoch)
	}
	higher, err := n.files.Scan(own, nil)
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
	defer n.closeLater(link)
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
			if (failoverid.Token{ID: env.FailoverID, Epoch: env.Epoch}).Above(own) {
				return fmt.Errorf("%w: server %s heartbeats as primary at epoch %d, above ours (%d); make this node its backup with `tandem rejoin --config FILE --primary %s`",
					ErrFenced, env.Node, env.Epoch, st.Epoch, env.Advertise)
			}
		}
	}
}

// fenced stops acting as primary for good (until an operator rejoins it),
// keeps answering status, and runs on_fenced. The primary role's work has
// already stopped (runPrimary waits for it).
func (n *Node) fenced(ctx context.Context, end primary.End) error {
	by := end.By
	if end.ByAdvertise == "" {
		// Fenced by a file or an agent's report: the files bound to the
		// higher token name where its server is.
		end.ByAdvertise = n.files.AddressOf(by)
	}
	rb := fmt.Sprintf("this node was replaced by %s at epoch %d. Stop it, then make it a backup: tandem rejoin --config FILE --primary %s (see docs/runbook.md, 'after a network split')",
		nonEmpty(end.ByNode, by.ID), by.Epoch, nonEmpty(end.ByAdvertise, "NEW_PRIMARY_HOST:PORT"))
	// Persisted first, so that status shows fenced_by as soon as the role.
	// A takeover still being finished is superseded by the fence: it must
	// not resume as primary on restart.
	if err := n.save(func(s *failoverid.State) { s.FencedBy = &by; s.Role = "fenced"; s.Takeover = nil }); err != nil {
		n.entry().WithError(err).Error("could not record the fence in state.json")
	}
	n.mu.Lock()
	n.fencedBy = failoverid.Peer{Node: end.ByNode, FailoverID: by.ID, Epoch: by.Epoch, Address: end.ByAdvertise}
	n.mu.Unlock()
	n.setRole(RoleFenced, roleChange{Reason: "fence", From: n.cfg.Node, To: end.ByNode, Runbook: rb,
		Why: fmt.Sprintf("fenced by %s at epoch %d: %s", nonEmpty(end.ByNode, by.ID), by.Epoch, end.Reason)})
	n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: eventlog.KindFenced, FailoverID: by.ID, Epoch: by.Epoch, Detail: end.Reason})
	n.entry().WithField("runbook", rb).Error("FENCED: " + end.Reason)
	env := []string{"TANDEM_NODE=" + n.cfg.Node, "TANDEM_FAILOVER_ID=" + n.id, "TANDEM_EPOCH=" + strconv.FormatUint(n.state().Epoch, 10),
		"TANDEM_FENCED_BY=" + by.ID, "TANDEM_FENCED_BY_EPOCH=" + strconv.FormatUint(by.Epoch, 10)}
	_ = n.opts.RunHook(ctx, "on_fenced", n.cfg.Hooks.OnFenced, n.cfg.Hooks.Timeout, env, n.entry())
	// Stay up to answer status; keep the watchdog fed.
	defer n.keepAlive(ctx)()
	<-ctx.Done()
	return nil
}

// becomeBackupOf turns a primary that handed over into the new primary's backup.
func (n *Node) becomeBackupOf(end primary.End) error {
	if end.ByAdvertise == "" {
		end.ByAdvertise = n.files.AddressOf(end.By)
	}
	if end.ByAdvertise == "" {
		return fmt.Errorf("switchover: the new primary did not say its address")
	}
	if err := config.WritePrimaryLocation(n.cfg.DataDir, end.ByAdvertise); err != nil {
		return fmt.Errorf("switchover: %w", err)
	}
	p := failoverid.Peer{Node: end.ByNode, FailoverID: end.By.ID, Epoch: end.By.Epoch, Address: end.ByAdvertise}
	loc, _, err := config.ReadPrimaryLocation(n.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("switchover: %w", err)
	}
	// A takeover journal still open (after_takeover not done) is superseded.
	// The new primary is one this node has heard: it answered the handover.
	if err := n.save(func(s *failoverid.State) { s.Role = "backup"; s.Peer = &p; s.Takeover = nil; s.HeardPrimary = loc }); err != nil {
		return err
	}
	n.entry().WithField("primary", end.ByAdvertise).Info("switchover done: this node is now the backup")
	return nil
}
