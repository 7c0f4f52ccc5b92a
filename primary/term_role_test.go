package primary_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/primary"
	"github.com/tandem-ha/tandem/protocol"
)

// fakeTerm is an arbiter term the test turns invalid or ends.
type fakeTerm struct {
	valid atomic.Bool
	lost  chan struct{}
	once  sync.Once
}

func newFakeTerm() *fakeTerm {
	t := &fakeTerm{lost: make(chan struct{})}
	t.valid.Store(true)
	return t
}
func (t *fakeTerm) Valid() bool           { return t.valid.Load() }
func (t *fakeTerm) Lost() <-chan struct{} { return t.lost }
func (t *fakeTerm) Why() string           { return "test lease" }
func (t *fakeTerm) end()                  { t.valid.Store(false); t.once.Do(func() { close(t.lost) }) }

type termRig struct {
	role   *primary.Role
	clk    *clock.Fake
	ended  chan primary.End
	beats  <-chan broker.Message
	hub    *broker.MemHub
	signer *protocol.Signer
}

func startTermRole(t *testing.T, term primary.Term, failsafe time.Duration, onHandover func(string)) *termRig {
	t.Helper()
	hub := broker.NewMemHub()
	r := &termRig{clk: clock.NewHandoverFake(time.Unix(1_700_000_000, 0)), ended: make(chan primary.End, 1), hub: hub, signer: protocol.NewSigner(nil)}
	sub, err := hub.Client("witness").Subscribe(dest.Heartbeat)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	r.beats = sub.C()
	bus := hub.Client("primary")
	r.role = primary.New(primary.Config{
		Node: "a", Token: failoverid.Token{ID: primID, Epoch: 3}, Advertise: "127.0.0.1:1001",
		Period: period, ReplyPeriod: time.Second, Dest: dest, Signer: r.signer, Clock: r.clk, Log: quietLog(),
		SeqBase: 1000, CheckEvery: time.Hour, Ping: true, Term: term, Failsafe: failsafe, HandoverTimeout: 20 * period,
		OnHandover: onHandover,
	}, bus, bus)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		end, err := r.role.Run(ctx)
		if err != nil {
			t.Errorf("primary: %v", err)
		}
		r.ended <- end
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// fromBackup sends env as backup b (id, node, address and priority filled
// in) and waits until the role handled it.
func (r *termRig) fromBackup(t *testing.T, d string, env protocol.Envelope) {
	t.Helper()
	env.FailoverID, env.Node, env.Advertise = backID, "b", "127.0.0.1:1002"
	env.HasPriority, env.Priority, env.Effective = true, 100, 100
	h := env.Headers()
	r.signer.Sign(d, h, nil)
	received := r.role.Status().Received
	if err := r.hub.Client("backup").Publish(context.Background(), d, h, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.role.Status().Received == received {
		if time.Now().After(deadline) {
			t.Fatal("message not handled")
		}
		time.Sleep(time.Millisecond)
	}
}

func waitBeat(t *testing.T, r *termRig) protocol.Envelope {
	t.Helper()
	select {
	case m := <-r.beats:
		env, err := protocol.Decode(m.Headers)
		if err != nil {
			t.Fatal(err)
		}
		return env
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat")
	}
	return protocol.Envelope{}
}

func TestAPrimaryWithoutAValidTermSendsNothingAndEndsDeposed(t *testing.T) {
	term := newFakeTerm()
	r := startTermRole(t, term, 0, nil)
	waitBeat(t, r)
	r.clk.Advance(period)
	waitBeat(t, r)
	// The lease goes stale before the arbiter says the term is over: the
	// next tick sends nothing and ends the role.
	term.valid.Store(false)
	sent := r.role.Status().HeartbeatsSent
	r.clk.Advance(period)
	var end primary.End
	select {
	case end = <-r.ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the role did not end")
	}
	if end.Kind != primary.Deposed || !strings.Contains(end.Reason, "test lease") {
		t.Fatalf("end %+v, want deposed", end)
	}
	if got := r.role.Status().HeartbeatsSent; got != sent {
		t.Fatalf("%d heartbeats after the term went invalid", got-sent)
	}
	select {
	case m := <-r.beats:
		t.Fatalf("a heartbeat reached the channel after the term went invalid: %v", m.Headers)
	default: // the role has ended: nothing more can come
	}
}

func TestATermLostEndsTheRoleAtOnce(t *testing.T) {
	term := newFakeTerm()
	r := startTermRole(t, term, 0, nil)
	waitBeat(t, r)
	term.end() // no tick: the loss itself ends the role
	select {
	case end := <-r.ended:
		if end.Kind != primary.Deposed {
			t.Fatalf("end %+v", end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the role did not end on the lost term")
	}
}

func TestFailsafeKeepsAPrimaryWhoseBackupVouchesForIt(t *testing.T) {
	term := newFakeTerm()
	r := startTermRole(t, term, 10*period, nil)
	vouch := func(seq uint64) { r.fromBackup(t, dest.Reply, protocol.Envelope{Role: "backup", HeardSeq: seq}) }
	vouch(waitBeat(t, r).Seq)
	term.end()
	// The loss is handled (the loop took it) before the next tick: the
	// role goes on in failsafe while b confirms every heartbeat.
	for i := 0; i < 20; i++ {
		r.clk.Advance(period)
		vouch(waitBeat(t, r).Seq)
		if !r.role.Status().Failsafe {
			t.Fatalf("beat %d: status does not say failsafe", i)
		}
	}
	// b stops confirming: the role ends within the grace, without a
	// heartbeat past it.
	for i := 0; ; i++ {
		if i > 12 {
			t.Fatal("failsafe outlived its grace")
		}
		r.clk.Advance(period)
		select {
		case end := <-r.ended:
			if end.Kind != primary.Deposed || !strings.Contains(end.Reason, "backup b") {
				t.Fatalf("end %+v", end)
			}
			if i < 8 {
				t.Fatalf("failsafe ended after %d periods, before its grace", i)
			}
			return
		case <-r.beats:
		}
	}
}

func TestAHandoverResignsThenStaysQuietUntilTheBackupTakesOver(t *testing.T) {
	term := newFakeTerm()
	handedTo := make(chan string, 1)
	r := startTermRole(t, term, 10*period, func(to string) { handedTo <- to; term.end() })
	r.fromBackup(t, dest.Reply, protocol.Envelope{Role: "backup", HeardSeq: waitBeat(t, r).Seq})
	if err := r.role.Switchover(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if env := waitBeat(t, r); env.HandoverTo != backID {
		t.Fatalf("handover heartbeat %+v", env)
	}
	select {
	case to := <-handedTo:
		if to != backID {
			t.Fatalf("handed over to %q", to)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnHandover not called")
	}
	// Resigned: nothing more is sent while the backup takes over — even
	// though b vouches (no failsafe after a resignation).
	sent := r.role.Status().HeartbeatsSent
	for i := 0; i < 5; i++ {
		r.fromBackup(t, dest.Reply, protocol.Envelope{Role: "backup", HeardSeq: 1})
		if n := r.clk.Step(period); n != 1 {
			t.Fatalf("tick %d: %d loops took it", i, n)
		}
	}
	if got := r.role.Status().HeartbeatsSent; got != sent {
		t.Fatalf("%d heartbeats sent after resigning", got-sent)
	}
	// b's heartbeat at a higher epoch ends the handover.
	r.fromBackup(t, dest.Heartbeat, protocol.Envelope{Role: "primary", Epoch: 4, Seq: 1})
	select {
	case end := <-r.ended:
		if end.Kind != primary.HandedOver {
			t.Fatalf("end %+v, want handed over", end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the role did not end")
	}
}
