package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/arbiter"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/eventlog"
)

// errNotElected: a backup decided a takeover but another server holds the
// group's election (the primary is alive and renewing, or a better backup
// won); the backup goes back to watching.
var errNotElected = errors.New("node: the group's election is held by another server")

// arbiterState is the node's side of the arbiter: the etcd client, the
// current term (at most one), and the last status read from etcd.
type arbiterState struct {
	cli *arbiter.Arbiter
	cfg arbiter.Config

	mu     sync.Mutex
	term   *arbiter.Term
	status arbiter.Status
	read   bool // status was read at least once
}

// newArbiter connects the configured arbiter (nil without one).
func (n *Node) newArbiter() (*arbiterState, error) {
	c := n.cfg.Arbiter
	if !c.Enabled() {
		return nil, nil
	}
	tlsCfg, err := n.cfg.ArbiterTLS()
	if err != nil {
		return nil, badInput(err)
	}
	pass, err := n.cfg.ArbiterPassword()
	if err != nil {
		return nil, badInput(err)
	}
	ac := arbiter.Config{Endpoints: c.Etcd.Endpoints, Prefix: c.Etcd.Prefix, TTL: c.Etcd.TTL, RenewDeadline: c.Etcd.RenewDeadline,
		TLS: tlsCfg, Username: c.Etcd.User, Password: pass, Log: n.log.WithFields(logrus.Fields{"node": n.cfg.Node, "component": "arbiter"}),
		OnRenew: n.tel.ArbiterRenew}
	cli, err := arbiter.New(ac)
	if err != nil {
		return nil, err
	}
	return &arbiterState{cli: cli, cfg: ac}, nil
}

// current is the term this node holds, nil when none.
func (a *arbiterState) current() *arbiter.Term {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.term
}

func (a *arbiterState) set(t *arbiter.Term) {
	a.mu.Lock()
	old := a.term
	a.term = t
	a.mu.Unlock()
	if old != nil && old != t {
		old.Close()
	}
}

// drop ends the current term: resigned (the election is free at once) or,
// when resign is false, left to expire.
func (a *arbiterState) drop(resign bool) {
	if a == nil {
		return
	}
	a.mu.Lock()
	t := a.term
	a.term = nil
	a.mu.Unlock()
	if t == nil {
		return
	}
	if resign {
		a.resign(t)
		return
	}
	t.Close()
}

// resign gives t's election up, bounded by the renew deadline (an etcd out
// of reach must not hold a stop or a handover).
func (a *arbiterState) resign(t *arbiter.Term) {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.RenewDeadline)
	defer cancel()
	_ = t.Resign(ctx)
}

// campaignFor bounds a backup's campaign: a dead primary's lease expires
// within a TTL of its last renewal; a campaign that does not win by then
// lost to a live holder.
func (n *Node) campaignFor() time.Duration {
	return n.cfg.Arbiter.Etcd.TTL + n.cfg.Heartbeat.Period
}

// electedEpoch is the takeover's epoch source with an arbiter (the seam
// Options.NextEpoch): win the group's election first, bounded; the term
// raises the group's epoch above everything this server saw.
func (n *Node) electedEpoch(ctx context.Context, own, seen uint64) (uint64, error) {
	cctx, cancel := context.WithTimeout(ctx, n.campaignFor())
	defer cancel()
	t, err := n.arb.cli.Campaign(cctx, n.cfg.Node, max(own, seen))
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("%w: no win within %s (%v)", errNotElected, n.campaignFor(), err)
	}
	n.arb.set(t) // the arbiter logs the win, with how long the campaign took
	return t.Epoch, nil
}

