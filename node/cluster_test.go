package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/hooks"
)

// cluster runs whole nodes in one process on a broker.MemHub (after
// hashicorp/raft's MakeCluster): no sockets but the admin API on loopback,
// no processes, logs to t.Log. Node i is named n0, n1, …; node 0 starts as
// the primary and the others as its backups.
type cluster struct {
	t      *testing.T
	hub    *broker.MemHub
	agents string // the agents' glob, shared by every node
	nodes  []*clusterNode
}

type clusterNode struct {
	name   string
	dir    string
	cfg    *config.Config
	n      *Node
	cancel context.CancelFunc
	done   chan error
}

// clusterOptions shape a cluster.
type clusterOptions struct {
	nodes int
	// configure edits each node's config before it starts.
	configure func(i int, c *config.Config)
	// options sets each node's seams (Dial and Broker are the cluster's).
	options func(i int) Options
	// agents is how many agent files to create.
	agents int
	// primaries is how many nodes (the first ones) start with no
	// primary_location: 0 means 1.
	primaries int
}

func makeCluster(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	c := &cluster{t: t, hub: broker.NewMemHub()}
	agentDir := t.TempDir()
	c.agents = filepath.Join(agentDir, "*", "address.yaml")
	for i := 0; i < o.agents; i++ {
		p := filepath.Join(agentDir, fmt.Sprintf("a%d", i), "address.yaml")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("# agent\nstomp_interface: 127.0.0.1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < o.nodes; i++ {
		name := fmt.Sprintf("n%d", i)
		dir := t.TempDir()
		cfg := config.TestConfig(dir)
		cfg.Node = name
		cfg.Advertise = c.advertise(i)
		cfg.Agents = []string{c.agents}
		cfg.Heartbeat.Period = 20 * time.Millisecond
		cfg.Heartbeat.FailWindow = 100 * time.Millisecond
		cfg.Heartbeat.ReplyPeriod = 200 * time.Millisecond
		if o.configure != nil {
			o.configure(i, cfg)
		}
		if i >= max(o.primaries, 1) {
			if err := config.WritePrimaryLocation(dir, c.advertise(0)); err != nil {
				t.Fatal(err)
			}
		}
		c.nodes = append(c.nodes, &clusterNode{name: name, dir: dir, cfg: cfg})
	}
	for i, cn := range c.nodes {
		var opts Options
		if o.options != nil {
			opts = o.options(i)
		}
		if opts.StopHandover == 0 {
			opts.StopHandover = -1 // stop() is a kill unless a test asks for clean stops
		}
		name, addr := cn.name, c.advertise(i)
		opts.Dial = func(ctx context.Context, url string, d DialOptions) (broker.Bus, error) {
			if d.OnState != nil {
				d.OnState(true, nil)
			}
			return c.hub.Client(name), nil
		}
		opts.Broker = func(broker.ServerConfig) (EmbeddedBroker, error) { return fakeBroker(addr), nil }
		log := logrus.New()
		log.SetOutput(testWriter{t})
		log.SetLevel(logrus.DebugLevel)
		n, err := New(cn.cfg, log, opts)
		if err != nil {
			t.Fatal(err)
		}
		cn.n = n
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *cluster) advertise(i int) string { return fmt.Sprintf("127.0.0.1:%d", 10001+i) }

// start runs node i until stop (or the test's end) and waits until it
// serves.
func (c *cluster) start(i int) *clusterNode {
	cn := c.launch(i)
	select {
	case <-cn.n.Ready():
	case err := <-cn.done:
		cn.done <- err
		c.t.Fatalf("%s did not start: %v", cn.name, err)
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s did not start", cn.name)
	}
	return cn
}

// launch runs node i without waiting; cn.done gets Run's error.
func (c *cluster) launch(i int) *clusterNode {
	cn := c.nodes[i]
	ctx, cancel := context.WithCancel(context.Background())
	cn.cancel, cn.done = cancel, make(chan error, 1)
	go func() { cn.done <- cn.n.Run(ctx) }()
	return cn
}

// exited reports Run's error if node i's Run has returned.
func (c *cluster) exited(i int) (error, bool) {
	cn := c.nodes[i]
	select {
	case err := <-cn.done:
		cn.done <- err
		return err, true
	default:
		return nil, false
	}
}

// stop ends node i (its bus goes quiet, as a kill would make it) and
// returns Run's error.
func (c *cluster) stop(i int) error {
	cn := c.nodes[i]
	if cn.cancel == nil {
		return nil
	}
	cn.cancel()
	cn.cancel = nil
	c.hub.Isolate(cn.name)
	select {
	case err := <-cn.done:
		return err
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s did not stop within 10s", cn.name)
		return nil
	}
}

// cleanStop is a SIGTERM of node i: its bus stays up while it stops.
func (c *cluster) cleanStop(i int) error {
	cn := c.nodes[i]
	if cn.cancel == nil {
		return nil
	}
	cn.cancel()
	cn.cancel = nil
	select {
	case err := <-cn.done:
		c.hub.Isolate(cn.name)
		return err
	case <-time.After(20 * time.Second):
		c.t.Fatalf("%s did not stop within 20s", cn.name)
		return nil
	}
}

func (c *cluster) stopAll() {
	for i := range c.nodes {
		c.stop(i)
	}
}

// waitRole polls node i's status until its role is want.
func (c *cluster) waitRole(i int, want Role) Status {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := c.nodes[i].n.Status()
		if s.Role == want.String() {
			return s
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: role %s, want %s (status %+v)", c.nodes[i].name, s.Role, want, s)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// startPair starts node 0 as the primary and node 1 as its backup, and
// waits until the backup has counted a heartbeat of the primary.
func (c *cluster) startPair() {
	c.t.Helper()
	c.start(0)
	c.waitRole(0, RolePrimary)
	c.start(1)
	c.waitRole(1, RoleBackup)
	c.waitHeard(1)
}

// waitHeard waits until backup i has counted a heartbeat of its primary
// (until then it never takes over by itself).
func (c *cluster) waitHeard(i int) {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := c.nodes[i].n.Status()
		if s.Primary != nil && s.Primary.LastHeartbeatAgeMS >= 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s never heard its primary (status %+v)", c.nodes[i].name, s)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// disk is node i's state.json as on disk.
func (c *cluster) disk(i int) failoverid.State {
	c.t.Helper()
	st, err := failoverid.LoadState(c.nodes[i].dir)
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

type fakeBroker string

func (f fakeBroker) Addr() string { return string(f) }
func (f fakeBroker) Close() error { return nil }

// hookGate stands in for one named hook: the hook blocks until released
// or until its context ends, and says which happened.
type hookGate struct {
	name     string
	started  chan struct{}
	release  chan struct{}
	once     sync.Once
	mu       sync.Mutex
	ended    bool // the hook has returned
	canceled bool // it returned because its context ended
}

func newHookGate(name string) *hookGate {
	return &hookGate{name: name, started: make(chan struct{}), release: make(chan struct{})}
}

// runner is an Options.RunHook: the gate's hook blocks; others run at once
// (and are recorded by calls).
func (g *hookGate) runner(calls func(name string)) hooks.Func {
	return func(ctx context.Context, name, command string, timeout time.Duration, env []string, log logrus.FieldLogger) error {
		if calls != nil {
			calls(name)
		}
		if name != g.name {
			return nil
		}
		g.once.Do(func() { close(g.started) })
		var err error
		select {
		case <-g.release:
		case <-ctx.Done():
			err = ctx.Err()
		}
		g.mu.Lock()
		g.ended, g.canceled = true, err != nil
		g.mu.Unlock()
		return err
	}
}

func (g *hookGate) state() (ended, canceled bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ended, g.canceled
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// boundTo counts the agent files bound to failover id and the others.
func (c *cluster) boundTo(id string) (bound, other int) {
	paths, _ := filepath.Glob(c.agents)
	for _, p := range paths {
		a, err := agentcfg.ReadFile(p)
		if err == nil && a.FailoverID == id {
			bound++
		} else {
			other++
		}
	}
	return bound, other
}
