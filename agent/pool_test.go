package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
)

// countingBus is a MemHub client that counts what the pool does with it.
type countingBus struct {
	broker.Bus
	subs, closes *atomic.Int32
}

func (b countingBus) Subscribe(dest string) (broker.Subscription, error) {
	b.subs.Add(1)
	return b.Bus.Subscribe(dest)
}

func (b countingBus) Close() error {
	b.closes.Add(1)
	return b.Bus.Close()
}

// hubs is one in-memory broker per server (a MemHub is one broker: every
// client on it hears every publish).
type hubs struct {
	mu sync.Mutex
	m  map[string]*broker.MemHub
}

func (h *hubs) of(server string) *broker.MemHub {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string]*broker.MemHub{}
	}
	if h.m[server] == nil {
		h.m[server] = broker.NewMemHub()
	}
	return h.m[server]
}

type poolRig struct {
	hubs                hubs
	hub                 *broker.MemHub
	dials, subs, closes atomic.Int32
	pool                *Pool
	gate                chan struct{} // when set, dials wait for it
	failNext            atomic.Bool
}

func newPoolRig(buffer int) *poolRig {
	r := &poolRig{}
	r.hub = r.hubs.of("server-a:1001")
	r.pool = NewPool(func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
		r.dials.Add(1)
		if r.gate != nil {
			<-r.gate
		}
		if r.failNext.Swap(false) {
			return nil, errors.New("dial failed")
		}
		return countingBus{r.hubs.of(target(addr)).Client("agents"), &r.subs, &r.closes}, nil
	}, buffer)
	return r
}

func addrOf(host string, port int) agentcfg.Address {
	return agentcfg.Address{StompInterface: host, StompPort: port, FailoverID: idA, FailoverEpoch: 1}
}

func recv(t *testing.T, s broker.Subscription) broker.Message {
	t.Helper()
	select {
	case m, ok := <-s.C():
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message")
	}
	return broker.Message{}
}

func closed(t *testing.T, s broker.Subscription) {
	t.Helper()
	select {
	case _, ok := <-s.C():
		if ok {
			t.Fatal("message on a closed subscription")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscription not closed")
	}
}

func TestPoolSharesOneLinkAndOneSubscriptionPerServer(t *testing.T) {
	r := newPoolRig(0)
	ctx := context.Background()
	b1, err := r.pool.Dial(ctx, addrOf("server-a", 1001))
	if err != nil {
		t.Fatal(err)
	}
	// Another agent bound to another token at the same server: same link.
	other := addrOf("server-a", 1001)
	other.FailoverID, other.FailoverEpoch = idB, 7
	b2, _ := r.pool.Dial(ctx, other)
	b3, _ := r.pool.Dial(ctx, addrOf("server-b", 1002))
	if r.dials.Load() != 2 || r.pool.Links() != 2 {
		t.Fatalf("dials %d, links %d; want 2 and 2", r.dials.Load(), r.pool.Links())
	}
	s1, _ := b1.Subscribe(dest.AgentCommand)
	s2, _ := b2.Subscribe(dest.AgentCommand)
	s3, _ := b3.Subscribe(dest.AgentCommand)
	if r.subs.Load() != 2 {
		t.Fatalf("%d subscriptions on the links, want one per server", r.subs.Load())
	}
	h := protocol.Envelope{FailoverID: idA, Epoch: 1, Node: "a", Seq: 1}.Headers()
	if err := r.hub.Client("server").Publish(ctx, dest.AgentCommand, h, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []broker.Subscription{s1, s2} {
		if m := recv(t, s); string(m.Body) != "ping" || m.Headers[protocol.HSeq] != "1" {
			t.Fatalf("got %+v", m)
		}
	}
	if d := r.hub.Stats().Delivered; d != 1 {
		t.Fatalf("the server delivered %d copies to the fleet, want 1", d)
	}
	// Publishing goes through the shared link.
	st, _ := r.hub.Client("server").Subscribe(dest.AgentStatus)
	if err := b2.Publish(ctx, dest.AgentStatus, h, []byte("status")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, st); string(m.Body) != "status" {
		t.Fatalf("got %+v", m)
	}
	select {
	case m := <-s3.C():
		t.Fatalf("server-b's agent got server-a's command: %+v", m)
	default:
	}
}

func TestPoolClosesTheLinkWithItsLastAgent(t *testing.T) {
	r := newPoolRig(0)
	ctx := context.Background()
	b1, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	b2, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	s1, _ := b1.Subscribe(dest.AgentCommand)
	s2, _ := b2.Subscribe(dest.AgentCommand)

	b1.Close()
	b1.Close() // safe twice
	closed(t, s1)
	if err := b1.Publish(ctx, dest.AgentStatus, nil, nil); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("publish on a closed handle: %v", err)
	}
	if _, err := b1.Subscribe(dest.AgentCommand); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("subscribe on a closed handle: %v", err)
	}
	if r.closes.Load() != 0 || r.pool.Links() != 1 {
		t.Fatal("the link closed while an agent still uses it")
	}
	// The remaining agent still hears its server.
	r.hub.Client("server").Publish(ctx, dest.AgentCommand, nil, []byte("x"))
	recv(t, s2)

	// A subscription closed on its own leaves the handle usable; the
	// shared subscription goes with its last member.
	s2.Close()
	s2.Close()
	closed(t, s2)
	s2b, _ := b2.Subscribe(dest.AgentCommand)
	if r.subs.Load() != 2 {
		t.Fatalf("%d subscriptions, want a new one after the last member left", r.subs.Load())
	}
	b2.Close()
	closed(t, s2b)
	if r.closes.Load() != 1 || r.pool.Links() != 0 {
		t.Fatalf("closes %d, links %d after the last agent left", r.closes.Load(), r.pool.Links())
	}
	// The next agent dials again.
	b3, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	defer b3.Close()
	if r.dials.Load() != 2 {
		t.Fatalf("dials %d, want a new link", r.dials.Load())
	}
}