// acquireTerm gives a server about to act as primary its term: the one it
// won for its takeover, or one won back (Reclaim: its epoch is kept when
// nobody held a term since). While it waits, it looks for a higher epoch
// as a start-up does (files, the peer's heartbeat channel) and stops with
// ErrFenced when another server took over. The returned epoch is the
// term's.
func (n *Node) acquireTerm(ctx context.Context, epoch uint64) (uint64, error) {
	if t := n.arb.current(); t != nil && t.Valid() && t.Epoch >= epoch {
		return t.Epoch, nil
	}
	n.arb.drop(false)
	n.setRole(RoleStarting, roleChange{Reason: "arbiter", Why: "waiting to win the group's election in etcd before acting as primary"})
	type won struct {
		t   *arbiter.Term
		err error
	}
	refused := func(err error) (uint64, error) {
		n.events.Add(eventlog.Event{Node: n.cfg.Node, Kind: eventlog.KindRefused, FailoverID: n.id, Epoch: epoch, Detail: err.Error()})
		return 0, err
	}
	// The look for a higher epoch runs beside the campaign: a check dials
	// the peer's channel for up to 1.5 periods, and a won term must not
	// wait for it.
	fctx, stopFence := context.WithCancel(ctx)
	defer stopFence()
	fenced := make(chan error, 1)
	go func() {
		t := n.clock.NewTicker(max(n.cfg.Heartbeat.Period, 500*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-fctx.Done():
				return
			case <-t.C():
			}
			if err := n.startupFenceCheck(fctx); err != nil && fctx.Err() == nil {
				fenced <- err
				return
			}
		}
	}()
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithCancel(ctx)
		res := make(chan won, 1)
		go func() {
			t, err := n.arb.cli.Reclaim(cctx, n.cfg.Node, epoch)
			res <- won{t, err}
		}()
		var got won
		select {
		case got = <-res:
		case err := <-fenced:
			cancel()
			if w := <-res; w.t != nil {
				n.arb.resign(w.t)
			}
			return refused(err)
		}
		cancel()
		if got.err == nil {
			n.arb.set(got.t)
			n.entry().WithFields(logrus.Fields{"epoch": got.t.Epoch, "kept": got.t.Epoch == epoch}).Info("holding the group's election: acting as primary")
			return got.t.Epoch, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if attempt%10 == 0 {
			n.entry().WithError(got.err).Warn("cannot win the group's election yet (etcd unreachable?): not acting as primary")
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case err := <-fenced:
			return refused(err)
		case <-n.clock.After(n.cfg.Heartbeat.Period):
		}
	}
}

// termGate is the primary role's view of the node's term (primary.Term).
type termGate struct{ a *arbiterState }

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (g termGate) Valid() bool {
	t := g.a.current()
	return t != nil && t.Valid()
}

func (g termGate) Lost() <-chan struct{} {
	if t := g.a.current(); t != nil {
		return t.Lost()
	}
	return closedChan
}

func (g termGate) Why() string {
	if t := g.a.current(); t != nil {
		return t.Why()
	}
	return "no term"
}

// reclaimInFailsafe, while the primary role runs, wins the election back
// once the term is lost (failsafe keeps the role meanwhile): with the
// epoch kept, the role is valid again; a term that had to raise the epoch
// means another server held one, so it is given back and the role ends
// when failsafe does (or it is fenced first).
func (n *Node) reclaimInFailsafe(ctx context.Context, epoch uint64) {
	for {
		t := n.arb.current()
		var lost <-chan struct{} = closedChan
		if t != nil {
			lost = t.Lost()
		}
		select {
		case <-ctx.Done():
			return
		case <-lost:
		}
		cctx, cancel := context.WithTimeout(ctx, n.cfg.Arbiter.Etcd.RenewDeadline)
		nt, err := n.arb.cli.Reclaim(cctx, n.cfg.Node, epoch)
		cancel()
		switch {
		case err == nil && nt.Epoch == epoch:
			n.arb.set(nt)
			n.entry().Warn("won the group's election back: the lease is fresh again")
			continue
		case err == nil:
			n.arb.resign(nt)
			n.entry().WithField("epoch", nt.Epoch).Error("another server held the election while this primary was in failsafe: not taking the role back")
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-n.clock.After(n.cfg.Heartbeat.Period):
		}
	}
}

