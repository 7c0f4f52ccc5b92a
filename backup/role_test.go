package backup

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
)

type roleRig struct {
	t       *testing.T
	hub     *broker.MemHub
	clk     *clock.Fake
	dest    protocol.Destinations
	role    *Role
	ends    chan End
	probe   broker.Bus
	replies broker.Subscription

	mu    sync.Mutex
	nonce string // the backup's latest reply nonce, which a live primary echoes
}

func newRoleRig(t *testing.T, period, window time.Duration) *roleRig {
	return newRoleRigHeard(t, period, window, true)
}

// newRoleRigHeard: heard says state.json recorded the primary as heard.
func newRoleRigHeard(t *testing.T, period, window time.Duration, heard bool) *roleRig {
	t.Helper()
	return newRoleRigWith(t, period, window, func(c *RoleConfig) { c.Heard = heard })
}

// newRoleRigWith: edit changes the role's config before it starts.
func newRoleRigWith(t *testing.T, period, window time.Duration, edit func(*RoleConfig)) *roleRig {
	t.Helper()
	log, _ := test.NewNullLogger()
	r := &roleRig{t: t, hub: broker.NewMemHub(), clk: clock.NewHandoverFake(time.Unix(1000, 0)), dest: protocol.NewDestinations(""), ends: make(chan End, 1)}
	r.probe = r.hub.Client("primary")
	replies, err := r.probe.Subscribe(r.dest.Reply)
	if err != nil {
		t.Fatal(err)
	}
	r.replies = replies
	go func() {
		for m := range replies.C() {
			if env, err := protocol.Decode(m.Headers); err == nil && env.Nonce != "" {
				r.mu.Lock()
				r.nonce = env.Nonce
				r.mu.Unlock()
			}
		}
	}()
	rc := RoleConfig{Node: "b", Token: failoverid.Token{ID: self}, Period: period, ReplyPeriod: time.Hour, Window: window,
		Dest: r.dest, Signer: protocol.NewSigner(nil), Clock: r.clk, Log: log, Instance: "b-1", StartedMS: 1}
	edit(&rc)
	r.role = NewRole(rc, r.hub.Client("backup"))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { e, _ := r.role.Run(ctx); r.ends <- e }()
	return r
}

// waitReply waits for the backup's first reply (it has subscribed by then).
func (r *roleRig) waitReply() {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		n := r.nonce
		r.mu.Unlock()
		if n != "" {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatal("the backup never replied")
		}
		time.Sleep(time.Millisecond)
	}
}

// beat publishes a heartbeat as a live primary would (echoing the
// backup's latest nonce) and waits until the role has counted it.
func (r *roleRig) beat(instance string, seq uint64) {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.role.Status().Primary.Seq != seq {
		// The role subscribes and replies asynchronously: publish until it
		// has counted one.
		r.mu.Lock()
		env := protocol.Envelope{FailoverID: prim, Epoch: 1, Node: "a", Seq: seq, Role: "primary", Advertise: "127.0.0.1:1", PeriodMS: 1000, Instance: instance, StartedMS: 5, Echo: []string{r.nonce}}
		r.mu.Unlock()
		if err := r.probe.Publish(context.Background(), r.dest.Heartbeat, env.Headers(), nil); err != nil {
			r.t.Fatal(err)
		}
		if time.Now().After(deadline) {
			r.t.Fatal("the role never counted the heartbeat")
		}
		time.Sleep(time.Millisecond)
	}
}