func TestPoolSlowAgentLosesItsOldestCommandsOnly(t *testing.T) {
	r := newPoolRig(2)
	ctx := context.Background()
	slow, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	fast, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	defer slow.Close()
	defer fast.Close()
	ss, _ := slow.Subscribe(dest.AgentCommand)
	fs, _ := fast.Subscribe(dest.AgentCommand)
	srv := r.hub.Client("server")
	for i := 1; i <= 5; i++ {
		srv.Publish(ctx, dest.AgentCommand, nil, []byte(fmt.Sprint(i)))
		if m := recv(t, fs); string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("fast agent got %q, want %d", m.Body, i)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for ss.Dropped() != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("slow agent dropped %d, want 3", ss.Dropped())
		}
		time.Sleep(time.Millisecond)
	}
	if a, b := recv(t, ss), recv(t, ss); string(a.Body) != "4" || string(b.Body) != "5" {
		t.Fatalf("slow agent kept %q %q, want the newest two", a.Body, b.Body)
	}
	if fs.Dropped() != 0 {
		t.Fatalf("fast agent dropped %d", fs.Dropped())
	}
}

func TestPoolConcurrentDialsShareTheFirstAttempt(t *testing.T) {
	r := newPoolRig(0)
	r.gate = make(chan struct{})
	ctx := context.Background()
	got := make(chan broker.Bus, 2)
	go func() {
		b, err := r.pool.Dial(ctx, addrOf("server-a", 1001))
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	deadline := time.Now().Add(5 * time.Second)
	for r.dials.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("first dial not started")
		}
		time.Sleep(time.Millisecond)
	}
	// A waiter whose context ends gives up without a handle.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.pool.Dial(cctx, addrOf("server-a", 1001)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	go func() {
		b, err := r.pool.Dial(ctx, addrOf("server-a", 1001))
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	time.Sleep(10 * time.Millisecond) // most likely queued behind the first attempt now; it shares the link either way
	close(r.gate)
	b1, b2 := <-got, <-got
	if r.dials.Load() != 1 {
		t.Fatalf("%d dials for one server", r.dials.Load())
	}
	b1.Close()
	b2.Close()
	if r.closes.Load() != 1 || r.pool.Links() != 0 {
		t.Fatalf("closes %d, links %d: a reference leaked", r.closes.Load(), r.pool.Links())
	}
}

