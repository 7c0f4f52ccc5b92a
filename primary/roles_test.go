package primary_test

// Role-level tests: a primary and a backup role on the in-memory bus, driven
// by a fake clock that hands its ticks over (clock.NewHandoverFake). No
// sleeps: the test advances time and waits (with a deadline) for the loops to
// react. An absence ("did not end", "did not take over") is asserted with
// took: a loop takes a tick only once it handled everything it consumed
// before, and a loop that ended stopped its ticker.

import (
	"context"
	"crypto/ed25519"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/backup"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/primary"
	"github.com/tandem-ha/tandem/protocol"
)

const (
	primID = "aaaaaaaa-0000-4000-8000-000000000000"
	backID = "bbbbbbbb-0000-4000-8000-000000000000"
	evilID = "eeeeeeee-0000-4000-8000-000000000000"
	lowID  = "00000000-0000-4000-8000-000000000000" // orders below primID
	period = 100 * time.Millisecond
	window = 500 * time.Millisecond
)

var dest = protocol.NewDestinations("")

type pair struct {
	t        *testing.T
	hub      *broker.MemHub
	clk      *clock.Fake
	prim     *primary.Role
	back     *backup.Role
	primEnd  chan primary.End
	backEnd  chan backup.End
	cancel   context.CancelFunc
	higher   atomic.Pointer[failoverid.Token] // what CheckFiles reports
	signer   *protocol.Signer
	primSeen chan protocol.Envelope // every heartbeat on the channel, as a witness
}

func quietLog() logrus.FieldLogger {
	l, _ := test.NewNullLogger()
	return l
}

func newPair(t *testing.T, key []byte, startBackup bool) *pair {
	t.Helper()
	p := &pair{t: t, hub: broker.NewMemHub(), clk: clock.NewHandoverFake(time.Unix(1_700_000_000, 0)),
		primEnd: make(chan primary.End, 1), backEnd: make(chan backup.End, 1), signer: protocol.NewSigner(key)}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	primBus := p.hub.Client("primary")
	p.prim = primary.New(primary.Config{
		Node: "a", Token: failoverid.Token{ID: primID, Epoch: 3}, Advertise: "127.0.0.1:1001",
		Period: period, ReplyPeriod: time.Second, HandoverTimeout: window, Dest: dest, Signer: p.signer,
		Clock: p.clk, Log: quietLog(), SeqBase: 1000, CheckEvery: time.Hour,
		CheckFiles: func() (*failoverid.Token, error) { return p.higher.Load(), nil },
		Ping:       true,
	}, primBus, primBus)
	done := make(chan struct{})
	go func() {
		defer close(done)
		end, err := p.prim.Run(ctx)
		if err != nil {
			t.Errorf("primary: %v", err)
		}
		p.primEnd <- end
	}()
	var bdone chan struct{}
	if startBackup {
		bdone = make(chan struct{})
		p.back = backup.NewRole(backup.RoleConfig{
			Node: "b", Token: failoverid.Token{ID: backID, Epoch: 0}, Advertise: "127.0.0.1:1002",
			Period: period, ReplyPeriod: time.Second, Window: window, Dest: dest, Signer: p.signer,
			Clock: p.clk, Log: quietLog(),
		}, p.hub.Client("backup"))
		go func() {
			defer close(bdone)
			end, err := p.back.Run(ctx)
			if err != nil {
				t.Errorf("backup: %v", err)
			}
			p.backEnd <- end
		}()
	}
	t.Cleanup(func() {
		cancel()
		<-done
		if bdone != nil {
			<-bdone
		}
	})
	// Wait for the first heartbeat (sent at start) to be out.
	p.eventually("first heartbeat", func() bool { return p.prim.Status().HeartbeatsSent >= 1 })
	if startBackup {
		// The first heartbeats may go out before the backup subscribed, or
		// before the primary heard its reply (a backup counts only
		// heartbeats that echo its reply's nonce).
		p.eventually("backup counted a heartbeat of the primary", func() bool {
			if p.back.Status().Primary.Seq > 0 {
				return true
			}
			p.beat(false)
			return false
		})
	}
	return p
}

