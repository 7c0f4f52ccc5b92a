package broker

import (
	"context"
	"errors"
	"fmt"
	"github.com/tandem-ha/tandem/protocol"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbrokers"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		addr string
		tls  bool
		ok   bool
	}{
		{"stomp://127.0.0.1:61613", "127.0.0.1:61613", false, true},
		{"stomp+ssl://broker.example:61614", "broker.example:61614", true, true},
		{"tcp://[::1]:1", "[::1]:1", false, true},
		{"localhost:61620", "localhost:61620", false, true},
		{"http://x:1", "", false, false},
		{"stomp://x", "", false, false},
		{"nohost", "", false, false},
		{"", "", false, false},
	} {
		ep, err := parseURL(tc.in)
		if (err == nil) != tc.ok || (tc.ok && (ep.addr != tc.addr || ep.useTLS != tc.tls)) {
			t.Errorf("parseURL(%q) = %+v, %v", tc.in, ep, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("parseURL(%q): %v is not ErrInvalidConfig", tc.in, err)
		}
	}
}

func TestLinkBackoffBounds(t *testing.T) {
	l := &Link{cfg: LinkConfig{BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}}
	for attempt := 1; attempt < 40; attempt++ {
		d := l.backoff(attempt)
		ceil := min(100*time.Millisecond<<min(attempt-1, 20), time.Second)
		if d < ceil/2 || d > ceil {
			t.Fatalf("attempt %d: %s not in [%s, %s]", attempt, d, ceil/2, ceil)
		}
	}
}

func TestStateString(t *testing.T) {
	s := State{State: StateDisconnected, Addr: "h:1", Err: errors.New("boom"), Attempt: 3}
	if got := s.String(); got != "disconnected h:1: boom (attempt 3)" {
		t.Fatal(got)
	}
	if StateConnected.String() != "connected" || ConnState(9).String() != "ConnState(9)" {
		t.Fatal("ConnState.String")
	}
}

