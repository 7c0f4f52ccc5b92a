package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// recv returns the next buffered message or fails the test; MemHub delivery is
// synchronous, so the message must already be there.
func recv(t *testing.T, s Subscription) Message {
	t.Helper()
	select {
	case m, ok := <-s.C():
		if !ok {
			t.Fatal("subscription channel closed")
		}
		return m
	default:
		t.Fatal("no message buffered")
		return Message{}
	}
}

func expectNone(t *testing.T, s Subscription) {
	t.Helper()
	select {
	case m, ok := <-s.C():
		if ok {
			t.Fatalf("unexpected message %+v", m)
		}
	default:
	}
}

func mustSub(t *testing.T, b Bus, dest string) Subscription {
	t.Helper()
	s, err := b.Subscribe(dest)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustPub(t *testing.T, b Bus, dest, body string) {
	t.Helper()
	if err := b.Publish(context.Background(), dest, map[string]string{"k": body}, []byte(body)); err != nil {
		t.Fatal(err)
	}
}

func TestMemFanOutIncludingSelf(t *testing.T) {
	h := NewMemHub()
	a, b, c := h.Client("a"), h.Client("b"), h.Client("c")
	defer a.Close()
	defer b.Close()
	defer c.Close()
	sa, sb := mustSub(t, a, "/topic/x"), mustSub(t, b, "/topic/x")
	sb2 := mustSub(t, b, "/topic/x")
	sOther := mustSub(t, c, "/topic/y")

	hdr := map[string]string{"epoch": "3", "node": "a"}
	if err := a.Publish(context.Background(), "/topic/x", hdr, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	hdr["epoch"] = "mutated after publish"
	for _, s := range []Subscription{sa, sb, sb2} {
		m := recv(t, s)
		if m.Destination != "/topic/x" || string(m.Body) != "hello" || m.Headers["epoch"] != "3" || m.Headers["node"] != "a" {
			t.Fatalf("got %+v", m)
		}
	}
	expectNone(t, sOther)
	if st := h.Stats(); st.Published != 1 || st.Delivered != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMemOrder(t *testing.T) {
	h := NewMemHub()
	a, b := h.Client("a"), h.Client("b")
	defer a.Close()
	defer b.Close()
	s := mustSub(t, b, "d")
	for i := 0; i < 100; i++ {
		mustPub(t, a, "d", fmt.Sprint(i))
	}
	for i := 0; i < 100; i++ {
		if m := recv(t, s); string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("message %d: got %q", i, m.Body)
		}
	}
}

func TestMemPartitionHeal(t *testing.T) {
	h := NewMemHub()
	a, b, c := h.Client("a"), h.Client("b"), h.Client("c")
	sa, sb, sc := mustSub(t, a, "d"), mustSub(t, b, "d"), mustSub(t, c, "d")

	h.Partition("a", "b")
	mustPub(t, a, "d", "1")
	recv(t, sa)
	expectNone(t, sb)
	recv(t, sc)
	mustPub(t, b, "d", "2") // the cut works both ways
	expectNone(t, sa)
	recv(t, sb)
	recv(t, sc)

	h.Heal("b", "a") // order of names does not matter
	mustPub(t, a, "d", "3")
	recv(t, sa)
	recv(t, sb)
	recv(t, sc)
	if st := h.Stats(); st.Filtered != 2 {
		t.Fatalf("filtered %d, want 2", st.Filtered)
	}
}

func TestMemIsolateHealAll(t *testing.T) {
	h := NewMemHub()
	a, b, c := h.Client("a"), h.Client("b"), h.Client("c")
	sa, sb, sc := mustSub(t, a, "d"), mustSub(t, b, "d"), mustSub(t, c, "d")
	h.Isolate("a")
	mustPub(t, a, "d", "1")
	recv(t, sa) // own subscriptions still get it
	expectNone(t, sb)
	expectNone(t, sc)
	mustPub(t, c, "d", "2")
	expectNone(t, sa)
	recv(t, sb)
	recv(t, sc)
	h.HealAll()
	mustPub(t, c, "d", "3")
	recv(t, sa)
	recv(t, sb)
	recv(t, sc)
}

func TestMemDrop(t *testing.T) {
	h := NewMemHub()
	a, b := h.Client("a"), h.Client("b")
	s := mustSub(t, b, "d")
	h.Drop(func(from string, m Message) bool { return from == "a" && m.Headers["k"] == "x" })
	mustPub(t, a, "d", "x")
	mustPub(t, a, "d", "y")
	mustPub(t, b, "d", "x")
	if m := recv(t, s); string(m.Body) != "y" {
		t.Fatalf("got %q", m.Body)
	}
	if m := recv(t, s); string(m.Body) != "x" {
		t.Fatalf("got %q", m.Body)
	}
	expectNone(t, s)
	h.Drop(nil)
	mustPub(t, a, "d", "x")
	recv(t, s)
}

func TestMemDisconnectReconnect(t *testing.T) {
	h := NewMemHub()
	a, b := h.Client("a"), h.Client("b")
	sb := mustSub(t, b, "d")
	h.Disconnect("a")
	err := a.Publish(context.Background(), "d", nil, nil)
	if !errors.Is(err, ErrNotConnected) {
		t.Fatalf("err = %v, want ErrNotConnected", err)
	}
	sa := mustSub(t, a, "d") // subscribing while down is allowed, like Link
	mustPub(t, b, "d", "1")
	recv(t, sb)
	expectNone(t, sa) // a is off the bus
	h.Reconnect("a")
	mustPub(t, a, "d", "2")
	recv(t, sa)
	recv(t, sb)
}

func TestMemSlowConsumerDropsOldest(t *testing.T) {
	h := NewMemHub()
	h.SetBufferSize(4)
	a := h.Client("a")
	s := mustSub(t, a, "d")
	for i := 0; i < 10; i++ {
		mustPub(t, a, "d", fmt.Sprint(i))
	}
	if d := s.Dropped(); d != 6 {
		t.Fatalf("dropped %d, want 6", d)
	}
	for i := 6; i < 10; i++ {
		if m := recv(t, s); string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("got %q want %d", m.Body, i)
		}
	}
	expectNone(t, s)
}

func TestMemCloseSemantics(t *testing.T) {
	h := NewMemHub()
	a, b := h.Client("a"), h.Client("b")
	s1, s2 := mustSub(t, a, "d"), mustSub(t, a, "d")
	sb := mustSub(t, b, "d")
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-s1.C(); ok {
		t.Fatal("closed subscription delivered")
	}
	mustPub(t, b, "d", "1")
	recv(t, s2)
	recv(t, sb)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-s2.C(); ok {
		t.Fatal("subscription not closed by client Close")
	}
	if err := a.Publish(context.Background(), "d", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if _, err := a.Subscribe("d"); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after close: %v", err)
	}
	s2.Close() // safe after the client closed it
	mustPub(t, b, "d", "2")
	recv(t, sb)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Publish(ctx, "d", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish with cancelled ctx: %v", err)
	}
}

func TestMemConcurrent(t *testing.T) {
	h := NewMemHub()
	const n = 8
	var wg sync.WaitGroup
	recvd := make([]int, n)
	clients := make([]Bus, n)
	subs := make([]Subscription, n)
	for i := range clients {
		clients[i] = h.Client(fmt.Sprint("c", i))
		subs[i] = mustSub(t, clients[i], "d")
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for range subs[i].C() {
				recvd[i]++
			}
		}(i)
	}
	var pub sync.WaitGroup
	for i := range clients {
		pub.Add(1)
		go func(i int) {
			defer pub.Done()
			for j := 0; j < 200; j++ {
				if j == 100 && i == 0 {
					// hooks on names nobody uses race with publishes harmlessly
					h.Partition("x", "y")
					h.HealAll()
				}
				_ = clients[i].Publish(context.Background(), "d", map[string]string{"j": fmt.Sprint(j)}, nil)
			}
		}(i)
	}
	pub.Wait()
	for _, c := range clients {
		c.Close()
	}
	wg.Wait()
	for i, r := range recvd {
		if uint64(r)+subs[i].Dropped() != n*200 {
			t.Fatalf("client %d received %d + dropped %d, want %d", i, r, subs[i].Dropped(), n*200)
		}
	}
}

var _ Bus = (*memClient)(nil)