func (p *pair) eventually(what string, cond func() bool) {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			p.t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// beat advances one period and waits until the primary sent its heartbeat
// and the backup counted it (when reachable).
func (p *pair) beat(expectDelivery bool) {
	p.t.Helper()
	sent := p.prim.Status().HeartbeatsSent
	var seq uint64
	if p.back != nil {
		seq = p.back.Status().Primary.Seq
	}
	p.clk.Advance(period)
	p.eventually("heartbeat sent", func() bool { return p.prim.Status().HeartbeatsSent > sent })
	if expectDelivery && p.back != nil {
		p.eventually("heartbeat counted", func() bool { return p.back.Status().Primary.Seq > seq })
	}
}

// backTick is the backup's loop tick for period (backup.Role's tickEvery):
// off the 100 ms grid of the primary's ticker and of the backup's reply
// ticker, so one such step falls due for the backup's loop alone.
const backTick = period / 4

// took advances the clock by d and fails unless exactly want loops took the
// tick that fell due: each one that did had handled every input it consumed
// before and was still running.
func (p *pair) took(d time.Duration, want int, what string) {
	p.t.Helper()
	if n := p.clk.Step(d); n != want {
		p.t.Fatalf("%s: %d loops took the tick, want %d", what, n, want)
	}
}

// raw publishes a message as some other endpoint.
func (p *pair) raw(from, d string, env protocol.Envelope, sign bool) {
	h := env.Headers()
	if sign {
		p.signer.Sign(d, h, nil)
	}
	if err := p.hub.Client(from).Publish(context.Background(), d, h, nil); err != nil {
		p.t.Fatal(err)
	}
}

func TestNoTakeoverWhileHeartbeatsFlow(t *testing.T) {
	p := newPair(t, nil, true)
	for i := 0; i < 100; i++ { // 10 s of fake time
		p.beat(true)
	}
	if !p.prim.Status().BackupConfigured {
		t.Fatal("primary does not know a backup replied")
	}
	if s := p.back.Status(); s.Primary.FailoverID != primID || s.Primary.Epoch != 3 || s.LastHeartbeatAgeMS != 0 {
		t.Fatalf("backup's view of the primary: %+v", s)
	}
	p.took(backTick, 1, "backup ended while heartbeats flowed")
}

func TestPartitionTakesOverAfterTheWindow(t *testing.T) {
	p := newPair(t, nil, true)
	p.beat(true)
	p.hub.Partition("primary", "backup")
	for i := 0; i < 4; i++ {
		p.beat(false)
	}
	// 425 ms of silence, window 500 ms: the backup still runs.
	p.took(backTick, 1, "took over before the window")
	var end backup.End
	p.eventually("takeover", func() bool {
		p.clk.Advance(25 * time.Millisecond)
		select {
		case end = <-p.backEnd:
			return true
		default:
			return false
		}
	})
	if !end.Takeover || end.Switch || end.SeenEpoch != 3 || end.Primary.Node != "a" {
		t.Fatalf("takeover end: %+v", end)
	}
}

func TestHigherEpochHeartbeatFencesAndSilencesThePrimary(t *testing.T) {
	p := newPair(t, nil, false)
	witness, _ := p.hub.Client("witness").Subscribe(dest.Heartbeat)
	p.raw("newprimary", dest.Heartbeat, protocol.Envelope{FailoverID: backID, Epoch: 4, Node: "b", Seq: 1, Role: "primary", Advertise: "127.0.0.1:1002"}, false)
	var end primary.End
	p.eventually("fenced", func() bool {
		select {
		case end = <-p.primEnd:
			return true
		default:
			return false
		}
	})
	if end.Kind != primary.Fenced || end.By.Epoch != 4 || end.By.ID != backID || end.ByAdvertise != "127.0.0.1:1002" {
		t.Fatalf("end: %+v", end)
	}
	// I5: nothing more from the fenced primary, however long we wait.
	drain(witness)
	for i := 0; i < 20; i++ {
		p.took(period, 0, "the fenced primary's loop still runs")
	}
	if m := drain(witness); len(m) != 0 {
		t.Fatalf("fenced primary sent %d heartbeats", len(m))
	}
}

func TestEqualOrLowerEpochDoesNotFence(t *testing.T) {
	p := newPair(t, nil, false)
	// Equal epoch with a lower failover id, and a lower epoch: not above us.
	for i, id := range []string{lowID, evilID} {
		p.raw("x", dest.Heartbeat, protocol.Envelope{FailoverID: id, Epoch: uint64(3 - 2*i), Node: "x", Seq: uint64(1 + i), Role: "primary"}, false)
		p.eventually("the heartbeat handled", func() bool { return p.prim.Status().Received >= uint64(i+1) })
		p.took(period, 1, "the primary ended on a heartbeat not above its token")
	}
}

// Two primaries at one epoch: the one with the lower failover id is fenced
// by a heartbeat of the other (primID orders above lowID, below evilID).
func TestEqualEpochGreaterIDFences(t *testing.T) {
	p := newPair(t, nil, false)
	p.raw("x", dest.Heartbeat, protocol.Envelope{FailoverID: evilID, Epoch: 3, Node: "x", Seq: 1, Role: "primary", Advertise: "x:1"}, false)
	select {
	case end := <-p.primEnd:
		if end.Kind != primary.Fenced || end.By != (failoverid.Token{ID: evilID, Epoch: 3}) || end.ByNode != "x" {
			t.Fatalf("%+v", end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a primary at the same epoch with a greater failover id did not fence us")
	}
}

func TestAgentStatusAtAHigherEpochFences(t *testing.T) {
	p := newPair(t, nil, false)
	p.raw("agent1", dest.AgentStatus, protocol.Envelope{FailoverID: backID, Epoch: 9, Node: "agent-1"}, false)
	select {
	case end := <-p.primEnd:
		if end.Kind != primary.Fenced || end.By.Epoch != 9 {
			t.Fatalf("%+v", end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not fenced by agent status")
	}
}

func TestWakingLateChecksFilesBeforeSpeaking(t *testing.T) {
	p := newPair(t, nil, false)
	witness, _ := p.hub.Client("witness").Subscribe(dest.Heartbeat)
	// While "frozen", a backup took over and rewrote the agent files.
	p.higher.Store(&failoverid.Token{ID: backID, Epoch: 4})
	p.clk.Advance(5 * period) // one late tick
	select {
	case end := <-p.primEnd:
		if end.Kind != primary.Fenced || end.By.Epoch != 4 {
			t.Fatalf("%+v", end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a primary that woke late did not check the files")
	}
	if m := drain(witness); len(m) != 0 {
		t.Fatalf("the primary sent %d heartbeats after waking, before checking", len(m))
	}
}

func TestForgedMessagesAreDroppedWithASecret(t *testing.T) {
	p := newPair(t, []byte("s3cret"), true)
	// An unsigned heartbeat at a higher epoch must not fence the primary, and
	// an unsigned handover must not make the backup take over.
	p.raw("evil", dest.Heartbeat, protocol.Envelope{FailoverID: evilID, Epoch: 99, Node: "evil", Seq: 1, Role: "primary", HandoverTo: backID}, false)
	// Signed with another key: dropped too.
	h := protocol.Envelope{FailoverID: evilID, Epoch: 99, Node: "evil", Seq: 2, Role: "primary", HandoverTo: backID}.Headers()
	protocol.NewSigner([]byte("wrong")).Sign(dest.Heartbeat, h, nil)
	p.hub.Client("evil").Publish(context.Background(), dest.Heartbeat, h, nil)
	p.eventually("both forged heartbeats dropped by both", func() bool {
		return p.prim.Status().SignatureFails >= 2 && p.back.Status().SignatureFails >= 2
	})
	for i := 0; i < 10; i++ {
		p.beat(true) // the primary still heartbeats, the backup still counts them
	}
	p.took(backTick, 1, "backup ended on a forged message")
}

func TestSwitchoverHandsOverAndThePrimaryLearnsIt(t *testing.T) {
	p := newPair(t, nil, true)
	p.beat(true)
	if err := p.prim.Switchover(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	var bend backup.End
	select {
	case bend = <-p.backEnd:
	case <-time.After(5 * time.Second):
		t.Fatal("backup did not take over on switchover")
	}
	if !bend.Takeover || !bend.Switch {
		t.Fatalf("backup end: %+v", bend)
	}
	if err := p.prim.Switchover(context.Background(), ""); err != primary.ErrSwitchoverState {
		t.Fatalf("second switchover: %v", err)
	}
	// The new primary heartbeats at epoch 4.
	p.raw("backup", dest.Heartbeat, protocol.Envelope{FailoverID: backID, Epoch: 4, Node: "b", Seq: 1, Role: "primary", Advertise: "127.0.0.1:1002"}, false)
	select {
	case end := <-p.primEnd:
		if end.Kind != primary.HandedOver || end.ByAdvertise != "127.0.0.1:1002" {
			t.Fatalf("%+v", end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("primary did not see the handover complete")
	}
}

func TestSwitchoverWithoutABackupIsRefused(t *testing.T) {
	p := newPair(t, nil, false)
	if err := p.prim.Switchover(context.Background(), ""); err != primary.ErrNoBackup {
		t.Fatalf("got %v", err)
	}
}

func TestNoBackupWarningAfterTwoReplyPeriods(t *testing.T) {
	p := newPair(t, nil, false)
	for i := 0; i < 21; i++ {
		p.beat(false)
	}
	s := p.prim.Status()
	if s.BackupConfigured || len(s.Warnings) == 0 {
		t.Fatalf("want a no-backup warning after 2 × reply_period: %+v", s)
	}
}

func drain(s broker.Subscription) []broker.Message {
	var out []broker.Message
	for {
		select {
		case m := <-s.C():
			out = append(out, m)
		default:
			return out
		}
	}
}

func TestPingsCarryTheTokenAndStatusesFillTheRegistry(t *testing.T) {
	p := newPair(t, nil, false)
	cmds, _ := p.hub.Client("agent-1").Subscribe(dest.AgentCommand)
	p.beat(false)
	p.beat(false)
	got := drain(cmds)
	if len(got) < 2 {
		t.Fatalf("got %d pings, want 2", len(got))
	}
	var last uint64
	for _, m := range got {
		e, err := protocol.Decode(m.Headers)
		if err != nil || e.FailoverID != primID || e.Epoch != 3 || e.Seq <= last {
			t.Fatalf("ping %+v %v (after seq %d)", e, err, last)
		}
		last = e.Seq
	}
	p.raw("agent-1", dest.AgentStatus, protocol.Envelope{FailoverID: primID, Epoch: 3, Node: "agent-1"}, false)
	p.eventually("registry", func() bool { return p.prim.ConnectedAgents() == 1 })
	for i := 0; i < 31; i++ {
		p.beat(false)
	}
	if n := p.prim.ConnectedAgents(); n != 0 {
		t.Fatalf("an agent silent for 3.1 s still counts as connected (%d)", n)
	}
	if a := p.prim.Agents(); len(a) != 1 || a[0].ID != "agent-1" || a[0].Epoch != 3 {
		t.Fatalf("registry %+v", a)
	}
}

func TestASlowFileScanDoesNotDelayHeartbeats(t *testing.T) {
	hub := broker.NewMemHub()
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	release := make(chan struct{})
	var calls atomic.Int32
	bus := hub.Client("primary")
	role := primary.New(primary.Config{
		Node: "a", Token: failoverid.Token{ID: primID, Epoch: 3}, Period: period, ReplyPeriod: time.Second,
		Dest: dest, Signer: protocol.NewSigner(nil), Clock: clk, Log: quietLog(), CheckEvery: period,
		CheckFiles: func() (*failoverid.Token, error) {
			if calls.Add(1) > 1 { // the start-up check is quick; later scans hang
				<-release
			}
			return nil, nil
		},
	}, bus, bus)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); role.Run(ctx) }()
	defer func() { close(release); cancel(); <-done }()
	p := &pair{t: t, prim: role, clk: clk}
	p.eventually("first heartbeat", func() bool { return role.Status().HeartbeatsSent >= 1 })
	for i := 0; i < 20; i++ {
		p.beat(false) // would time out if the hung scan blocked the loop
	}
	if calls.Load() < 2 {
		t.Fatal("no periodic scan was started")
	}
}

func TestACloneOfThePrimaryThatStartedEarlierStopsUs(t *testing.T) {
	hub := broker.NewMemHub()
	clk := clock.NewHandoverFake(time.Unix(1_700_000_000, 0))
	mk := func(inst string, started int64) *primary.Role {
		bus := hub.Client("p-" + inst)
		return primary.New(primary.Config{Node: "a", Token: failoverid.Token{ID: primID, Epoch: 3}, Period: period,
			ReplyPeriod: time.Second, Dest: dest, Signer: protocol.NewSigner(nil), Clock: clk, Log: quietLog(),
			Instance: inst, StartedMS: started}, bus, bus)
	}
	early, late := mk("i-early", 1000), mk("i-late", 2000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ends := make(chan primary.End, 2)
	go func() { e, _ := early.Run(ctx); ends <- e }()
	go func() { e, _ := late.Run(ctx); ends <- e }()
	var end primary.End
	deadline := time.After(5 * time.Second)
	for end.Kind != primary.Duplicate {
		select {
		case end = <-ends:
		case <-deadline:
			t.Fatal("no clone detected")
		default:
			clk.Advance(period) // returns once both loops took the tick
		}
	}
	if !strings.Contains(end.Reason, "duplicate failover_id") {
		t.Fatal(end.Reason)
	}
	// The survivor is the earlier one: it keeps heartbeating. (It warns in
	// its status only if it heard the later one before that one stopped.)
	sent := early.Status().HeartbeatsSent
	for i := 0; i < 5; i++ {
		if n := clk.Step(period); n != 1 { // the later clone's loop ended: only the earlier takes ticks
			t.Fatalf("the earlier clone stopped too (%d loops took the tick)", n)
		}
	}
	p := &pair{t: t, clk: clk}
	p.eventually("the earlier clone heartbeats", func() bool { return early.Status().HeartbeatsSent > sent })
}

func TestSwitchoverLearnedFromTheFilesStillNamesTheNewPrimary(t *testing.T) {
	p := newPair(t, nil, true)
	p.beat(true)
	if err := p.prim.Switchover(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.backEnd:
	case <-time.After(5 * time.Second):
		t.Fatal("backup did not take over")
	}
	// The files show the new epoch before any heartbeat from b arrives.
	p.higher.Store(&failoverid.Token{ID: backID, Epoch: 4})
	p.clk.Advance(5 * period) // a late tick: the scan finds it
	select {
	case end := <-p.primEnd:
		if end.Kind != primary.HandedOver || end.ByAdvertise != "127.0.0.1:1002" || end.ByNode != "b" {
			t.Fatalf("%+v", end)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("primary did not end")
	}
}

// A switchover waits HandoverTimeout for the backup's higher epoch (its
// before_takeover hook may be slow), then lapses and the primary stays.
func TestASwitchoverLapsesOnlyAfterTheHandoverTimeout(t *testing.T) {
	p := newPair(t, nil, true)
	p.beat(true)
	if err := p.prim.Switchover(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.backEnd: // it took over, but its heartbeat never comes
	case <-time.After(5 * time.Second):
		t.Fatal("backup did not take over on switchover")
	}
	for i := 0; i < int(window/period)-1; i++ {
		p.beat(false)
	}
	if s := p.prim.Status(); s.Handover != backID {
		t.Fatalf("handover dropped before the timeout: %+v", s)
	}
	if err := p.prim.Switchover(context.Background(), ""); err != primary.ErrSwitchoverState {
		t.Fatalf("switchover during a handover: %v", err)
	}
	p.beat(false)
	p.beat(false)
	if s := p.prim.Status(); s.Handover != "" {
		t.Fatalf("handover still pending %s after it began (timeout %s): %+v", window+period, window, s)
	}
	p.took(period, 1, "the primary ended when the switchover lapsed")
}

// The backup counts every heartbeat it receives and, apart, those it did not
// take as the watched primary's (here: an unknown server at a lower epoch),
// so an operator can tell a stray sender from a live primary in the metrics.
func TestTheBackupCountsIgnoredHeartbeatsApart(t *testing.T) {
	p := newPair(t, nil, true)
	p.beat(true)
	s0 := p.back.Status()
	p.raw("x", dest.Heartbeat, protocol.Envelope{FailoverID: evilID, Epoch: 1, Node: "x", Seq: 1, Role: "primary"}, false)
	p.eventually("stray heartbeat counted as ignored", func() bool { return p.back.Status().Ignored == s0.Ignored+1 })
	p.beat(true)
	s := p.back.Status()
	if s.Ignored != s0.Ignored+1 || s.Received < s0.Received+2 {
		t.Fatalf("received %d -> %d, ignored %d -> %d; want +2 (or more) and +1", s0.Received, s.Received, s0.Ignored, s.Ignored)
	}
	if s.Primary.FailoverID != primID {
		t.Fatalf("the stray heartbeat changed the watched primary: %+v", s.Primary)
	}
}

// notifyRole runs primary b (token backID@4, advertise 127.0.0.1:1002) on
// the in-memory broker own, with notify as its previous primary's broker
// and the group key's signer, until the test ends.
func notifyRole(t *testing.T, own *broker.MemHub, notify broker.Bus) (*primary.Role, *clock.Fake, *protocol.Signer, ed25519.PublicKey) {
	t.Helper()
	return notifyRoleWith(t, own, notify, false)
}

// notifyRoleWith is notifyRole, with secondPath as Config.SecondPath (an
// external heartbeat channel; the role's heartbeats then go to own too).
func notifyRoleWith(t *testing.T, own *broker.MemHub, notify broker.Bus, secondPath bool) (*primary.Role, *clock.Fake, *protocol.Signer, ed25519.PublicKey) {
	t.Helper()
	_, priv, err := protocol.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	signer := protocol.NewGroupSigner(dest, protocol.Keys{Secret: []byte("0123456789abcdef"), Private: priv})
	clk := clock.NewHandoverFake(time.Unix(1_700_000_000, 0))
	bus := own.Client("b")
	role := primary.New(primary.Config{
		Node: "b", Token: failoverid.Token{ID: backID, Epoch: 4}, Advertise: "127.0.0.1:1002",
		Period: period, ReplyPeriod: time.Second, HandoverTimeout: window, Dest: dest, Signer: signer,
		Clock: clk, Log: quietLog(), SeqBase: 1000, CheckEvery: time.Hour,
		CheckFiles: func() (*failoverid.Token, error) { return nil, nil },
		Ping:       true, Notify: []broker.Bus{notify}, SecondPath: secondPath,
	}, bus, bus)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _, _ = role.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return role, clk, signer, priv.Public().(ed25519.PublicKey)
}

// A new primary's rebind goes out on the previous primary's broker too
// (its Notify bus): an agent still bound there, which never learned this
// server and so holds no standby link to it, gets it on its bound link.
func TestRebindsAlsoGoToThePreviousPrimarysBroker(t *testing.T) {
	own, old := broker.NewMemHub(), broker.NewMemHub()
	onOld, _ := old.Client("agent-bound-to-a").Subscribe(dest.AgentCommand)
	_, clk, signer, pub := notifyRole(t, own, old.Client("b-notify"))
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-onOld.C():
			if m.Headers["command"] != "rebind" {
				continue // the notify heartbeat
			}
			e, err := protocol.Decode(m.Headers)
			if err != nil || e.FailoverID != backID || e.Epoch != 4 || e.Advertise != "127.0.0.1:1002" {
				t.Fatalf("rebind on the old broker: %+v %v", e, err)
			}
			if err := protocol.NewGroupSigner(dest, protocol.Keys{Public: pub}).Verify(dest.AgentCommand, m.Headers, m.Body); err != nil {
				t.Fatalf("the rebind on the old broker is not signed by the group: %v", err)
			}
			if err := signer.VerifyTokenSig(e.FailoverSig, backID, 4, "127.0.0.1", 1002); err != nil {
				t.Fatalf("its failover-sig: %v", err)
			}
			return
		case <-deadline:
			t.Fatal("no rebind reached the previous primary's broker")
		case <-time.After(time.Millisecond):
			clk.Step(period)
		}
	}
}

// With the embedded heartbeat channel the previous primary's broker gets
// the heartbeats (a primary that was only frozen learns there it was
// replaced); with an external one (SecondPath) it hears the channel
// itself, and its broker gets the rebinds only.
func TestThePreviousPrimarysBrokerGetsHeartbeatsOnlyWithTheEmbeddedChannel(t *testing.T) {
	for _, external := range []bool{false, true} {
		own, old := broker.NewMemHub(), broker.NewMemHub()
		onOwn, _ := own.Client("backup").Subscribe(dest.Heartbeat)
		onOld := old.Client("a")
		cmds, _ := onOld.Subscribe(dest.AgentCommand)
		beats, _ := onOld.Subscribe(dest.Heartbeat)
		_, clk, _, _ := notifyRoleWith(t, own, old.Client("b-notify"), external)
		// Heartbeats on own from two periods and a rebind on the old
		// broker: the first period's publishing, the copy to the old
		// broker included, is over before the second's starts. (With
		// SecondPath each heartbeat reaches own twice: the channel and
		// the agents' broker.)
		need := 2
		if external {
			need = 3
		}
		ownBeats, rebound := 0, false
		deadline := time.After(5 * time.Second)
		for ownBeats < need || !rebound {
			select {
			case <-onOwn.C():
				ownBeats++
			case m := <-cmds.C():
				rebound = rebound || m.Headers["command"] == "rebind"
			case <-deadline:
				t.Fatalf("external %v: %d heartbeats on the channel, rebind on the previous primary's broker %v", external, ownBeats, rebound)
			case <-time.After(time.Millisecond):
				clk.Step(period)
			}
		}
		got := len(beats.C())
		if external && got != 0 {
			t.Fatalf("with an external heartbeat channel the previous primary's broker got %d heartbeats", got)
		}
		if !external && got == 0 {
			t.Fatal("with the embedded heartbeat channel the previous primary's broker got no heartbeat")
		}
	}
}

// A previous primary's broker that is down (kill -9) costs the rebind
// nothing: it still goes out on this server's own broker, and is counted.
func TestARebindStillGoesOutWhenThePreviousPrimarysBrokerIsDown(t *testing.T) {
	own := broker.NewMemHub()
	onOwn, _ := own.Client("agent").Subscribe(dest.AgentCommand)
	down := broker.NewMemHub().Client("b-notify")
	_ = down.Close() // its Publish fails at once
	role, clk, _, _ := notifyRole(t, own, down)
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-onOwn.C():
			if m.Headers["command"] != "rebind" {
				continue
			}
			deadline := time.Now().Add(5 * time.Second)
			for role.Status().RebindsSent == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the rebind went out but was not counted")
				}
				time.Sleep(time.Millisecond)
			}
			return
		case <-deadline:
			t.Fatal("no rebind on the server's own broker while the previous primary's is down")
		case <-time.After(time.Millisecond):
			clk.Step(period)
		}
	}
}

// An agent still bound to the replaced primary that knows no other server,
// and that connects to that server's broker long after the takeover (the
// new primary's first rebinds are over), is heard there by the new
// primary and rebound on that broker: without it, it would stay with a
// fenced server, which sends it nothing, for good.
func TestAnAgentHeardOnThePreviousPrimarysBrokerIsRebound(t *testing.T) {
	own, old := broker.NewMemHub(), broker.NewMemHub()
	onOld, _ := old.Client("agent-bound-to-a").Subscribe(dest.AgentCommand)
	role, clk, signer, _ := notifyRole(t, own, old.Client("b-notify"))
	rebinds := func() int {
		n := 0
		for {
			select {
			case m := <-onOld.C():
				if m.Headers["command"] == "rebind" {
					n++
				}
			default:
				return n
			}
		}
	}
	// beats steps the clock until the role has sent n more heartbeats
	// (each sent after the core decided that beat's rebind, if any).
	// It returns the rebinds the old broker got meanwhile.
	beats := func(n uint64) int {
		t.Helper()
		want := role.Status().HeartbeatsSent + n
		deadline := time.Now().Add(5 * time.Second)
		got := 0
		for role.Status().HeartbeatsSent < want {
			if time.Now().After(deadline) {
				t.Fatalf("the role sent no %d heartbeats", n)
			}
			clk.Step(period)
			time.Sleep(time.Millisecond)
			got += rebinds()
		}
		return got + rebinds()
	}
	// The takeover's rebinds: a few periods' worth, then none.
	if sent := beats(30); sent == 0 {
		t.Fatal("no rebind at the takeover")
	}
	quiet := role.Status().RebindsSent
	if n := beats(3); n != 0 || role.Status().RebindsSent != quiet {
		t.Fatalf("%d rebinds long after the takeover, with no agent behind", n)
	}
	// An agent connects to the old broker and reports, with no token.
	h := protocol.Envelope{FailoverID: "none", Node: "late-agent", Role: "agent"}.Headers()
	body := []byte(`{"id":"late-agent"}`)
	signer.Sign(dest.AgentStatus, h, body)
	if err := old.Client("late-agent").Publish(context.Background(), dest.AgentStatus, h, body); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(role.Agents()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the new primary did not hear the agent on the previous primary's broker")
		}
		time.Sleep(time.Millisecond)
	}
	if n := beats(2); n == 0 {
		t.Fatal("no rebind on the previous primary's broker for the agent heard there")
	}
}
