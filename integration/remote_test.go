package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/protocol"
)

// remoteAgents writes n agent files in DIR/remote — in no server's agents
// glob: no server can write them, as on agents' own hosts — that name only
// where to connect (stomp_interface, stomp_port): a new agent needs nothing
// else but the group's public key.
func (c *cluster) remoteAgents(n int, srv *server) (dir string, files []string) {
	c.t.Helper()
	dir = filepath.Join(c.dir, "remote")
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("r%03d", i), "conf")
		if err := os.MkdirAll(d, 0o755); err != nil {
			c.t.Fatal(err)
		}
		p := filepath.Join(d, "address.yaml")
		if err := os.WriteFile(p, []byte(fmt.Sprintf(agentFile, "127.0.0.1", srv.brokerPort, i%250)), 0o644); err != nil {
			c.t.Fatal(err)
		}
		files = append(files, p)
	}
	return dir, files
}

// Agents on their own hosts: no server can write their files. The primary
// rebinds them (they start with no token), the pings name the backup as
// their failover server, and after kill -9 of the primary the new primary's
// signed rebind reaches them on their standby links: every agent rewrites
// its own file (comments and other keys kept) and follows.
func TestRemoteAgentsFollowATakeoverWithoutSharedFiles(t *testing.T) {
	c := newCluster(t)
	a, b, _ := pairUp(t, c, 0)
	dir, files := c.remoteAgents(5, a)
	c.startFleet(dir)
	allAt(t, files, a, 1, 20*time.Second)
	waitFailoverServers(t, files, b)
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	c.waitRole(b, "primary", 20*time.Second)
	allAt(t, files, b, 2, 20*time.Second)
	for i, f := range files {
		checkAgentFileIntact(t, f, i)
	}
	eventually(t, 20*time.Second, "b's status counts the agents bound to it", func() bool {
		s, err := getStatus(b.admin)
		return err == nil && s.Agents.Bound == len(files)
	})
}

