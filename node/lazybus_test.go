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
	// got sends a report from node and checks that each of subs gets it.
	got := func(node string, subs ...broker.Subscription) {
		t.Helper()
		if err := hub.Client("agent").Publish(context.Background(), "/topic/agent-status", map[string]string{"node": node}, nil); err != nil {
			t.Fatal(err)
		}
		for i, s := range subs {
			select {
			case m := <-s.C():
				if m.Headers["node"] != node {
					t.Fatalf("subscription %d got %+v, want %s's", i, m, node)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("subscription %d missed %s's message", i, node)
			}
		}
	}
	got("x", sub) // the subscription made before the link
	// One made after the link subscribes at once.
	late, err := lb.Subscribe("/topic/agent-status")
	if err != nil {
		t.Fatal(err)
	}
	got("y", sub, late)
	lb.Close()
	if _, err := lb.Subscribe("/topic/agent-status"); err == nil {
		t.Fatal("subscribed on a closed bus")
	}
	if lb.setLink(hub.Client("late-link")) {
		t.Fatal("a closed bus kept a link")
	}
	// The subscriptions end (in the background): their forwarders stop
	// and their channels close.
	ended(t, sub, late)
}

// A bus closed before its link was dialed ends its subscriptions, and the
// link that comes later is not kept.
func TestALazyBusClosedBeforeItsLinkEndsItsSubscriptions(t *testing.T) {
	lb := &lazyBus{}
	sub, err := lb.Subscribe("/topic/agent-status")
	if err != nil {
		t.Fatal(err)
	}
	lb.Close()
	ended(t, sub)
	if lb.setLink(broker.NewMemHub().Client("notify")) {
		t.Fatal("a closed bus kept a link")
	}
}

// ended waits until each subscription's channel is closed (none of them
// gets a message).
func ended(t *testing.T, subs ...broker.Subscription) {
	t.Helper()
	for i, s := range subs {
		select {
		case m, ok := <-s.C():
			if ok {
				t.Fatalf("subscription %d got %+v after the bus closed", i, m)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("subscription %d did not end with its bus", i)
		}
	}
}