// The takeover starts when last heartbeat + window expires, not on the
// next periodic tick after it.
func TestTheTakeoverStartsAtTheWindowsExactEnd(t *testing.T) {
	r := newRoleRig(t, time.Second, 2100*time.Millisecond) // ticks every 250 ms
	r.beat("a-1", 1)
	// Up to 2.0 s in steps of one tick: each tick is taken, the window is
	// not over.
	for i := 0; i < 8; i++ {
		if n := r.clk.Step(250 * time.Millisecond); n != 1 {
			t.Fatalf("step %d delivered %d values, want the one tick", i, n)
		}
	}
	// 2.1 s: no tick is due (the next is at 2.25 s): what falls due now is
	// the timer armed at last heartbeat + window.
	if n := r.clk.Step(100 * time.Millisecond); n != 1 {
		t.Fatalf("at last heartbeat + window %d timers fell due, want the deadline's (detection waited for a tick)", n)
	}
	select {
	case e := <-r.ends:
		if !e.Takeover || !strings.Contains(e.Reason, "for 2.1s") {
			t.Fatalf("%+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no takeover at last heartbeat + window")
	}
}

// A primary that restarted (a new instance, same failover id) is answered
// at once, not after up to reply_period.
func TestARestartedPrimaryIsAnsweredAtOnce(t *testing.T) {
	r := newRoleRig(t, time.Second, time.Hour)
	replies, err := r.hub.Client("watcher").Subscribe(r.dest.Reply)
	if err != nil {
		t.Fatal(err)
	}
	r.beat("a-1", 1)
	r.beat("a-1", 2)
	// Drain what the start and the first heartbeat caused.
	drainUntilQuiet(replies)
	r.beat("a-2", 100) // the primary's process restarted
	select {
	case m := <-replies.C():
		env, err := protocol.Decode(m.Headers)
		if err != nil || env.Role != "backup" {
			t.Fatalf("reply %+v %v", env, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply to the restarted primary (reply_period is 1h)")
	}
}

func drainUntilQuiet(s broker.Subscription) {
	for {
		select {
		case <-s.C():
		case <-time.After(50 * time.Millisecond):
			return
		}
	}
}

// A recorded stream of validly signed heartbeats, replayed after the
// backup restarted, echoes none of the new process's nonces: it does not
// keep a dead primary alive.
func TestReplayedHeartbeatsDoNotKeepADeadPrimaryAlive(t *testing.T) {
	r := newRoleRig(t, 100*time.Millisecond, 500*time.Millisecond)
	r.waitReply() // the role has subscribed
	// Heartbeats recorded from an earlier backup's time: they echo a nonce
	// this process never issued.
	for seq := uint64(1); seq <= 49; seq++ {
		env := protocol.Envelope{FailoverID: prim, Epoch: 1, Node: "a", Seq: seq, Role: "primary", Advertise: "127.0.0.1:1", PeriodMS: 100, Instance: "a-1", StartedMS: 5, Echo: []string{"0123456789abcdef"}}
		if err := r.probe.Publish(context.Background(), r.dest.Heartbeat, env.Headers(), nil); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.role.Status().Unechoed < 49 {
		if time.Now().After(deadline) {
			t.Fatalf("the replayed heartbeats were not all consumed: %+v", r.role.Status())
		}
		time.Sleep(time.Millisecond)
	}
	if s := r.role.Status(); s.LastHeartbeatAgeMS != -1 || s.Primary.Seq != 0 {
		t.Fatalf("a replayed heartbeat was counted: %+v", s)
	}
	// The window runs out: the backup takes over.
	for i := 0; i < 6; i++ {
		r.clk.Step(100 * time.Millisecond)
	}
	select {
	case e := <-r.ends:
		if !e.Takeover {
			t.Fatalf("%+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the replayed heartbeats kept the dead primary alive")
	}
}

// preemptReplies collects the heard-seq of every preempt request seen.
func preemptReplies(s broker.Subscription) (seqs []uint64) {
	for {
		select {
		case m := <-s.C():
			if env, err := protocol.Decode(m.Headers); err == nil && env.Preempt {
				seqs = append(seqs, env.HeardSeq)
			}
		case <-time.After(50 * time.Millisecond):
			return seqs
		}
	}
}

// With preempt on, a healthier, higher-priority backup asks for the role
// only once it has been up preempt_delay.
func TestPreemptWaitsForTheDelay(t *testing.T) {
	r := newRoleRigWith(t, time.Second, time.Hour, func(c *RoleConfig) {
		c.Heard, c.Priority, c.Preempt, c.PreemptDelay = true, 150, true, 30*time.Second
	})
	replies, err := r.hub.Client("watcher").Subscribe(r.dest.Reply)
	if err != nil {
		t.Fatal(err)
	}
	r.beat("a-1", 1) // the primary's effective priority: the default 100
	r.beat("a-1", 2)
	r.clk.Step(29 * time.Second)
	r.beat("a-1", 3)
	r.clk.Step(time.Second) // up 30 s
	r.beat("a-1", 4)
	r.beat("a-1", 5) // 4 was handled when 5 is counted
	if got := preemptReplies(replies); len(got) != 1 || got[0] != 4 {
		t.Fatalf("preempt requests at heard seqs %v, want one, at the first heartbeat after the delay (4)", got)
	}
}

func TestNoPreemptByABackupNotHealthierThanThePrimary(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(c *RoleConfig)
	}{
		{"equal priority", func(c *RoleConfig) { c.Priority = 100 }},
		{"preempt off", func(c *RoleConfig) { c.Priority, c.Preempt = 150, false }},
		{"manual", func(c *RoleConfig) { c.Priority, c.Manual = 150, true }},
		{"unhealthy", func(c *RoleConfig) { c.Priority, c.Effective = 150, func() int { return 0 } }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRoleRigWith(t, time.Second, time.Hour, func(c *RoleConfig) {
				c.Heard, c.Preempt = true, true
				tc.edit(c)
			})
			replies, err := r.hub.Client("watcher").Subscribe(r.dest.Reply)
			if err != nil {
				t.Fatal(err)
			}
			r.beat("a-1", 1)
			r.beat("a-1", 2)
			r.beat("a-1", 3)
			if got := preemptReplies(replies); len(got) != 0 {
				t.Fatalf("preempt requests at %v", got)
			}
		})
	}
}

// A role that restarts (to follow a new primary) keeps the peers its
// predecessor knew: it does not take over as if it were the only candidate.
func TestARestartedRoleKeepsTheElectionsPeers(t *testing.T) {
	clkNow := time.Unix(1000, 0)
	r := newRoleRigWith(t, time.Second, 5*time.Second, func(c *RoleConfig) {
		c.Heard, c.Priority = true, 100
		c.Peers = []PeerInfo{{Node: "c", FailoverID: othr, Priority: 150, Effective: 150, HeardSeq: 1 << 40, Seen: clkNow}}
	})
	r.beat("a-1", 1)
	if s := r.role.Status(); s.Rank != 1 || len(s.Peers) != 1 {
		t.Fatalf("rank %d with peers %+v, want rank 1 below the seeded peer", s.Rank, s.Peers)
	}
}

// A role seeded with the peers of an earlier one listens on their brokers
// from its start, before any heartbeat: after a campaign lost to one of
// them (arbiter), the new primary is heard there while the old one's
// broker is gone.
func TestARestartedRoleListensOnItsPeersBrokersAtOnce(t *testing.T) {
	dialed := make(chan string, 4)
	hub := broker.NewMemHub()
	newRoleRigWith(t, time.Second, 5*time.Second, func(c *RoleConfig) {
		c.Heard, c.Priority = true, 100
		c.Peers = []PeerInfo{{Node: "c", FailoverID: othr, Address: "10.0.0.3:61620", Priority: 150, Effective: 150, Seen: time.Unix(1000, 0)}}
		c.DialPeer = func(_ context.Context, addr string) (broker.Bus, error) {
			dialed <- addr
			return hub.Client("peer-" + addr), nil
		}
	})
	select {
	case addr := <-dialed:
		if addr != "10.0.0.3:61620" {
			t.Fatalf("dialed %q, want the seeded peer's broker", addr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the seeded peer's broker was never dialed")
	}
}

// A backup's reply signed with the watched primary's own failover id (a
// replay, or one from before it took over) adds no peer and no link: the
// primary heard on its broker through another path would make a cut of
// the configured path no partition (the pair soak with its hostile
// replayer, CI).
func TestAReplyFromThePrimaryItselfIsNoPeer(t *testing.T) {
	dialed := make(chan string, 4)
	hub := broker.NewMemHub()
	r := newRoleRigWith(t, time.Second, 5*time.Second, func(c *RoleConfig) {
		c.Heard, c.Priority = true, 100
		c.DialPeer = func(_ context.Context, addr string) (broker.Bus, error) {
			dialed <- addr
			return hub.Client("peer-" + addr), nil
		}
	})
	r.beat("a-1", 1)
	reply := func(id, addr string) {
		env := protocol.Envelope{FailoverID: id, Node: "x", Role: "backup", Advertise: addr, HasPriority: true, Priority: 100, Effective: 100, HeardSeq: 1}
		if err := r.probe.Publish(context.Background(), r.dest.Reply, env.Headers(), nil); err != nil {
			t.Fatal(err)
		}
	}
	reply(prim, "127.0.0.1:9") // the primary's old reply as a backup
	reply(othr, "127.0.0.1:8") // a real peer, after it: consumed in order
	deadline := time.Now().Add(5 * time.Second)
	for {
		peers := r.role.Status().Peers
		if len(peers) > 0 {
			if len(peers) != 1 || peers[0].FailoverID != othr {
				t.Fatalf("peers %+v, want the real peer only", peers)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the real peer was never observed")
		}
		time.Sleep(time.Millisecond)
	}
	// The real peer's broker is linked (the primary's would be dialled by
	// the same path, and is not a peer: see above).
	if addr := <-dialed; addr != "127.0.0.1:8" {
		t.Fatalf("dialed %q, want the real peer's broker", addr)
	}
}

// A role that is not watching yet (starting, or restarting to follow a new
// primary) still says why it would not take over: status stays truthful
// across the restart.
func TestARoleNotYetWatchingReportsItsIneligibility(t *testing.T) {
	down := NewRole(RoleConfig{Priority: 150, Effective: func() int { return 0 }}, broker.NewMemHub().Client("b"))
	if s := down.Status(); !strings.Contains(s.Ineligible, "effective priority is 0") {
		t.Fatalf("health down: ineligible %q", s.Ineligible)
	}
	manual := NewRole(RoleConfig{Manual: true}, broker.NewMemHub().Client("b"))
	if s := manual.Status(); !strings.Contains(s.Ineligible, "priority is 0") {
		t.Fatalf("manual: ineligible %q", s.Ineligible)
	}
	ok := NewRole(RoleConfig{Priority: 150, Effective: func() int { return 150 }}, broker.NewMemHub().Client("b"))
	if s := ok.Status(); s.Ineligible != "" {
		t.Fatalf("healthy: ineligible %q", s.Ineligible)
	}
}
