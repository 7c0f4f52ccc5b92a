package agent

import (
	"context"
	"fmt"
	"path/filepath"
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
