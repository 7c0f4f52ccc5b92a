package node

import (
	"context"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/broker"
)

// A subscription on a lazy bus made before its link is dialed gets the
// messages once the link is there; closing the bus ends it.
func TestALazyBusSubscriptionFollowsTheLinkWhenItComes(t *testing.T) {
	hub := broker.NewMemHub()
	lb := &lazyBus{}
	sub, err := lb.Subscribe("/topic/agent-status")
	if err != nil {
		t.Fatal(err)
	}
	if err := lb.Publish(context.Background(), "/topic/agent-status", map[string]string{}, nil); err == nil {
		t.Fatal("published before the link exists")
	}
	if !lb.setLink(hub.Client("notify")) {
		t.Fatal("an open bus refused its link")
	}
	if err := hub.Client("agent").Publish(context.Background(), "/topic/agent-status", map[string]string{"node": "x"}, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-sub.C():
		if m.Headers["node"] != "x" {
			t.Fatalf("got %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the subscription made before the link got nothing")
	}
	// One made after the link subscribes at once.
	late, err := lb.Subscribe("/topic/agent-status")
	if err != nil {
		t.Fatal(err)
	}
	if err := hub.Client("agent").Publish(context.Background(), "/topic/agent-status", map[string]string{"node": "y"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range []broker.Subscription{sub, late} {
		select {
		case m := <-s.C():
			if m.Headers["node"] != "y" {
				t.Fatalf("got %+v", m)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a subscription missed a message")
		}
	}
	lb.Close()
	if _, err := lb.Subscribe("/topic/agent-status"); err == nil {
		t.Fatal("subscribed on a closed bus")
	}
	if lb.setLink(hub.Client("late-link")) {
		t.Fatal("a closed bus kept a link")
	}
	// The subscriptions end (in the background): their forwarders stop.
	s := sub.(*lazySub)
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		stopped := s.stopped
		s.mu.Unlock()
		if stopped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("closing the bus did not end its subscriptions")
		}
		time.Sleep(time.Millisecond)
	}
	s.wg.Wait() // the forwarder is gone
}
