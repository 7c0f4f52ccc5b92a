package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// While a rebind of its file waits for a file worker, an agent passes over
// its period ticks (no stat of the file, no report of the old token to the
// server it is leaving), at most maxSkippedTicks in a row; once the rebind
// is written it follows the new server at once.
func TestAnAgentWhoseRebindWaitsPassesOverItsTicksAtMostThreeInARow(t *testing.T) {
	var hs hubs
	k := newKeys(t)
	clk := clock.NewHandoverFake(time.Unix(1_700_000_000, 0))
	path := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, path, "server-a", 1001, idA, 1)
	stA, err := hs.of("server-a:1001").Client("server-a").Subscribe(dest.AgentStatus)
	if err != nil {
		t.Fatal(err)
	}
	stB, err := hs.of("server-b:1002").Client("server-b").Subscribe(dest.AgentStatus)
	if err != nil {
		t.Fatal(err)
	}
	workers := NewWorkers(1)
	release := make(chan struct{})
	workers.Go(func() { <-release }) // the fleet's only worker is busy
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	log, _ := test.NewNullLogger()
	const period = 100 * time.Millisecond
	changes := make(chan struct{})
	a := New(Config{Path: path, ID: "agent-1", Period: period, Dest: dest, Signer: k.agent, Clock: clk, Log: log, Workers: workers,
		Dial: func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
			return hs.of(target(addr)).Client("agent"), nil
		},
		Watch: func(ctx context.Context, path string, d time.Duration) (<-chan struct{}, error) {
			return changes, nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	report(t, stA, "on connect")

	// A tick with nothing waiting reports.
	if n := clk.Step(period); n != 1 {
		t.Fatalf("%d ticks, want 1", n)
	}
	report(t, stA, "at a tick with no rebind waiting")

	// A signed rebind to server-b, on the bound link: it waits for the
	// busy worker.
	host, port := "server-b", 1002
	h := protocol.Envelope{FailoverID: idB, Epoch: 2, Node: "opsc-b", Seq: 1, Role: "primary", Advertise: "server-b:1002",
		FailoverSig: k.server.TokenSig(idB, 2, host, port)}.Headers()
	h[hCommand] = cmdRebind
	body := []byte(`{"command":"rebind"}`)
	k.server.Sign(dest.AgentCommand, h, body)
	if err := hs.of("server-a:1001").Client("server-a").Publish(context.Background(), dest.AgentCommand, h, body); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the rebind queued", a.rb.pending)

	// barrier returns once Run has handled what it took before: it takes
	// the (unbuffered) file watch's event only back in its loop. The event
	// itself (the same server, read again) sends no report.
	barrier := func() {
		t.Helper()
		select {
		case changes <- struct{}{}:
		case <-time.After(5 * time.Second):
			t.Fatal("Run does not take the file watch's event")
		}
	}
	// Ticks 1 to 3 are passed over: once Run has handled each, and the
	// reporter is idle, no report has reached server-a.
	for i := 1; i <= maxSkippedTicks; i++ {
		if n := clk.Step(period); n != 1 {
			t.Fatalf("tick %d: %d ticks, want 1", i, n)
		}
		barrier()
		waitUntil(t, 5*time.Second, "no report under way", a.reportIdle)
		select {
		case <-stA.C():
			t.Fatalf("a report to server-a at tick %d, with the rebind waiting", i)
		default:
		}
	}
	if n := clk.Step(period); n != 1 {
		t.Fatalf("tick %d: %d ticks, want 1", maxSkippedTicks+1, n)
	}
	// The fourth in a row is not: the agent still reports while the
	// workers are held up.
	report(t, stA, "at the tick after three passed over")

	// The worker is free: the rebind is written and the agent reports to
	// server-b at once.
	close(release)
	report(t, stB, "after the rebind")
	if raw, err := os.ReadFile(path); err != nil || !strings.Contains(string(raw), idB) {
		t.Fatalf("address.yaml not rebound (%v):\n%s", err, raw)
	}
}

// While a fleet's file workers have work waiting (other agents' rebinds),
// an agent with none of its own ticks every other period: the rewrites of
// the agents still to move come first, and its reports still reach its
// server at least every second period.
func TestAnAgentTicksEveryOtherPeriodWhileTheFleetsWorkersHaveABacklog(t *testing.T) {
	var hs hubs
	clk := clock.NewHandoverFake(time.Unix(1_700_000_000, 0))
	path := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, path, "server-a", 1001, idA, 1)
	stA, err := hs.of("server-a:1001").Client("server-a").Subscribe(dest.AgentStatus)
	if err != nil {
		t.Fatal(err)
	}
	workers := NewWorkers(1)
	release := make(chan struct{})
	workers.Go(func() { <-release })
	workers.Go(func() {}) // waits: the backlog
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	log, _ := test.NewNullLogger()
	const period = 100 * time.Millisecond
	changes := make(chan struct{})
	a := New(Config{Path: path, ID: "agent-1", Period: period, Dest: dest, Signer: protocol.NewSigner(nil), Clock: clk, Log: log, Workers: workers,
		Dial: func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
			return hs.of(target(addr)).Client("agent"), nil
		},
		Watch: func(ctx context.Context, path string, d time.Duration) (<-chan struct{}, error) {
			return changes, nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	report(t, stA, "on connect")

	// reports says whether tick i reported: Run has handled it once it
	// takes the (unbuffered) file watch's event, which reports nothing.
	reports := func(i int) bool {
		t.Helper()
		if n := clk.Step(period); n != 1 {
			t.Fatalf("tick %d: %d ticks, want 1", i, n)
		}
		select {
		case changes <- struct{}{}:
		case <-time.After(5 * time.Second):
			t.Fatal("Run does not take the file watch's event")
		}
		waitUntil(t, 5*time.Second, "no report under way", a.reportIdle)
		select {
		case <-stA.C():
			return true
		default:
			return false
		}
	}
	for i := 1; i <= 4; i++ {
		if got, want := reports(i), i%2 == 0; got != want {
			t.Fatalf("with a backlog, tick %d reported: %v, want %v", i, got, want)
		}
	}
	close(release)
	released = true
	waitUntil(t, 5*time.Second, "the backlog gone", func() bool { return workers.Waiting() == 0 })
	for i := 5; i <= 7; i++ {
		if !reports(i) {
			t.Fatalf("without a backlog, tick %d did not report", i)
		}
	}
}