func TestPoolForgetsAFailedDial(t *testing.T) {
	r := newPoolRig(0)
	r.failNext.Store(true)
	ctx := context.Background()
	if _, err := r.pool.Dial(ctx, addrOf("server-a", 1001)); err == nil {
		t.Fatal("the dial error was not returned")
	}
	if r.pool.Links() != 0 {
		t.Fatal("a failed link is kept")
	}
	b, err := r.pool.Dial(ctx, addrOf("server-a", 1001))
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if r.dials.Load() != 2 {
		t.Fatalf("dials %d, want a retry", r.dials.Load())
	}
}

// Two agents of one fleet share server-a's link; each obeys its own file.
// When one file moves to server-b, that agent leaves the shared link (which
// stays up for the other) and rejects server-a from then on, while the
// other still obeys it.
func TestPooledAgentsKeepTheirOwnBinding(t *testing.T) {
	var hs hubs
	var dials atomic.Int32
	pool := NewPool(func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
		dials.Add(1)
		return hs.of(target(addr)).Client("agents"), nil
	}, 0)
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	log, _ := test.NewNullLogger()
	var mu sync.Mutex
	var events []Event
	dir := t.TempDir()
	type one struct {
		a       *Agent
		path    string
		changes chan struct{}
	}
	var agents []one
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range 2 {
		o := one{path: filepath.Join(dir, fmt.Sprintf("a%d.yaml", i)), changes: make(chan struct{}, 1)}
		writeFile(t, o.path, "server-a", 1001, idA, 1)
		ch := o.changes
		o.a = New(Config{Path: o.path, ID: fmt.Sprintf("agent-%d", i), Period: 100 * time.Millisecond, Dest: dest,
			Signer: protocol.NewSigner(nil), Clock: clk, Log: log, Dial: pool.Dial, PingGap: FleetPingGap(100 * time.Millisecond),
			Watch: func(context.Context, string, time.Duration) (<-chan struct{}, error) { return ch, nil },
			OnEvent: func(e Event) {
				mu.Lock()
				events = append(events, e)
				mu.Unlock()
			}})
		agents = append(agents, o)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.a.Run(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for: %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	wait("both connected", func() bool { return agents[0].a.Status().Connected && agents[1].a.Status().Connected })
	wait("one link", func() bool { return pool.Links() == 1 && hs.of("server-a:1001").Stats().Published >= 2 })
	if dials.Load() != 1 {
		t.Fatalf("%d dials for one server", dials.Load())
	}
	decided := func(n int) []Event {
		t.Helper()
		wait(fmt.Sprintf("%d decisions", n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(events) >= n
		})
		mu.Lock()
		defer mu.Unlock()
		return append([]Event(nil), events...)
	}
	command := func(server, id string, epoch, seq uint64) {
		h := protocol.Envelope{FailoverID: id, Epoch: epoch, Node: server, Seq: seq}.Headers()
		if err := hs.of(server).Client("server").Publish(ctx, dest.AgentCommand, h, nil); err != nil {
			t.Fatal(err)
		}
	}
	command("server-a:1001", idA, 1, 1)
	for _, e := range decided(2) {
		if !e.Accepted {
			t.Fatalf("%+v", e)
		}
	}

	writeFile(t, agents[0].path, "server-b", 1002, idB, 2)
	agents[0].changes <- struct{}{}
	wait("agent-0 at server-b", func() bool { return agents[0].a.Status().Server == "server-b:1002" && agents[0].a.Status().Connected })
	wait("two links", func() bool { return pool.Links() == 2 })
	// server-a still reaches agent-1 only; the old link is still shared by
	// it. (A gap after its last accepted ping: a repeat within it would be
	// passed over, see FleetPingGap.)
	clk.Advance(FleetPingGap(100 * time.Millisecond))
	command("server-a:1001", idA, 1, 2)
	command("server-b:1002", idB, 2, 3)
	ev := decided(4)[2:]
	by := map[string]Event{}
	for _, e := range ev {
		by[fmt.Sprintf("%s/%d", e.Agent, e.Seq)] = e
	}
	if e, ok := by["agent-1/2"]; !ok || !e.Accepted {
		t.Fatalf("agent-1 should obey server-a: %+v", ev)
	}
	if e, ok := by["agent-0/3"]; !ok || !e.Accepted {
		t.Fatalf("agent-0 should obey server-b: %+v", ev)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range events {
		if e.Accepted && !(e.From == e.Bound) {
			t.Fatalf("I1: %+v", e)
		}
	}
}

// A dial function that returns a typed nil with its error (a nil *Link in a
// non-nil Bus, as broker.Dial's result would be if passed on as is) must
// not leave the pool holding, and later closing, that nil.
func TestPoolFailedDialWithATypedNilDoesNotCrash(t *testing.T) {
	pool := NewPool(func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
		var l *broker.Link
		return l, errors.New("dial refused")
	}, 0)
	if _, err := pool.Dial(context.Background(), addrOf("server-a", 1001)); err == nil {
		t.Fatal("the dial error was not returned")
	}
	if pool.Links() != 0 {
		t.Fatal("a failed link is kept")
	}
}

// The agents of one fan-out share one signature check per message: every
// copy carries the same memo, and a check done by one is the others'.
func TestPooledAgentsShareOneSignatureCheckPerMessage(t *testing.T) {
	r := newPoolRig(0)
	ctx := context.Background()
	var subs []broker.Subscription
	for i := 0; i < 3; i++ {
		b, err := r.pool.Dial(ctx, addrOf("server-a", 1001))
		if err != nil {
			t.Fatal(err)
		}
		s, _ := b.Subscribe(dest.AgentCommand)
		subs = append(subs, s)
	}
	h := protocol.Envelope{FailoverID: idA, Epoch: 1, Node: "a", Seq: 1}.Headers()
	if err := r.hub.Client("server").Publish(ctx, dest.AgentCommand, h, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	checks := 0
	key := verifyKey{dest: dest.AgentCommand}
	var memo *broker.Memo
	for _, s := range subs {
		m := recv(t, s)
		if m.Memo == nil || (memo != nil && m.Memo != memo) {
			t.Fatalf("copies carry memos %p and %p, want one shared", memo, m.Memo)
		}
		memo = m.Memo
		if err := m.Memo.Do(key, func() error { checks++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if checks != 1 {
		t.Fatalf("%d signature checks for 3 agents, want 1", checks)
	}
}

func TestPoolSubscribeWhereGetsOnlyWhatItWants(t *testing.T) {
	r := newPoolRig(0)
	ctx := context.Background()
	bound, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	standby, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	all, _ := bound.Subscribe(dest.AgentCommand)
	w, ok := standby.(whereSubscriber)
	if !ok {
		t.Fatal("a pool's bus picks no messages")
	}
	rebinds, err := w.SubscribeWhere(dest.AgentCommand, isRebind)
	if err != nil {
		t.Fatal(err)
	}
	if r.subs.Load() != 1 {
		t.Fatalf("%d subscriptions on the link, want one shared", r.subs.Load())
	}
	srv := r.hub.Client("server")
	srv.Publish(ctx, dest.AgentCommand, map[string]string{"seq": "1"}, []byte("ping"))
	srv.Publish(ctx, dest.AgentCommand, map[string]string{hCommand: cmdRebind, "seq": "2"}, []byte("rebind"))
	// The subscriber of everything sees both, in order: so the ping was
	// fanned out before the rebind reached the standby subscriber.
	if m := recv(t, all); string(m.Body) != "ping" {
		t.Fatalf("first: %q", m.Body)
	}
	if m := recv(t, all); string(m.Body) != "rebind" {
		t.Fatalf("second: %q", m.Body)
	}
	if m := recv(t, rebinds); string(m.Body) != "rebind" {
		t.Fatalf("the standby subscriber got %q before the rebind", m.Body)
	}
	select {
	case m := <-rebinds.C():
		t.Fatalf("the standby subscriber got %q too", m.Body)
	default:
	}
}

// holdFanOut subscribes on bus to every command; the fan-out of the one
// whose body is body stops in this member until release is closed
// (entered tells it got there).
func holdFanOut(t *testing.T, bus broker.Bus, body string) (sub broker.Subscription, entered, release chan struct{}) {
	t.Helper()
	entered, release = make(chan struct{}), make(chan struct{})
	sub, err := bus.(whereSubscriber).SubscribeWhere(dest.AgentCommand, func(m broker.Message) bool {
		if string(m.Body) == body {
			entered <- struct{}{}
			<-release
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return sub, entered, release
}

// Agents join and leave a shared subscription while a fan-out walks its
// members (a takeover moves thousands while pings are fanned out): neither
// waits for the walk. A member that joins gets the next message.
func TestPoolJoinAndLeaveDoNotWaitForAFanOut(t *testing.T) {
	r := newPoolRig(0)
	ctx := context.Background()
	first, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	defer first.Close()
	held, entered, release := holdFanOut(t, first, "1")
	leaver, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
	ls, _ := leaver.Subscribe(dest.AgentCommand)
	srv := r.hub.Client("server")
	srv.Publish(ctx, dest.AgentCommand, nil, []byte("1"))
	<-entered // the fan-out of "1" is under way, held by the first member
	joined := make(chan broker.Subscription, 1)
	go func() {
		late, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
		s, err := late.Subscribe(dest.AgentCommand)
		if err != nil {
			t.Error(err)
		}
		ls.Close()
		joined <- s
	}()
	var late broker.Subscription
	select {
	case late = <-joined:
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("joining and leaving waited for the fan-out under way")
	}
	close(release)
	srv.Publish(ctx, dest.AgentCommand, nil, []byte("2"))
	if m := recv(t, late); string(m.Body) != "2" {
		t.Fatalf("the member that joined during the fan-out got %q first, want the next message", m.Body)
	}
	if a, b := recv(t, held), recv(t, held); string(a.Body) != "1" || string(b.Body) != "2" {
		t.Fatalf("the first member got %q %q", a.Body, b.Body)
	}
}

// A fan-out that fell behind skips a message that a newer one waiting
// behind it supersedes, and counts it; without the rule it delivers all.
func TestPoolSkipsSupersededMessagesWhenBehind(t *testing.T) {
	for _, skip := range []bool{false, true} {
		r := newPoolRig(0)
		if skip {
			// "p..." messages: a later one supersedes an earlier.
			r.pool.SkipSuperseded(func(older, newer broker.Message) bool {
				return older.Body[0] == 'p' && newer.Body[0] == 'p'
			})
		}
		ctx := context.Background()
		bus, _ := r.pool.Dial(ctx, addrOf("server-a", 1001))
		sub, entered, release := holdFanOut(t, bus, "p1")
		srv := r.hub.Client("server")
		srv.Publish(ctx, dest.AgentCommand, nil, []byte("p1"))
		<-entered // the fan-out of p1 is under way: the rest waits
		for _, b := range []string{"p2", "r3", "p4", "p5"} {
			srv.Publish(ctx, dest.AgentCommand, nil, []byte(b))
		}
		close(release)
		want := []string{"p1", "p2", "r3", "p4", "p5"}
		if skip {
			want = []string{"p1", "r3", "p5"} // p2 and p4 superseded by p5
		}
		var got []string
		for range want {
			got = append(got, string(recv(t, sub).Body))
		}
		// A last message after them: nothing else was queued before it.
		srv.Publish(ctx, dest.AgentCommand, nil, []byte("r6"))
		if m := recv(t, sub); string(m.Body) != "r6" || strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("skip=%v: got %v then %q, want %v then r6", skip, got, m.Body, want)
		}
		if n, wantN := r.pool.Skipped(), uint64(5-len(want)); n != wantN {
			t.Fatalf("skip=%v: %d skipped, want %d", skip, n, wantN)
		}
		bus.Close()
	}
}