// A stranger on the broker forges rebinds (unsigned, and signed by another
// group's key) and replays an old valid one: no agent file changes.
func TestForgedAndReplayedRebindsChangeNothing(t *testing.T) {
	c := newCluster(t)
	a, b, _ := pairUp(t, c, 0)
	dir, files := c.remoteAgents(3, a)
	c.startFleet(dir)
	allAt(t, files, a, 1, 20*time.Second)
	waitFailoverServers(t, files, b)
	before := make([]string, len(files))
	for i, f := range files {
		_, _, _, before[i] = fileFacts(t, f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	link, err := broker.Dial(ctx, broker.LinkConfig{URL: "stomp://" + a.addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	if err := link.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	dest := protocol.NewDestinations("")
	_, otherKey, _ := protocol.GenerateKey()
	other := protocol.NewGroupSigner(dest, protocol.Keys{Private: otherKey})
	own := groupSigner(t, c.dir, dest)
	evil := newUUID()
	for i := 0; i < 20; i++ {
		env := protocol.Envelope{FailoverID: evil, Epoch: 999, Node: "mallory", Seq: uint64(100 + i), Role: "primary",
			Command: protocol.CommandRebind, Advertise: "127.0.0.1:1"}
		// Unsigned.
		h := env.Headers()
		h[protocol.HFailoverSig] = other.TokenSig(evil, 999, "127.0.0.1", 1)
		_ = link.Publish(ctx, dest.AgentCommand, h, nil)
		// Signed by another group.
		env2 := env
		env2.FailoverSig = other.TokenSig(evil, 999, "127.0.0.1", 1)
		h = env2.Headers()
		other.Sign(dest.AgentCommand, h, nil)
		_ = link.Publish(ctx, dest.AgentCommand, h, nil)
		// The group's message signature over a failover-sig of another key.
		h = env2.Headers()
		own.Sign(dest.AgentCommand, h, nil)
		_ = link.Publish(ctx, dest.AgentCommand, h, nil)
		time.Sleep(20 * time.Millisecond)
	}
	// A valid rebind of a's own, at a's epoch: not newer than the files.
	host, port := "127.0.0.1", a.brokerPort
	aid := mustStatus(t, a).FailoverID
	old := protocol.Envelope{FailoverID: aid, Epoch: 1, Node: "a", Seq: 1, Role: "primary", Command: protocol.CommandRebind,
		Advertise: fmt.Sprintf("%s:%d", host, port), FailoverSig: own.TokenSig(aid, 1, host, port)}
	h := old.Headers()
	own.Sign(dest.AgentCommand, h, nil)
	_ = link.Publish(ctx, dest.AgentCommand, h, nil)
	// The agents consumed them: their rejected-rebind counters rose.
	eventually(t, 20*time.Second, "the agents rejected the forged and replayed rebinds", func() bool {
		b, _ := os.ReadFile(filepath.Join(c.dir, "fleet.log"))
		return strings.Count(string(b), "rejected a rebind") >= len(files)*3 && strings.Contains(string(b), "not newer")
	})
	for i, f := range files {
		if _, _, _, text := fileFacts(t, f); text != before[i] {
			t.Fatalf("%s changed:\n%s\n-- was --\n%s", f, text, before[i])
		}
	}
}

// startFleet runs one agent process for every address.yaml under dir
// (with the group's public key), logging to DIR/fleet.log.
func (c *cluster) startFleet(dir string) *proc {
	c.t.Helper()
	return start(c.t, c.dir, "fleet", "agent", "--fleet", dir, "--period", "100ms", "--log-level", "debug")
}

// waitFailoverServers waits until every file names srv as its failover
// server (learned from the primary's pings).
func waitFailoverServers(t *testing.T, files []string, srv *server) {
	t.Helper()
	eventually(t, 20*time.Second, "every agent file names "+srv.name+" as its failover server", func() bool {
		for _, f := range files {
			if _, _, _, text := fileFacts(t, f); !strings.Contains(text, "failover_servers: \""+srv.addr()+"\"") && !strings.Contains(text, "failover_servers: "+srv.addr()) {
				return false
			}
		}
		return true
	})
}

// An agent that was down during the takeover catches up when it comes
// back: its file still names the dead primary, but its standby link to the
// new primary reports a token behind it, and the new primary rebinds it.
func TestARemoteAgentDownDuringTheTakeoverCatchesUp(t *testing.T) {
	c := newCluster(t)
	a, b, _ := pairUp(t, c, 0)
	dir, files := c.remoteAgents(3, a)
	fleet := c.startFleet(dir)
	allAt(t, files, a, 1, 20*time.Second)
	waitFailoverServers(t, files, b)
	fleet.kill()
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	c.waitRole(b, "primary", 20*time.Second)
	// Long after b's first rebinds, the agents come back.
	time.Sleep(2 * time.Second)
	for _, f := range files {
		if port, ep, _, _ := fileFacts(t, f); ep != "1" || port != fmt.Sprint(a.brokerPort) {
			t.Fatalf("%s changed while its agent was down: epoch %s port %s", f, ep, port)
		}
	}
	c.startFleet(dir)
	allAt(t, files, b, 2, 20*time.Second)
}

// An agent that first connects to the replaced primary after the takeover
// (a new agent set up from an old runbook, a host restored from a backup),
// knowing no other server, follows the new primary: the replaced primary,
// rejoined as its backup, sends it nothing, but the new primary hears its
// report on that server's broker and rebinds it there — also when the
// heartbeats go through an external broker (heartbeat_broker: here a
// standalone `tandem broker`), where no heartbeat needs that link.
func TestALateAgentOfTheReplacedPrimaryFollowsTheNewOne(t *testing.T) {
	t.Run("embedded", func(t *testing.T) { lateAgentFollows(t, "") })
	t.Run("heartbeat_broker", func(t *testing.T) {
		hbAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		start(t, t.TempDir(), "hb-broker", "broker", "--listen", hbAddr)
		eventually(t, 10*time.Second, "standalone broker up", func() bool { return stompPing(hbAddr) == nil })
		lateAgentFollows(t, fmt.Sprintf("heartbeat_broker: stomp://%s\n", hbAddr))
	})
}

func lateAgentFollows(t *testing.T, extra string) {
	c := newCluster(t)
	c.extra = extra
	a, b, _ := pairUp(t, c, 0)
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	c.waitRole(b, "primary", 20*time.Second)
	rj := start(t, c.dir, "a-rejoin", "rejoin", "--config", a.cfgPath, "--primary", b.addr())
	if code := rj.wait(20 * time.Second); code != 0 {
		t.Fatalf("rejoin: exit %d\n%s", code, rj.logText())
	}
	c.start(a)
	c.waitRole(a, "backup", 30*time.Second)
	time.Sleep(2 * time.Second) // long after b's first rebinds
	dir, files := c.remoteAgents(2, a)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil || strings.Contains(string(raw), "failover_servers") {
			t.Fatalf("%s should name no other server: %v\n%s", f, err, raw)
		}
	}
	c.startFleet(dir)
	allAt(t, files, b, 2, 30*time.Second)
}

// The fault suite's core scenarios with agents on their own hosts, on each
// heartbeat channel (embedded, ActiveMQ, RabbitMQ), each ending with the
// invariant checks over the agents' own files: kill -9 of the primary;
// SIGSTOP past the window and SIGCONT (the old primary is fenced, through
// the new primary's notify heartbeat and the agents' reports); a cut
// between backup and primary while the agents still reach the primary.
func TestRemoteFaults(t *testing.T) {
	for _, kind := range []string{"embedded", "activemq", "rabbitmq"} {
		t.Run(kind, func(t *testing.T) {
			var ext *extBroker
			if kind != "embedded" {
				ext = newBroker(t, kind)
			}
			o := rigOpts{remote: true}
			t.Run("KillPrimary", func(t *testing.T) { killPrimary(t, kind, ext, o) })
			t.Run("FreezePrimary", func(t *testing.T) { freezePrimary(t, kind, ext, o) })
			t.Run("PartitionBackupPrimary", func(t *testing.T) { partitionPair(t, kind, ext, o) })
			t.Run("CutBackupFromAgentsDuringTakeover", func(t *testing.T) { cutBackupFromAgents(t, kind, ext, o) })
		})
	}
}

// The new primary cannot reach the agents during its takeover (a cut
// between it and them; the pair still hears each other until the kill):
// no agent moves while cut; after the heal their standby links come back,
// report a token behind the new primary, and it rebinds them all.
func cutBackupFromAgents(t *testing.T, kind string, ext *extBroker, o rigOpts) {
	r := settledRig(t, kind, ext, o)
	r.ag["b"].Cut()
	r.a.p.signal(syscall.SIGKILL)
	r.a.p.wait(5 * time.Second)
	r.c.waitRole(r.b, "primary", 20*time.Second)
	// b's first rebinds go out while it cannot reach anyone: wait them out
	// (its first 10 periods), then look: no file moved.
	time.Sleep(10 * 200 * time.Millisecond)
	if r.filesAt(r.b, 2) {
		t.Fatal("agents moved while cut from the new primary")
	}
	r.ag["b"].Heal()
	r.settled(r.b, 2, 20*time.Second)
	r.check()
}
