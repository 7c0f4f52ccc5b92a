package agent

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/internal/testbrokers"
	"github.com/tandem-ha/tandem/protocol"
)

// enteringBus counts the publishes that entered a bus.
type enteringBus struct {
	broker.Bus
	entered *atomic.Int64
}

func (b enteringBus) Publish(ctx context.Context, dest string, h map[string]string, body []byte) error {
	b.entered.Add(1)
	return b.Bus.Publish(ctx, dest, h, body)
}

func linkDial(entered *atomic.Int64, record func(broker.Bus)) DialFunc {
	log, _ := test.NewNullLogger()
	return func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
		l, err := broker.Dial(ctx, broker.LinkConfig{
			URL:       net.JoinHostPort(addr.StompInterface, strconv.Itoa(addr.StompPort)),
			HeartBeat: time.Second, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Log: log,
		})
		if err != nil {
			return nil, err
		}
		if record != nil {
			record(l)
		}
		return enteringBus{l, entered}, nil
	}
}

type runningAgent struct {
	a       *Agent
	path    string
	changes chan struct{}
	done    chan struct{}
}

func startLinkAgent(t *testing.T, ctx context.Context, id, host string, port int, dial DialFunc) *runningAgent {
	t.Helper()
	log, _ := test.NewNullLogger()
	r := &runningAgent{path: filepath.Join(t.TempDir(), "address.yaml"), changes: make(chan struct{}, 1), done: make(chan struct{})}
	writeFile(t, r.path, host, port, idA, 1)
	r.a = New(Config{
		Path: r.path, ID: id, Period: 50 * time.Millisecond, Dest: dest, Signer: protocol.NewSigner(nil), Log: log, Dial: dial,
		Watch: func(ctx context.Context, path string, d time.Duration) (<-chan struct{}, error) {
			return r.changes, nil
		},
	})
	go func() {
		defer close(r.done)
		if err := r.a.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	return r
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestPooledAgentsFollowTheirFilesAfterTheirJammedServerDies: the fleet's
// shared link to the old primary is backed up (its agents' reports are
// waiting in it) when that primary dies. Every agent must still handle its
// rewritten address.yaml and move to the new server promptly: no agent may
// be stuck in a publish on the dead link.
func TestPooledAgentsFollowTheirFilesAfterTheirJammedServerDies(t *testing.T) {
	bh := testbrokers.StartBlackHole(t)
	hostA, portA := hostPortOf(t, bh.Addr())
	log, _ := test.NewNullLogger()
	srvB, err := broker.StartServer(broker.ServerConfig{Listen: "127.0.0.1:0", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer srvB.Close()
	hostB, pB, _ := net.SplitHostPort(srvB.Addr())
	portB, _ := strconv.Atoi(pB)

	var entered atomic.Int64
	pool := NewPool(linkDial(&entered, nil), 0)
	ctx, cancel := context.WithCancel(context.Background())
	const n = 12
	var agents []*runningAgent
	for i := 0; i < n; i++ {
		agents = append(agents, startLinkAgent(t, ctx, fmt.Sprintf("agent-%d", i), hostA, portA, pool.Dial))
	}
	defer func() {
		cancel()
		for _, r := range agents {
			<-r.done
		}
	}()
	target := func(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
	waitUntil(t, 5*time.Second, "agents connected to the old server", func() bool {
		for _, r := range agents {
			if st := r.a.Status(); st.Server != target(hostA, portA) {
				return false
			}
		}
		return pool.Links() == 1
	})
	h, err := pool.Dial(ctx, addrOf(hostA, portA))
	if err != nil {
		t.Fatal(err)
	}
	base := entered.Load()
	stop := testbrokers.Jam(t, func(ctx context.Context, body []byte) error { return h.Publish(ctx, "/topic/jam", nil, body) })
	defer stop()
	// The agents' reports are in the jam too (the jam's own publishes are
	// at least 5 of these).
	waitUntil(t, 10*time.Second, "the agents publishing into the jam", func() bool { return entered.Load() >= base+n+5 })
	bh.Kill()

	statusB, err := broker.Dial(ctx, broker.LinkConfig{URL: srvB.Addr(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer statusB.Close()
	st, err := statusB.Subscribe(dest.AgentStatus)
	if err != nil {
		t.Fatal(err)
	}
	// The subscription is live once a probe comes back through it.
	waitUntil(t, 5*time.Second, "status subscription at the new server", func() bool {
		_ = statusB.Publish(ctx, dest.AgentStatus, map[string]string{"probe": "1"}, nil)
		select {
		case m := <-st.C():
			return m.Headers["probe"] == "1"
		case <-time.After(50 * time.Millisecond):
			return false
		}
	})

	start := time.Now()
	for _, r := range agents {
		writeFile(t, r.path, hostB, portB, idB, 2)
		r.changes <- struct{}{}
	}
	heard := map[string]bool{}
	timeout := time.After(5 * time.Second)
	for len(heard) < n {
		select {
		case m := <-st.C():
			if e, err := protocol.Decode(m.Headers); err == nil && e.FailoverID == idB && e.Epoch == 2 {
				heard[e.Node] = true
			}
		case <-timeout:
			var stuck []string
			for _, r := range agents {
				if s := r.a.Status(); !heard[s.ID] {
					stuck = append(stuck, s.ID+"@"+s.Server)
				}
			}
			t.Fatalf("after %s, %d of %d agents never reported at the new server: %v", time.Since(start), len(stuck), n, stuck)
		}
	}
	t.Logf("all %d agents at the new server after %s", n, time.Since(start))
	stop()
	waitUntil(t, 10*time.Second, "the link to the dead server closed", func() bool { h.Close(); return pool.Links() == 1 })
}

// TestAgentStopsPromptlyWhenItsLinkIsJammed: SIGTERM (context cancel) of an
// agent whose link to a frozen server is backed up ends Run within a bound.
func TestAgentStopsPromptlyWhenItsLinkIsJammed(t *testing.T) {
	bh := testbrokers.StartBlackHole(t)
	host, port := hostPortOf(t, bh.Addr())
	var entered atomic.Int64
	var mu sync.Mutex
	var links []broker.Bus
	dial := linkDial(&entered, func(b broker.Bus) { mu.Lock(); links = append(links, b); mu.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := startLinkAgent(t, ctx, "agent-1", host, port, dial)
	waitUntil(t, 5*time.Second, "agent connected", func() bool { return r.a.Status().Connected && entered.Load() > 0 })
	mu.Lock()
	l := links[0]
	mu.Unlock()
	stop := testbrokers.Jam(t, func(ctx context.Context, body []byte) error { return l.Publish(ctx, "/topic/jam", nil, body) })
	defer stop()
	base := entered.Load()
	waitUntil(t, 10*time.Second, "the agent publishing into the jam", func() bool { return entered.Load() > base })
	start := time.Now()
	cancel()
	select {
	case <-r.done:
		t.Logf("Run returned %s after cancel", time.Since(start))
	case <-time.After(4 * time.Second):
		t.Fatalf("Run still running %s after cancel", time.Since(start))
	}
}

func hostPortOf(t *testing.T, addr string) (string, int) {
	h, p, _ := net.SplitHostPort(addr)
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return h, port
}
