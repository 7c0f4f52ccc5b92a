package broker

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The contract every broker tandem supports must meet, checked against the
// embedded broker (in a child process), ActiveMQ 5 and RabbitMQ 3 with
// rabbitmq_stomp. The external ones are skipped when not installed (and
// fail in CI, which installs them).

var contractKinds = []string{"embedded", "activemq", "rabbitmq"}

func TestContract(t *testing.T) {
	for _, kind := range contractKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			b := sharedBroker(t, kind)
			t.Run("PubSubHeadersInOrder", func(t *testing.T) { contractPubSub(t, b) })
			t.Run("RestartReconnectResubscribe", func(t *testing.T) { contractRestart(t, b) })
			t.Run("FrozenBrokerDetected", func(t *testing.T) { contractFrozen(t, b) })
			t.Run("KilledBrokerDetected", func(t *testing.T) { contractKilled(t, b) })
		})
	}
}

// stateRecorder collects a link's state changes with their times.
type stateRecorder struct {
	mu     sync.Mutex
	states []State
	times  []time.Time
}

func (r *stateRecorder) on(s State) {
	r.mu.Lock()
	r.states = append(r.states, s)
	r.times = append(r.times, time.Now())
	r.mu.Unlock()
}

// firstSince returns when the first state st was reported after t0.
func (r *stateRecorder) firstSince(st ConnState, t0 time.Time) (time.Time, State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, s := range r.states {
		if s.State == st && !r.times[i].Before(t0) {
			return r.times[i], s, true
		}
	}
	return time.Time{}, State{}, false
}

func contractLink(t *testing.T, b *extBroker, rec *stateRecorder) *Link {
	cfg := b.linkConfig()
	if rec != nil {
		cfg.OnState = rec.on
	}
	return dialTest(t, cfg)
}

// contractDest is a topic destination valid on all three brokers.
func contractDest(t *testing.T) string {
	return fmt.Sprintf("/topic/tandem.contract.%s.%d", t.Name()[len("TestContract/"):len("TestContract/")+3], time.Now().UnixNano())
}

// subscribeSettled subscribes and waits until a probe message arrives, so the
// subscription is known to be active on the broker (topics drop messages
// published before it is).
func subscribeSettled(t *testing.T, pub, sub Bus, dest string) Subscription {
	t.Helper()
	s, err := sub.Subscribe(dest)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := pub.Publish(context.Background(), dest, map[string]string{"probe": "1"}, nil); err != nil {
			t.Logf("probe: %v", err)
		}
		select {
		case m := <-s.C():
			if m.Headers["probe"] == "1" {
				// Drain other probes in flight.
				for {
					select {
					case <-s.C():
						continue
					case <-time.After(200 * time.Millisecond):
					}
					break
				}
				return s
			}
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscription to %s never became active", dest)
		}
	}
}

func contractPubSub(t *testing.T, b *extBroker) {
	pub := contractLink(t, b, nil)
	subl := contractLink(t, b, nil)
	dest := contractDest(t)
	s := subscribeSettled(t, pub, subl, dest)
	const n = 200
	for i := 0; i < n; i++ {
		h := map[string]string{
			"tandem-version": "1", "failover-id": "7d1b5a9e-3c1f-4a57-9d52-2b1e7e0c7a11",
			"epoch": "42", "node": "opsc-a", "seq": strconv.Itoa(i),
			"advertise": "10.0.0.1:61620", "period-ms": "100", "hmac": "a:b c",
		}
		if err := pub.Publish(context.Background(), dest, h, []byte(fmt.Sprintf(`{"i":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		m := recvWithin(t, s, 10*time.Second)
		if m.Headers["seq"] != strconv.Itoa(i) {
			t.Fatalf("message %d out of order: seq %q", i, m.Headers["seq"])
		}
		if m.Headers["epoch"] != "42" || m.Headers["node"] != "opsc-a" || m.Headers["hmac"] != "a:b c" ||
			m.Headers["failover-id"] != "7d1b5a9e-3c1f-4a57-9d52-2b1e7e0c7a11" || m.Headers["advertise"] != "10.0.0.1:61620" {
			t.Fatalf("headers not intact: %v", m.Headers)
		}
		if string(m.Body) != fmt.Sprintf(`{"i":%d}`, i) || m.Destination != dest {
			t.Fatalf("message %d: dest %q body %q", i, m.Destination, m.Body)
		}
	}
}

func contractRestart(t *testing.T, b *extBroker) {
	rec := &stateRecorder{}
	subl := contractLink(t, b, rec)
	pub := contractLink(t, b, nil)
	dest := contractDest(t)
	s := subscribeSettled(t, pub, subl, dest)

	t0 := time.Now()
	b.stop()
	waitFor(t, 10*time.Second, "disconnect noticed", func() bool { _, _, ok := rec.firstSince(StateDisconnected, t0); return ok })
	b.start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must(t, subl.WaitConnected(ctx))
	must(t, pub.WaitConnected(ctx))
	// The old subscription object keeps working: the link resubscribed.
	deadline := time.Now().Add(15 * time.Second)
	for {
		_ = pub.Publish(context.Background(), dest, map[string]string{"after": "restart"}, []byte("x"))
		select {
		case m := <-s.C():
			if m.Headers["after"] == "restart" {
				t.Logf("resubscribed and delivering %s after the restart began", time.Since(t0).Round(time.Millisecond))
				return
			}
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no delivery on the resubscribed subscription")
		}
	}
}

func contractFrozen(t *testing.T, b *extBroker) {
	rec := &stateRecorder{}
	l := contractLink(t, b, rec)
	_ = l
	bound := b.hb + b.hbErr + time.Second // go-stomp's read timeout + slack
	t0 := time.Now()
	b.signal(syscall.SIGSTOP)
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			b.signal(syscall.SIGCONT)
		}
	}
	defer thaw()
	waitFor(t, bound+5*time.Second, "frozen broker noticed", func() bool { _, _, ok := rec.firstSince(StateDisconnected, t0); return ok })
	at, st, _ := rec.firstSince(StateDisconnected, t0)
	took := at.Sub(t0)
	t.Logf("frozen broker noticed after %s (heart-beat %s, error %s): %v", took.Round(time.Millisecond), b.hb, b.hbErr, st.Err)
	if took > bound {
		t.Errorf("noticed after %s, want within %s", took, bound)
	}
	thaw()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must(t, l.WaitConnected(ctx))
}

func contractKilled(t *testing.T, b *extBroker) {
	rec := &stateRecorder{}
	contractLink(t, b, rec)
	t0 := time.Now()
	b.kill()
	waitFor(t, 5*time.Second, "killed broker noticed", func() bool { _, _, ok := rec.firstSince(StateDisconnected, t0); return ok })
	at, st, _ := rec.firstSince(StateDisconnected, t0)
	t.Logf("killed broker noticed after %s: %v", at.Sub(t0).Round(time.Millisecond), st.Err)
	if d := at.Sub(t0); d > time.Second {
		t.Errorf("killed broker noticed after %s, want < 1s", d)
	}
	b.start() // leave it running for others (benchmarks)
}