func TestLinkNotConnectedAndClosed(t *testing.T) {
	addr := freeAddr(t) // nothing listens here
	l, err := Dial(context.Background(), LinkConfig{URL: addr, Log: testLog(t), BackoffMin: time.Hour, BackoffMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Publish(context.Background(), "/topic/x", nil, nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("publish while down: %v", err)
	}
	s, err := l.Subscribe("/topic/x") // allowed while down
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.WaitConnected(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitConnected: %v", err)
	}
	l.Close()
	l.Close()
	if _, ok := <-s.C(); ok {
		t.Fatal("subscription open after Close")
	}
	if err := l.Publish(context.Background(), "/topic/x", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if _, err := l.Subscribe("/topic/x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after close: %v", err)
	}
	if _, err := Dial(context.Background(), LinkConfig{URL: "bogus://"}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("bad URL: %v", err)
	}
}

// TestLinkReconnectResubscribe restarts the embedded broker on the same port.
func TestLinkReconnectResubscribe(t *testing.T) {
	s := startTestServer(t, ServerConfig{})
	addr := s.Addr()
	var mu sync.Mutex
	var states []ConnState
	sub := dialTest(t, LinkConfig{URL: addr, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		OnState: func(st State) { mu.Lock(); states = append(states, st.State); mu.Unlock() }})
	pub := dialTest(t, LinkConfig{URL: addr, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	ss, _ := sub.Subscribe("/topic/a")
	waitSubscribed(t, s, "/topic/a", 1)
	if err := pub.Publish(context.Background(), "/topic/a", map[string]string{"n": "1"}, nil); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, ss, 5*time.Second)

	s.Close()
	waitFor(t, 5*time.Second, "links to notice", func() bool { return !sub.Connected() && !pub.Connected() })
	s2 := startTestServer(t, ServerConfig{Listen: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sub.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pub.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	waitSubscribed(t, s2, "/topic/a", 1)
	if err := pub.Publish(context.Background(), "/topic/a", map[string]string{"n": "2"}, nil); err != nil {
		t.Fatal(err)
	}
	if m := recvWithin(t, ss, 5*time.Second); m.Headers["n"] != "2" {
		t.Fatalf("got %+v", m)
	}
	// OnState runs just after the link is usable.
	waitFor(t, 5*time.Second, "connected reported", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return states[len(states)-1] == StateConnected
	})
	mu.Lock()
	defer mu.Unlock()
	want := []ConnState{StateConnected, StateDisconnected}
	if len(states) < 3 || states[0] != want[0] || states[1] != want[1] || states[len(states)-1] != StateConnected {
		t.Fatalf("states %v", states)
	}
}

// TestLinkSlowConsumer: a subscription nobody reads loses its oldest
// messages but the connection keeps delivering to the others.
func TestLinkSlowConsumer(t *testing.T) {
	s := startTestServer(t, ServerConfig{})
	l := dialTest(t, LinkConfig{URL: s.Addr(), BufferSize: 10})
	slow, _ := l.Subscribe("/topic/s")
	fast, _ := l.Subscribe("/topic/s")
	waitSubscribed(t, s, "/topic/s", 2)
	const n = 500
	got := make(chan int, 1)
	go func() {
		c := 0
		for m := range fast.C() {
			c++
			if m.Headers["i"] == fmt.Sprint(n-1) {
				break
			}
		}
		got <- c
	}()
	for i := 0; i < n; i++ {
		if err := l.Publish(context.Background(), "/topic/s", map[string]string{"i": fmt.Sprint(i)}, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case c := <-got:
		if c+int(fast.Dropped()) != n {
			t.Fatalf("fast got %d + dropped %d of %d", c, fast.Dropped(), n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fast subscriber stalled")
	}
	waitFor(t, 5*time.Second, "slow drops", func() bool { return slow.Dropped() == n-10 })
	var last Message
	for i := 0; i < 10; i++ {
		last = recvWithin(t, slow, time.Second)
	}
	if last.Headers["i"] != fmt.Sprint(n-1) {
		t.Fatalf("slow kept %v, want the newest", last.Headers)
	}
	// Closing a subscription does not wait for go-stomp's unsubscribe
	// receipt (the embedded broker sends none).
	start := time.Now()
	slow.Close()
	slow.Close()
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("Subscription.Close took %s", d)
	}
}

// TestLinkCloseDuringConnect: Close does not wait out DialTimeout when the
// broker accepts TCP but never answers CONNECT.
func TestLinkCloseDuringConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accept, say nothing
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, LinkConfig{URL: ln.Addr().String(), DialTimeout: 30 * time.Second, Log: testLog(t)})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Dial+Close took %s", d)
	}
}

// TestLinkPublishAndCloseBoundedWhenTheBrokerStopsReading: go-stomp's Send
// holds the connection's lock while it waits (up to its send timeout) for a
// slot in a write queue nothing drains; publishers queue behind each other
// and so does Disconnect. Publish must still return by its context's
// deadline and Close within a bound.
// jammedLink dials cfg to a broker that stops reading (a BlackHole) and
// backs its writes up; stop ends the background publishers.
func jammedLink(t *testing.T, cfg LinkConfig) (*testbrokers.BlackHole, *Link, func()) {
	t.Helper()
	bh := testbrokers.StartBlackHole(t)
	cfg.URL = bh.Addr()
	l, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	return bh, l, testbrokers.Jam(t, func(ctx context.Context, body []byte) error { return l.Publish(ctx, "/topic/jam", nil, body) })
}

func TestLinkPublishAndCloseBoundedWhenTheBrokerStopsReading(t *testing.T) {
	_, l, stop := jammedLink(t, LinkConfig{Log: testLog(t)})
	defer stop()

	for i := 0; i < 3; i++ {
		pctx, pcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		err := l.Publish(pctx, "/topic/status", map[string]string{"i": fmt.Sprint(i)}, []byte("small"))
		d := time.Since(start)
		pcancel()
		if d > 700*time.Millisecond {
			t.Fatalf("publish %d with a 200ms context took %s (err %v)", i, d, err)
		}
		if err == nil {
			t.Logf("publish %d went through (the link may have reconnected)", i)
		}
	}

	start := time.Now()
	closed := make(chan struct{})
	go func() { l.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(4 * time.Second):
		t.Fatalf("Close still blocked after %s", time.Since(start))
	}
	t.Logf("Close took %s", time.Since(start))
	start = time.Now()
	l.Close() // safe twice, and quick
	if err := l.Publish(context.Background(), "/topic/x", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after Close: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("second Close and a publish after it took %s", d)
	}
}

// TestLinkPublishAndCloseBoundedWhenTheBrokerDiesJammed: the broker dies
// while the link's writes are backed up. go-stomp's I/O loop ends, its write
// queue is full and never drained again, and every waiting Send (and the
// link's own disconnect) waits out the send timeout, one after the other.
func TestLinkPublishAndCloseBoundedWhenTheBrokerDiesJammed(t *testing.T) {
	bh, l, stop := jammedLink(t, LinkConfig{Log: testLog(t), BackoffMin: 20 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	defer stop()
	bh.Kill()
	// Every publish, including those already waiting, ends by its deadline.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, pcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer pcancel()
			start := time.Now()
			err := l.Publish(pctx, "/topic/status", nil, []byte("small"))
			if d := time.Since(start); d > 700*time.Millisecond {
				errs <- fmt.Errorf("publish with a 200ms context took %s (err %v)", d, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, 5*time.Second, "the link to notice the broker died", func() bool { return !l.Connected() })
	start := time.Now()
	closed := make(chan struct{})
	go func() { l.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(4 * time.Second):
		t.Fatalf("Close still blocked after %s", time.Since(start))
	}
	t.Logf("Close took %s", time.Since(start))
}

// TestLinkOutboxDropsOldest: with the sender stuck on a broker that does
// not read, a full outbox drops its oldest message (that Publish fails
// with ErrOutboxFull at once, counted) and the newest waits its turn.
// heldLink is a connected Link whose sender is held: nothing takes its
// outbox, so what Publish queues stays there until the test takes it. The
// outbox's bookkeeping is tested without racing a sender goroutine.
func heldLink(t *testing.T, outbox int) *Link {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &Link{ep: endpoint{addr: "held:61613"}, ctx: ctx, cancel: cancel, out: make(chan *pubReq, outbox)}
}

func TestLinkOutboxDropsOldest(t *testing.T) {
	l := heldLink(t, 1)
	first := make(chan error, 1)
	go func() { first <- l.Publish(context.Background(), "/topic/a", nil, []byte("old")) }()
	waitFor(t, 10*time.Second, "the first message queued", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.out) == 1
	})
	select {
	case err := <-first:
		t.Fatalf("first publish returned %v while its message waits in the outbox", err)
	default:
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer pcancel()
	second := make(chan error, 1)
	go func() { second <- l.Publish(pctx, "/topic/a", nil, []byte("new")) }()
	if err := <-first; !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("oldest publish: %v, want ErrOutboxFull", err)
	}
	if err := <-second; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("newest publish: %v, want its deadline (nobody sends it)", err)
	}
	// The newest message is the one left in the outbox, and the drop is counted.
	select {
	case r := <-l.out:
		if string(r.body) != "new" {
			t.Fatalf("outbox holds %q, want the newest message", r.body)
		}
	default:
		t.Fatal("outbox empty, want the newest message in it")
	}
	if st := l.Stats(); st.OutboxFull != 1 {
		t.Fatalf("stats %+v, want one OutboxFull", st)
	}
}

func TestLinkURLErrorsHideThePassword(t *testing.T) {
	for _, u := range []string{"ftp://user:hunter2@h:1", "stomp://user:hunter2@h", "stomp://user:hunter2@h:%zz"} {
		_, err := parseURL(u)
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: %v", u, err)
		}
	}
}

// Every header a server's signature covers reaches the receiver: a
// tandem header that a broker owns (ActiveMQ's "priority") would be
// stripped on receipt and fail every signature.
func TestTransportKeepsEverySignedHeader(t *testing.T) {
	for _, h := range protocol.SignedHeaders() {
		if transportHeaders[h] {
			t.Errorf("signed header %q is a transport header: receivers drop it and every signature fails", h)
		}
	}
}
