package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"
)

// localHeaders are custom headers with the characters STOMP escapes.
var localHeaders = map[string]string{"tandem-version": "1", "failover-id": "f00", "epoch": "7", "node": "a:b\\c\nd"}

// checkLocalMessages receives n messages published with localHeaders (and
// seq i, body "body i") on sub, in order, with no transport header.
func checkLocalMessages(t *testing.T, sub Subscription, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		m := recvWithin(t, sub, 5*time.Second)
		if m.Headers["seq"] != strconv.Itoa(i) || string(m.Body) != fmt.Sprint("body ", i) {
			t.Fatalf("message %d: %+v", i, m)
		}
		for k, v := range localHeaders {
			if m.Headers[k] != v {
				t.Fatalf("message %d: header %s = %q, want %q", i, k, m.Headers[k], v)
			}
		}
		for _, k := range []string{"destination", "content-length", "message-id", "subscription"} {
			if _, ok := m.Headers[k]; ok {
				t.Fatalf("message %d: transport header %s in Headers", i, k)
			}
		}
		if len(m.Headers) != len(localHeaders)+1 {
			t.Fatalf("message %d: headers %v", i, m.Headers)
		}
	}
}

func publishLocalMessages(t *testing.T, b Bus, dest string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		hdr := map[string]string{"seq": strconv.Itoa(i)}
		for k, v := range localHeaders {
			hdr[k] = v
		}
		if err := b.Publish(context.Background(), dest, hdr, []byte(fmt.Sprint("body ", i))); err != nil {
			t.Fatal(err)
		}
	}
}

// The server's own bus and its TCP clients hear each other: a client's
// messages reach a local subscription with their custom headers only, in
// order, and the local bus's messages reach a client and the local bus
// itself.
func TestLocalBusAndClientsHearEachOther(t *testing.T) {
	s := startTestServer(t, ServerConfig{})
	local := s.Local(0)
	defer local.Close()
	const dest = "/topic/tandem.agent-status"
	ls, err := local.Subscribe(dest)
	if err != nil {
		t.Fatal(err)
	}
	c := dialTest(t, LinkConfig{URL: s.Addr()})
	cs, _ := c.Subscribe(dest)
	waitSubscribed(t, s, dest, 1)

	publishLocalMessages(t, c, dest, 20)
	checkLocalMessages(t, ls, 20)
	checkLocalMessages(t, cs, 20)

	publishLocalMessages(t, local, dest, 20)
	checkLocalMessages(t, cs, 20)
	checkLocalMessages(t, ls, 20)
	if st := s.Stats(); st.Messages != 40 || st.Connections != 1 {
		t.Fatalf("stats %+v: want 40 messages routed, one connection (the local bus is none)", st)
	}
}

// A local subscriber that does not read loses the oldest messages, and
// publishing does not wait for it (the router pushes into its drop-oldest
// buffer for a client's messages the same way).
func TestASlowLocalSubscriberDropsTheOldest(t *testing.T) {
	s := startTestServer(t, ServerConfig{})
	local := s.Local(4)
	defer local.Close()
	const dest = "/topic/x"
	ls, _ := local.Subscribe(dest)
	publishLocalMessages(t, local, dest, 10) // returns: nothing waited
	if got := ls.Dropped(); got != 6 {
		t.Fatalf("dropped %d, want 6 of 10 with room for 4", got)
	}
	for want := 6; want < 10; want++ {
		if m := recvWithin(t, ls, time.Second); m.Headers["seq"] != strconv.Itoa(want) {
			t.Fatalf("got seq %s, want %d (the newest kept)", m.Headers["seq"], want)
		}
	}
}

// Close ends the bus: its subscriptions' channels close, Publish and
// Subscribe fail with ErrClosed, and the router forgets them. A closed
// subscription alone gets nothing more.
func TestClosingALocalBusEndsItsSubscriptions(t *testing.T) {
	s := startTestServer(t, ServerConfig{})
	local := s.Local(0)
	a, _ := local.Subscribe("/topic/a")
	b, _ := local.Subscribe("/topic/b")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	publishLocalMessages(t, local, "/topic/b", 1)
	if _, ok := <-b.C(); ok {
		t.Fatal("a closed subscription got a message")
	}
	if err := local.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-a.C(); ok {
		t.Fatal("a subscription of a closed bus got a message")
	}
	if err := local.Publish(context.Background(), "/topic/a", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
	if _, err := local.Subscribe("/topic/a"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe after Close: %v, want ErrClosed", err)
	}
	_ = local.Close() // safe twice
	s.topicsMu.RLock()
	n := len(s.locals)
	s.topicsMu.RUnlock()
	if n != 0 {
		t.Fatalf("the router still holds %d local destinations", n)
	}
}

// After the server's Close the local bus is a link to a stopped broker:
// Publish fails with ErrNotConnected, its subscriptions stay open.
func TestALocalBusOfAClosedServerIsNotConnected(t *testing.T) {
	s := startTestServer(t, ServerConfig{})
	local := s.Local(0)
	defer local.Close()
	sub, _ := local.Subscribe("/topic/a")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := local.Publish(context.Background(), "/topic/a", nil, []byte("x")); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Publish on a closed server: %v, want ErrNotConnected", err)
	}
	select {
	case m, ok := <-sub.C():
		t.Fatalf("subscription got %+v (open %v) after the server closed", m, ok)
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := local.Publish(ctx, "/topic/a", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with an ended context: %v", err)
	}
}
