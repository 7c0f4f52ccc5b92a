package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
)

// phaseRig runs one agent on a hand-over fake clock with the given
// TickPhase and returns the clock and the status reports at its server.
func phaseRig(t *testing.T, phase time.Duration) (*clock.Fake, broker.Subscription) {
	t.Helper()
	hub := broker.NewMemHub()
	clk := clock.NewHandoverFake(time.Unix(1_700_000_000, 0))
	path := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, path, "server-a", 1001, idA, 1)
	st, err := hub.Client("server-a:1001").Subscribe(dest.AgentStatus)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := test.NewNullLogger()
	a := New(Config{Path: path, ID: "agent-1", Period: 100 * time.Millisecond, TickPhase: phase, Dest: dest,
		Signer: protocol.NewSigner(nil), Clock: clk, Log: log,
		Dial: func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
			return hub.Client(fmt.Sprintf("%s:%d", addr.StompInterface, addr.StompPort)), nil
		},
		Watch: func(ctx context.Context, path string, d time.Duration) (<-chan struct{}, error) {
			return make(chan struct{}), nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// The report on connect: Run has set up its timers by then.
	report(t, st, "on connect")
	return clk, st
}

func report(t *testing.T, st broker.Subscription, what string) {
	t.Helper()
	select {
	case <-st.C():
	case <-time.After(5 * time.Second):
		t.Fatalf("no status report %s", what)
	}
}

// A fleet spreads its agents' ticks over the period: with TickPhase the
// first tick (and its report) comes TickPhase after the start, the next
// ones a Period apart from there.
func TestTickPhaseDelaysTheFirstTick(t *testing.T) {
	clk, st := phaseRig(t, 30*time.Millisecond)
	if n := clk.Step(29 * time.Millisecond); n != 0 {
		t.Fatalf("%d ticks before the phase", n)
	}
	if n := clk.Step(time.Millisecond); n != 1 {
		t.Fatalf("%d ticks at the phase, want 1", n)
	}
	report(t, st, "at the first tick")
	if n := clk.Step(99 * time.Millisecond); n != 0 {
		t.Fatalf("%d ticks before phase+period", n)
	}
	if n := clk.Step(time.Millisecond); n != 1 {
		t.Fatalf("%d ticks at phase+period, want 1", n)
	}
	report(t, st, "at the second tick")
}

// Without TickPhase the first tick comes a Period after the start.
func TestNoTickPhaseTicksEveryPeriod(t *testing.T) {
	clk, st := phaseRig(t, 0)
	if n := clk.Step(99 * time.Millisecond); n != 0 {
		t.Fatalf("%d ticks before the period", n)
	}
	if n := clk.Step(time.Millisecond); n != 1 {
		t.Fatalf("%d ticks at the period, want 1", n)
	}
	report(t, st, "at the first tick")
}

// reportIdle reports whether no status report is waiting or being sent.
func (a *Agent) reportIdle() bool {
	a.repMu.Lock()
	defer a.repMu.Unlock()
	return !a.repBusy
}

// skipRig runs one agent bound to server-a on a hand-over fake clock, with
// a fleet's Workers whose only worker is held (until release) and a file
// watch the test feeds, and the status reports at server-a.
type skipRig struct {
	hs      hubs
	clk     *clock.Fake
	a       *Agent
	path    string
	changes chan struct{}
	stA     broker.Subscription
	workers *Workers
	release func()
}

const skipPeriod = 100 * time.Millisecond

func newSkipRig(t *testing.T, signer *protocol.Signer) *skipRig {
	t.Helper()
	r := &skipRig{clk: clock.NewHandoverFake(time.Unix(1_700_000_000, 0)), path: filepath.Join(t.TempDir(), "address.yaml"),
		changes: make(chan struct{}), workers: NewWorkers(1)}
	writeFile(t, r.path, "server-a", 1001, idA, 1)
	var err error
	if r.stA, err = r.hs.of("server-a:1001").Client("server-a").Subscribe(dest.AgentStatus); err != nil {
		t.Fatal(err)
	}
	held := make(chan struct{})
	var once sync.Once
	r.release = func() { once.Do(func() { close(held) }) }
	r.workers.Go(func() { <-held }) // the fleet's only worker is busy
	log, _ := test.NewNullLogger()
	r.a = New(Config{Path: r.path, ID: "agent-1", Period: skipPeriod, Dest: dest, Signer: signer, Clock: r.clk, Log: log, Workers: r.workers,
		Dial: func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
			return r.hs.of(target(addr)).Client("agent"), nil
		},
		Watch: func(ctx context.Context, path string, d time.Duration) (<-chan struct{}, error) {
			return r.changes, nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.a.Run(ctx) }()
	t.Cleanup(func() { r.release(); cancel(); <-done })
	report(t, r.stA, "on connect")
	return r
}

// tick moves the clock to tick i and says whether it reported to
// server-a: Run has handled the tick once it takes the (unbuffered) file
// watch's event, which itself reports nothing (the same server, read
// again), and the report, if any, is sent once the reporter is idle.
func (r *skipRig) tick(t *testing.T, i int) bool {
	t.Helper()
	if n := r.clk.Step(skipPeriod); n != 1 {
		t.Fatalf("tick %d: %d ticks, want 1", i, n)
	}
	select {
	case r.changes <- struct{}{}:
	case <-time.After(5 * time.Second):
		t.Fatal("Run does not take the file watch's event")
	}
	waitUntil(t, 5*time.Second, "no report under way", r.a.reportIdle)
	select {
	case <-r.stA.C():
		return true
	default:
		return false
	}
}

// While a rebind of its file waits for a file worker, an agent passes over
// its period ticks (no stat of the file, no report of the old token to the
// server it is leaving), at most maxSkippedTicks in a row; once the rebind
// is written it follows the new server at once.
func TestAnAgentWhoseRebindWaitsPassesOverItsTicksAtMostThreeInARow(t *testing.T) {
	k := newKeys(t)
	r := newSkipRig(t, k.agent)
	stB, err := r.hs.of("server-b:1002").Client("server-b").Subscribe(dest.AgentStatus)
	if err != nil {
		t.Fatal(err)
	}
	if !r.tick(t, 0) {
		t.Fatal("no report at a tick with no rebind waiting")
	}
	// A signed rebind to server-b, on the bound link: it waits for the
	// busy worker.
	h := protocol.Envelope{FailoverID: idB, Epoch: 2, Node: "opsc-b", Seq: 1, Role: "primary", Advertise: "server-b:1002",
		FailoverSig: k.server.TokenSig(idB, 2, "server-b", 1002)}.Headers()
	h[hCommand] = cmdRebind
	body := []byte(`{"command":"rebind"}`)
	k.server.Sign(dest.AgentCommand, h, body)
	if err := r.hs.of("server-a:1001").Client("server-a").Publish(context.Background(), dest.AgentCommand, h, body); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the rebind queued", r.a.rb.pending)
	for i := 1; i <= maxSkippedTicks; i++ {
		if r.tick(t, i) {
			t.Fatalf("a report to server-a at tick %d, with the rebind waiting", i)
		}
	}
	// The fourth in a row is not passed over: the agent still reports
	// while the workers are held up.
	if !r.tick(t, maxSkippedTicks+1) {
		t.Fatal("no report at the tick after three passed over")
	}
	// The worker is free: the rebind is written and the agent reports to
	// server-b at once.
	r.release()
	report(t, stB, "after the rebind")
	if raw, err := os.ReadFile(r.path); err != nil || !strings.Contains(string(raw), idB) {
		t.Fatalf("address.yaml not rebound (%v):\n%s", err, raw)
	}
}

// While a fleet's file workers have work waiting (other agents' rebinds),
// an agent with none of its own ticks every other period: the rewrites of
// the agents still to move come first, and its reports still reach its
// server at least every second period.
func TestAnAgentTicksEveryOtherPeriodWhileTheFleetsWorkersHaveABacklog(t *testing.T) {
	r := newSkipRig(t, protocol.NewSigner(nil))
	r.workers.Go(func() {}) // waits behind the held worker: the backlog
	for i := 1; i <= 4; i++ {
		if got, want := r.tick(t, i), i%2 == 0; got != want {
			t.Fatalf("with a backlog, tick %d reported: %v, want %v", i, got, want)
		}
	}
	r.release()
	waitUntil(t, 5*time.Second, "the backlog gone", func() bool { return r.workers.Waiting() == 0 })
	for i := 5; i <= 7; i++ {
		if !r.tick(t, i) {
			t.Fatalf("without a backlog, tick %d did not report", i)
		}
	}
}