// arbiterStatusEvery is how often the arbiter's status is read from etcd.
const arbiterStatusEvery = 3 * time.Second

// watchArbiter refreshes the arbiter's status (endpoints, holder, lease)
// for status and members, off the request path, until ctx ends.
func (n *Node) watchArbiter(ctx context.Context) {
	t := n.clock.NewTicker(max(n.cfg.Heartbeat.Period, arbiterStatusEvery))
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st := n.arb.cli.Status(sctx)
		cancel()
		n.arb.mu.Lock()
		n.arb.status, n.arb.read = st, true
		n.arb.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// ArbiterStatus is status JSON "arbiter".
type ArbiterStatus struct {
	Endpoints      []arbiter.EndpointStatus `json:"endpoints"`
	Prefix         string                   `json:"prefix"`
	TTLMS          int64                    `json:"ttl_ms"`
	RenewDeadlineS float64                  `json:"renew_deadline_s"`
	Holder         string                   `json:"holder"`
	HoldsTerm      bool                     `json:"holds_term"`
	LeaseTTLLeftMS int64                    `json:"lease_ttl_left_ms"`
	RenewLatencyMS float64                  `json:"renew_latency_ms"`
	RenewsOK       uint64                   `json:"renews_ok"`
	RenewsFailed   uint64                   `json:"renews_failed"`
	Failsafe       bool                     `json:"failsafe"`
	FailsafeOn     bool                     `json:"failsafe_configured"`
}

// arbiterStatus is what status shows of the arbiter (nil without one).
func (n *Node) arbiterStatus(inFailsafe bool) (*ArbiterStatus, []string) {
	if n.arb == nil {
		return nil, nil
	}
	n.arb.mu.Lock()
	st, read := n.arb.status, n.arb.read
	n.arb.mu.Unlock()
	t := n.arb.current()
	out := &ArbiterStatus{Endpoints: st.Endpoints, Prefix: n.cfg.Arbiter.Etcd.Prefix, TTLMS: n.cfg.Arbiter.Etcd.TTL.Milliseconds(),
		RenewDeadlineS: n.cfg.Arbiter.Etcd.RenewDeadline.Seconds(), Holder: st.Holder, HoldsTerm: t != nil && t.Valid(),
		LeaseTTLLeftMS: st.LeaseTTLLeftMS, RenewLatencyMS: st.RenewLatencyMS, RenewsOK: st.RenewsOK, RenewsFailed: st.RenewsFailed,
		Failsafe: inFailsafe, FailsafeOn: n.cfg.Arbiter.Failsafe}
	if out.Endpoints == nil {
		out.Endpoints = []arbiter.EndpointStatus{}
	}
	var warns []string
	if read {
		up := 0
		for _, e := range st.Endpoints {
			if e.Reachable {
				up++
			}
		}
		if up*2 <= len(st.Endpoints) {
			warns = append(warns, fmt.Sprintf("arbiter: %d of %d etcd endpoints reachable: no election can be won or renewed from here", up, len(st.Endpoints)))
		}
	}
	if inFailsafe {
		warns = append(warns, "FAILSAFE: the arbiter's lease is not fresh; this primary acts on only while every backup confirms its heartbeats (arbiter.failsafe)")
	}
	return out, warns
}

// termEpoch reconciles state.json with the term's epoch: a term that had
// to raise the epoch makes this server's epoch (and its open takeover
// journal's) the term's, persisted before anything is sent at it.
func (n *Node) termEpoch(epoch uint64) error {
	return n.save(func(s *failoverid.State) {
		if s.Epoch < epoch {
			s.Epoch = epoch
		}
		if s.Takeover != nil && s.Takeover.Epoch < epoch {
			s.Takeover.Epoch = epoch
		}
	})
}
