package agent

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
)

// keys is a group key pair: the servers' signer and the agents'.
type keys struct {
	server, agent *protocol.Signer
}

func newKeys(t *testing.T) keys {
	t.Helper()
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return keys{protocol.NewGroupSigner(dest, protocol.Keys{Private: priv}), protocol.NewGroupSigner(dest, protocol.Keys{Public: pub})}
}

// rrig runs agents on one broker per server (hubs), dialled through
// countDial.
type rrig struct {
	t     *testing.T
	hubs  hubs
	keys  keys
	clk   *clock.Fake
	mu    sync.Mutex
	dials map[string]int
	hooks []string // env of each on_rebind run
	hookC chan struct{}
	// pingGap is the agents' Config.PingGap (0: a lone agent's, none).
	pingGap time.Duration
}

func newRRig(t *testing.T) *rrig {
	return &rrig{t: t, keys: newKeys(t), clk: clock.NewFake(time.Unix(1_700_000_000, 0)), dials: map[string]int{}}
}

func (r *rrig) dial(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
	k := target(addr)
	r.mu.Lock()
	r.dials[k]++
	r.mu.Unlock()
	return r.hubs.of(k).Client("agent"), nil
}

func (r *rrig) dialsTo(k string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dials[k]
}

type ragent struct {
	a       *Agent
	path    string
	changes chan struct{}
}

const rebindFile = "# the agent's own file\nstomp_interface: server-a # primary\nstomp_port: 1001\nlocal_interface: 10.9.9.9 # keep me\n" +
	"failover_id: " + idA + "\nfailover_epoch: 1\n"

// start runs an agent on a file with content; signer nil: the group's
// public key.
func (r *rrig) start(content string, signer *protocol.Signer, dial DialFunc) *ragent {
	r.t.Helper()
	path := filepath.Join(r.t.TempDir(), "address.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		r.t.Fatal(err)
	}
	if signer == nil {
		signer = r.keys.agent
	}
	if dial == nil {
		dial = r.dial
	}
	ra := &ragent{path: path, changes: make(chan struct{}, 1)}
	log, _ := test.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	ra.a = New(Config{
		Path: path, ID: "agent-" + filepath.Base(filepath.Dir(path)), Period: 100 * time.Millisecond, Dest: dest, Signer: signer,
		Clock: r.clk, Log: log, Dial: dial, OnRebind: "systemctl restart datastax-agent", PingGap: r.pingGap,
		Watch: func(ctx context.Context, path string, d time.Duration) (<-chan struct{}, error) {
			return ra.changes, nil
		},
		RunHook: func(ctx context.Context, name, command string, timeout time.Duration, env []string, log logrus.FieldLogger) error {
			r.mu.Lock()
			r.hooks = append(r.hooks, name+" "+command+" "+strings.Join(env, " "))
			c := r.hookC
			r.mu.Unlock()
			if c != nil {
				select {
				case <-c:
				case <-ctx.Done():
				}
			}
			return nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := ra.a.Run(ctx); err != nil {
			r.t.Error(err)
		}
	}()
	r.t.Cleanup(func() { cancel(); <-done })
	r.eventually("connected to server-a", func() bool { return ra.a.Status().Connected })
	return ra
}

func (r *rrig) eventually(what string, cond func() bool) {
	r.t.Helper()
	waitUntil(r.t, 5*time.Second, what, cond)
}

// ticking waits for cond, moving the fake clock a period on each try (for
// what the agents do at their period tick).
func (r *rrig) ticking(what string, cond func() bool) {
	r.t.Helper()
	waitUntil(r.t, 5*time.Second, what, func() bool {
		if cond() {
			return true
		}
		r.clk.Advance(100 * time.Millisecond)
		return false
	})
}

func (ra *ragent) standbyUp(server string) bool {
	for _, s := range ra.a.Status().Standby {
		if s.Server == server && s.Connected {
			return true
		}
	}
	return false
}

func (ra *ragent) read(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(ra.path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rb describes a rebind to send.
type rb struct {
	id     string
	epoch  uint64
	seq    uint64
	adv    string
	msgKey *protocol.Signer // signs the message (nil: the group's)
	// the failover-sig's token and address (zero: the rebind's own)
	sigEpoch uint64
	sigHost  string
}

func (r *rrig) rebind(server string, m rb) {
	r.t.Helper()
	host, port := hostPortOf(r.t, m.adv)
	se, sh := m.epoch, host
	if m.sigEpoch != 0 {
		se = m.sigEpoch
	}
	if m.sigHost != "" {
		sh = m.sigHost
	}
	h := protocol.Envelope{FailoverID: m.id, Epoch: m.epoch, Node: "opsc-b", Seq: m.seq, Role: "primary", Advertise: m.adv,
		FailoverSig: r.keys.server.TokenSig(m.id, se, sh, port)}.Headers()
	h[hCommand] = cmdRebind
	body := []byte(`{"command":"rebind"}`)
	k := m.msgKey
	if k == nil {
		k = r.keys.server
	}
	k.Sign(dest.AgentCommand, h, body)
	if err := r.hubs.of(server).Client(server).Publish(context.Background(), dest.AgentCommand, h, body); err != nil {
		r.t.Fatal(err)
	}
}

// ping publishes the bound server's signed periodic command.
func (r *rrig) ping(server, id string, epoch, seq uint64, servers *string) {
	r.t.Helper()
	m := r.pingMsg(id, epoch, seq, servers)
	if err := r.hubs.of(server).Client(server).Publish(context.Background(), dest.AgentCommand, m.Headers, m.Body); err != nil {
		r.t.Fatal(err)
	}
}

// pingMsg is a ping signed by the group's key, as a fan-out hands it on.
func (r *rrig) pingMsg(id string, epoch, seq uint64, servers *string) broker.Message {
	h := protocol.Envelope{FailoverID: id, Epoch: epoch, Node: "opsc-a", Seq: seq, Role: "primary"}.Headers()
	if servers != nil {
		h[hFailoverServers] = *servers
	}
	body := []byte(`{"command":"ping"}`)
	r.keys.server.Sign(dest.AgentCommand, h, body)
	return broker.Message{Destination: dest.AgentCommand, Headers: h, Body: body, Memo: &broker.Memo{}}
}

func TestAValidRebindRewritesTheFileAndTheAgentFollowsIt(t *testing.T) {
	r := newRRig(t)
	release := make(chan struct{})
	r.hookC = release
	defer close(release)
	stB, _ := r.hubs.of("server-b:1002").Client("server-b").Subscribe(dest.AgentStatus)
	ra := r.start(rebindFile+"failover_servers: \"server-b:1002\"\n", nil, nil)
	r.eventually("standby link at server-b", func() bool { return ra.standbyUp("server-b:1002") })
	// The standby link reported once, with the agent's token.
	if e := statusFrom(t, stB); e.FailoverID != idA || e.Epoch != 1 {
		t.Fatalf("standby report %+v", e)
	}

	r.rebind("server-b:1002", rb{id: idB, epoch: 2, seq: 1, adv: "server-b:1002"})
	r.eventually("rebind accepted", func() bool { return ra.a.Status().RebindsAccepted == 1 })
	sig := r.keys.server.TokenSig(idB, 2, "server-b", 1002)
	want := "# the agent's own file\nstomp_interface: server-b # primary\nstomp_port: 1002\nlocal_interface: 10.9.9.9 # keep me\n" +
		"failover_id: " + idB + "\nfailover_epoch: 2\nfailover_servers: \"server-b:1002\"\nfailover_sig: " + sig + "\n"
	if got := ra.read(t); got != want {
		t.Fatalf("file:\n%s\nwant:\n%s", got, want)
	}
	// It moves to server-b (the file watch never fires here) and reports
	// there with the new token and its signature.
	r.eventually("bound to server-b", func() bool {
		s := ra.a.Status()
		return s.Server == "server-b:1002" && s.Connected && s.Bound.Epoch == 2
	})
	for {
		e := statusFrom(t, stB)
		if e.Epoch == 2 {
			if e.FailoverID != idB || e.FailoverSig != sig || e.Bound != "server-b:1002" {
				t.Fatalf("report %+v", e)
			}
			break
		}
	}
	// server-b is the bound server now, not a standby.
	r.eventually("no standby at the bound server", func() bool { return len(ra.a.Status().Standby) == 0 })
	// The hook starts after the rewrite, on the file worker: the agent may
	// follow its file before it is called.
	var hooks []string
	r.eventually("the hook called", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		hooks = slices.Clone(r.hooks)
		return len(hooks) > 0
	})
	if len(hooks) != 1 || !strings.Contains(hooks[0], "on_rebind systemctl restart datastax-agent") ||
		!strings.Contains(hooks[0], "TANDEM_EPOCH=2") || !strings.Contains(hooks[0], "TANDEM_SERVER=server-b:1002") {
		t.Fatalf("hooks %q", hooks)
	}
	// The hook is still running (it waits on release): the agent still
	// follows its file at once.
	writeFile(t, ra.path, "server-c", 1003, idB, 3)
	ra.changes <- struct{}{}
	r.eventually("followed the file to server-c while the hook runs", func() bool { return ra.a.Status().Server == "server-c:1003" })
}

func TestBadRebindsChangeNothing(t *testing.T) {
	r := newRRig(t)
	ra := r.start(rebindFile+"failover_servers: \"server-b:1002\"\n", nil, nil)
	r.eventually("standby link at server-b", func() bool { return ra.standbyUp("server-b:1002") })
	before := ra.read(t)
	_, otherPriv, _ := ed25519.GenerateKey(nil)
	other := protocol.NewGroupSigner(dest, protocol.Keys{Private: otherPriv})
	cases := []struct {
		name string
		via  string
		m    rb
	}{
		{"unsigned", "server-b:1002", rb{id: idB, epoch: 2, seq: 1, adv: "server-b:1002", msgKey: protocol.NewSigner(nil)}},
		{"signed with another key", "server-b:1002", rb{id: idB, epoch: 2, seq: 2, adv: "server-b:1002", msgKey: other}},
		{"failover-sig for another epoch", "server-b:1002", rb{id: idB, epoch: 2, seq: 3, adv: "server-b:1002", sigEpoch: 3}},
		{"failover-sig for another address", "server-b:1002", rb{id: idB, epoch: 2, seq: 4, adv: "server-b:1002", sigHost: "server-c"}},
		{"not newer (equal token)", "server-a:1001", rb{id: idA, epoch: 1, seq: 5, adv: "server-b:1002"}},
		{"not newer (lower id at the same epoch)", "server-b:1002", rb{id: "00000000-0000-4000-8000-000000000000", epoch: 1, seq: 6, adv: "server-b:1002"}},
	}
	for i, c := range cases {
		r.rebind(c.via, c.m)
		r.eventually(c.name+": rejected", func() bool { return ra.a.Status().RebindsRejected == uint64(i+1) })
		if got := ra.read(t); got != before {
			t.Fatalf("%s changed the file:\n%s", c.name, got)
		}
	}
	s := ra.a.Status()
	if s.RebindsAccepted != 0 || s.Server != "server-a:1001" || s.LastRebindRejection == "" {
		t.Fatalf("status %+v", s)
	}
}

func TestAReplayedRebindChangesNothing(t *testing.T) {
	r := newRRig(t)
	ra := r.start(rebindFile, nil, nil)
	r.rebind("server-a:1001", rb{id: idB, epoch: 2, seq: 5, adv: "server-b:1002"})
	r.eventually("accepted", func() bool { return ra.a.Status().RebindsAccepted == 1 })
	r.eventually("bound to server-b", func() bool { return ra.a.Status().Server == "server-b:1002" })
	// An operator forces the file back to server-a at epoch 1; a recorded
	// rebind sent again (at server-a, still up) must not undo that.
	forced := rebindFile + "# forced\n"
	if err := os.WriteFile(ra.path, []byte(forced), 0o644); err != nil {
		t.Fatal(err)
	}
	ra.changes <- struct{}{}
	r.eventually("back at server-a", func() bool { return ra.a.Status().Server == "server-a:1001" })
	r.rebind("server-a:1001", rb{id: idB, epoch: 2, seq: 5, adv: "server-b:1002"})
	r.eventually("replay rejected", func() bool { return ra.a.Status().RebindsRejected == 1 })
	if got := ra.read(t); got != forced {
		t.Fatalf("a replayed rebind changed the file:\n%s", got)
	}
	if s := ra.a.Status(); !strings.Contains(s.LastRebindRejection, "replayed") {
		t.Fatalf("%+v", s)
	}
	// A later rebind of that primary (a higher seq) is obeyed.
	r.rebind("server-a:1001", rb{id: idB, epoch: 2, seq: 6, adv: "server-b:1002"})
	r.eventually("accepted", func() bool { return ra.a.Status().RebindsAccepted == 2 })
}

func TestARebindIsNotObeyedWithoutAServerKey(t *testing.T) {
	r := newRRig(t)
	ra := r.start(rebindFile+"failover_servers: \"server-b:1002\"\n", protocol.NewGroupSigner(dest, protocol.Keys{}), nil)
	r.eventually("standby link at server-b", func() bool { return ra.standbyUp("server-b:1002") })
	before := ra.read(t)
	r.rebind("server-b:1002", rb{id: idB, epoch: 2, seq: 1, adv: "server-b:1002"})
	r.rebind("server-a:1001", rb{id: idB, epoch: 2, seq: 2, adv: "server-b:1002"})
	r.eventually("rejected", func() bool { return ra.a.Status().RebindsRejected == 2 })
	if got := ra.read(t); got != before {
		t.Fatalf("file changed:\n%s", got)
	}
	if s := ra.a.Status(); s.RebindsAccepted != 0 || !strings.Contains(s.LastRebindRejection, "--server-key") {
		t.Fatalf("%+v", s)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// workerIdle reports whether no file write waits or runs.
func (a *Agent) workerIdle() bool {
	a.rb.qmu.Lock()
	defer a.rb.qmu.Unlock()
	return !a.rb.busy
}

func TestFailoverServersFromAPingAreWrittenOnceAndGetAStandbyLink(t *testing.T) {
	r := newRRig(t)
	ra := r.start(rebindFile, nil, nil)
	if s := ra.a.Status(); len(s.Standby) != 0 {
		t.Fatalf("standby before any ping: %+v", s.Standby)
	}
	servers := "server-c:1003"
	r.ping("server-a:1001", idA, 1, 1, &servers)
	// The standby link follows the ping at once; the file waits for the
	// agent's next period tick. A second ping consumed shows the first was
	// handled in full.
	r.eventually("standby link at server-c", func() bool { return ra.standbyUp("server-c:1003") })
	r.ping("server-a:1001", idA, 1, 2, nil)
	r.eventually("pings consumed", func() bool { return ra.a.Status().Accepted == 2 })
	r.eventually("writer idle", ra.a.workerIdle)
	if got := ra.read(t); got != rebindFile {
		t.Fatalf("failover_servers written before the tick:\n%s", got)
	}
	want := rebindFile + "failover_servers: \"server-c:1003\"\n"
	r.ticking("failover_servers written at the tick", func() bool { return ra.read(t) == want })
	ino := inode(t, ra.path)
	// The file watch fires for the agent's own write; the same list again
	// and again writes nothing.
	ra.changes <- struct{}{}
	for seq := uint64(3); seq <= 5; seq++ {
		r.ping("server-a:1001", idA, 1, seq, &servers)
	}
	r.ping("server-a:1001", idA, 1, 6, nil) // no list: nothing to learn
	r.eventually("pings consumed", func() bool { return ra.a.Status().Accepted == 6 })
	r.clk.Advance(100 * time.Millisecond)
	r.eventually("writer idle", ra.a.workerIdle)
	if ino2 := inode(t, ra.path); ino2 != ino || ra.read(t) != want {
		t.Fatalf("rewritten for an unchanged list")
	}
	if n := r.dialsTo("server-c:1003"); n != 1 {
		t.Fatalf("%d dials to the standby server", n)
	}
	// A ping of another server (not bound) teaches nothing.
	other := "server-x:9"
	r.ping("server-a:1001", idB, 7, 6, &other)
	// A changed list is written (once), and the standby links follow it.
	next := "server-d:1004,server-c:1003"
	r.ping("server-a:1001", idA, 1, 7, &next)
	r.ticking("new list written", func() bool {
		return ra.read(t) == rebindFile+"failover_servers: \"server-d:1004,server-c:1003\"\n"
	})
	r.eventually("standby link at server-d", func() bool { return ra.standbyUp("server-d:1004") && ra.standbyUp("server-c:1003") })
	if s := ra.a.Status(); s.Rejected != 1 || slices.ContainsFunc(s.Standby, func(x StandbyStatus) bool { return x.Server == "server-x:9" }) {
		t.Fatalf("%+v", s)
	}
	// Emptied by the primary: written as "", and the links go.
	empty := ""
	r.ping("server-a:1001", idA, 1, 8, &empty)
	r.ticking("emptied", func() bool { return ra.read(t) == rebindFile+"failover_servers: \"\"\n" })
	r.eventually("no standby links", func() bool { return len(ra.a.Status().Standby) == 0 })
}

func TestAFleetSharesOneStandbyLinkPerServer(t *testing.T) {
	r := newRRig(t)
	var dialsMu sync.Mutex
	dials := map[string]int{}
	pool := NewPool(func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
		dialsMu.Lock()
		dials[target(addr)]++
		dialsMu.Unlock()
		return r.hubs.of(target(addr)).Client("fleet"), nil
	}, 0)
	const n = 20
	var agents []*ragent
	for i := 0; i < n; i++ {
		agents = append(agents, r.start(rebindFile+"failover_servers: \"server-b:1002\"\n", nil, pool.Dial))
	}
	for i, ra := range agents {
		r.eventually(fmt.Sprintf("agent %d: standby link at server-b", i), func() bool { return ra.standbyUp("server-b:1002") })
	}
	dialsMu.Lock()
	got := fmt.Sprint(dials)
	dialsMu.Unlock()
	if got != "map[server-a:1001:1 server-b:1002:1]" || pool.Links() != 2 {
		t.Fatalf("dials %s, %d links", got, pool.Links())
	}
	// One rebind at server-b moves the whole fleet, over the same link.
	r.rebind("server-b:1002", rb{id: idB, epoch: 2, seq: 1, adv: "server-b:1002"})
	for i, ra := range agents {
		r.eventually(fmt.Sprintf("agent %d bound to server-b", i), func() bool {
			s := ra.a.Status()
			return s.RebindsAccepted == 1 && s.Server == "server-b:1002" && s.Connected
		})
	}
	r.eventually("server-a's link closed", func() bool { return pool.Links() == 1 })
	dialsMu.Lock()
	defer dialsMu.Unlock()
	if dials["server-b:1002"] != 1 {
		t.Fatalf("dials %v", dials)
	}
}

func TestAWatchEventDuringTheAgentsOwnRewriteIsCaughtUpAfterIt(t *testing.T) {
	r := newRRig(t)
	ra := r.start(rebindFile, nil, nil)
	// An edit lands while the agent's own rewrite is under way: Run defers
	// the watch event, and the kick at the rewrite's end reads the file.
	ra.a.rb.writing.Store(true)
	writeFile(t, ra.path, "server-c", 1003, idB, 3)
	// Three sends into a buffer of one: the third is taken only once Run
	// has handled the first.
	for i := 0; i < 3; i++ {
		ra.changes <- struct{}{}
	}
	if s := ra.a.Status(); s.Server != "server-a:1001" {
		t.Fatalf("followed the edit during the rewrite: %+v", s)
	}
	ra.a.rb.writing.Store(false)
	ra.a.kickRun()
	r.eventually("followed the edit after the rewrite", func() bool { return ra.a.Status().Server == "server-c:1003" })
}

func TestARepeatOfARebindBeingAppliedIsNotQueuedAgain(t *testing.T) {
	r := newRRig(t)
	ra := r.start(rebindFile+"failover_servers: \"server-b:1002\"\n", nil, nil)
	r.eventually("standby link at server-b", func() bool { return ra.standbyUp("server-b:1002") })
	before := ra.read(t)
	// The worker is applying idB@2 (its compare-and-swap under way): the
	// new primary's repeat is dropped at once, not queued behind it.
	tok := failoverid.Token{ID: idB, Epoch: 2}
	ra.a.rb.qmu.Lock()
	ra.a.rb.applying = tok
	ra.a.rb.qmu.Unlock()
	r.rebind("server-b:1002", rb{id: idB, epoch: 2, seq: 5, adv: "server-b:1002"})
	r.eventually("repeat dropped", func() bool {
		s := ra.a.Status()
		return s.RebindsRejected == 1 && strings.Contains(s.LastRebindRejection, "already being applied")
	})
	if got := ra.read(t); got != before || !ra.a.workerIdle() {
		t.Fatalf("the repeat was applied or queued:\n%s", got)
	}
	// A higher token is not covered by it.
	r.rebind("server-b:1002", rb{id: idB, epoch: 3, seq: 6, adv: "server-b:1002"})
	r.eventually("the higher rebind applied", func() bool { return ra.a.Status().RebindsAccepted == 1 })
}

func TestAFleetDropsRepeatsOfARebindItsAgentsObeyAndCountsThem(t *testing.T) {
	r := newRRig(t)
	pool := NewPool(func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
		return r.hubs.of(target(addr)).Client("fleet"), nil
	}, 0)
	ra := r.start(rebindFile+"failover_servers: \"server-b:1002\"\n", nil, pool.Dial)
	r.eventually("standby link at server-b", func() bool { return ra.standbyUp("server-b:1002") })
	r.rebind("server-b:1002", rb{id: idB, epoch: 2, seq: 1, adv: "server-b:1002"})
	r.eventually("bound to server-b", func() bool {
		s := ra.a.Status()
		return s.RebindsAccepted == 1 && s.Server == "server-b:1002" && s.Connected
	})
	// The new primary repeats itself, then pings: the ping is accepted,
	// and the repeat before it never reached the agent.
	r.rebind("server-b:1002", rb{id: idB, epoch: 2, seq: 2, adv: "server-b:1002"})
	acc := ra.a.Status().Accepted
	r.ping("server-b:1002", idB, 2, 3, nil)
	r.eventually("ping accepted", func() bool { return ra.a.Status().Accepted == acc+1 })
	// It is still counted, as the agent would have.
	if s := ra.a.Status(); s.RebindsRejected != 1 || s.LastRebindRejection != notNewer {
		t.Fatalf("the repeat: %d rejected (%s)", s.RebindsRejected, s.LastRebindRejection)
	}
	// A higher token still does.
	r.rebind("server-b:1002", rb{id: idB, epoch: 3, seq: 4, adv: "server-b:1002"})
	r.eventually("the higher rebind applied", func() bool { return ra.a.Status().RebindsAccepted == 2 })
}

// In a fleet an agent's commands are checked and counted where the pool
// fans them out; Run is told only of an accepted command whose token or
// failover-servers are new on the connection, and learns the servers from
// it. For a quarter of the agent's period after an accepted ping, the same
// server's repeats are passed over (not counted); anything new, forged or
// replayed is decided as ever.
// A lone agent (no PingGap) checks and counts every ping, repeats too.
func TestALoneAgentChecksEveryPing(t *testing.T) {
	r := newRRig(t)
	ra := r.start(rebindFile, nil, nil)
	want := ra.a.wantsCommand(context.Background(), "server-a:1001", 7)
	list := "server-b:1002"
	before := ra.a.Status().Accepted
	for seq := uint64(30); seq < 35; seq++ {
		want(r.pingMsg(idA, 1, seq, &list))
	}
	if got := ra.a.Status().Accepted - before; got != 5 {
		t.Fatalf("%d of 5 pings accepted", got)
	}
}

func TestAPooledAgentChecksItsCommandsWhereTheyArriveAndTellsRunOnlyWhatIsNew(t *testing.T) {
	r := newRRig(t)
	r.pingGap = FleetPingGap(100 * time.Millisecond) // a fleet's agent
	pool := NewPool(func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
		return r.hubs.of(target(addr)).Client("fleet"), nil
	}, 0)
	ra := r.start(rebindFile, nil, pool.Dial)
	want := ra.a.wantsCommand(context.Background(), "server-a:1001", 99)
	gap := r.pingGap
	list1, list2 := "server-b:1002", "server-c:1003"
	forged := r.pingMsg(idA, 1, 16, &list2)
	forged.Headers = maps.Clone(forged.Headers)
	forged.Headers[protocol.HSeq] = "17" // the signature no longer covers it
	before := ra.a.Status()
	for i, step := range []struct {
		m       broker.Message
		notice  bool
		counted string // "accepted", "rejected" or "" (passed over)
		after   time.Duration
	}{
		{r.pingMsg(idA, 1, 10, &list1), true, "accepted", 0},    // the first accepted command
		{r.pingMsg(idA, 1, 11, &list1), false, "", 0},           // a repeat within the gap: passed over
		{r.pingMsg(idA, 1, 12, &list2), true, "accepted", 0},    // new servers
		{r.pingMsg(idB, 2, 13, &list2), false, "rejected", 0},   // not the file's token: rejected
		{r.pingMsg(idA, 1, 12, &list2), false, "rejected", 0},   // replayed seq: rejected
		{forged, false, "", 0},                                  // forged: dropped, as ever (never counted)
		{r.pingMsg(idA, 1, 14, &list2), false, "", gap - 1},     // a repeat, still within the gap
		{r.pingMsg(idA, 1, 15, &list2), false, "accepted", gap}, // the gap has passed: checked again
	} {
		r.clk.Advance(step.after)
		s0 := ra.a.Status()
		if got := want(step.m); got != step.notice {
			t.Fatalf("step %d: passed on to Run %v, want %v", i, got, step.notice)
		}
		s1 := ra.a.Status()
		got := ""
		switch {
		case s1.Accepted == s0.Accepted+1 && s1.Rejected == s0.Rejected:
			got = "accepted"
		case s1.Rejected == s0.Rejected+1 && s1.Accepted == s0.Accepted:
			got = "rejected"
		case s1.Accepted != s0.Accepted || s1.Rejected != s0.Rejected:
			got = "counted twice"
		}
		if got != step.counted {
			t.Fatalf("step %d: %q, want %q", i, got, step.counted)
		}
	}
	s := ra.a.Status()
	if s.Accepted != before.Accepted+3 || s.Rejected != before.Rejected+2 {
		t.Fatalf("accepted %d rejected %d, want %d and %d", s.Accepted, s.Rejected, before.Accepted+3, before.Rejected+2)
	}
	if n := ra.a.pingServers.Load(); n == nil || n.conn != 99 || n.servers != list2 {
		t.Fatalf("the servers kept for Run's tick: %+v", n)
	}
	// Through the pool: the ping's servers reach the file and the standby
	// links, and each ping a gap apart is counted once.
	acc := s.Accepted
	for k, seq := 1, uint64(20); seq < 25; k, seq = k+1, seq+1 {
		r.clk.Advance(gap)
		r.ping("server-a:1001", idA, 1, seq, &list1)
		r.eventually(fmt.Sprintf("ping %d counted", seq), func() bool { return ra.a.Status().Accepted == acc+uint64(k) })
	}
	r.ticking("failover_servers written", func() bool { return ra.read(t) == rebindFile+"failover_servers: \"server-b:1002\"\n" })
	r.eventually("standby link at server-b", func() bool { return ra.standbyUp("server-b:1002") })
	r.eventually("every ping a gap apart counted", func() bool { return ra.a.Status().Accepted == acc+5 })
}

// A ping is superseded only by a later ping of the same server, signed
// with the group's key: never by a forged or unsigned one, another
// server's, an older one, or a rebind; and a rebind never is.
func TestPingSupersedesOnlyALaterVerifiedPingOfTheSameServer(t *testing.T) {
	r := newRRig(t)
	sup := PingSupersedes(r.keys.agent, dest.AgentCommand)
	older := r.pingMsg(idA, 1, 10, nil)
	forged := r.pingMsg(idA, 1, 11, nil)
	forged.Headers = maps.Clone(forged.Headers)
	forged.Headers[protocol.HSeq] = "12" // the signature no longer covers it
	other := newKeys(t)
	h := protocol.Envelope{FailoverID: idA, Epoch: 1, Node: "opsc-a", Seq: 13, Role: "primary"}.Headers()
	body := []byte(`{"command":"ping"}`)
	other.server.Sign(dest.AgentCommand, h, body)
	stranger := broker.Message{Destination: dest.AgentCommand, Headers: h, Body: body, Memo: &broker.Memo{}}
	otherNode := r.pingMsg(idA, 1, 14, nil)
	otherNode.Headers = maps.Clone(otherNode.Headers)
	otherNode.Headers[protocol.HNode] = "opsc-c"
	r.keys.server.Sign(dest.AgentCommand, otherNode.Headers, otherNode.Body)
	rebind := r.pingMsg(idA, 1, 15, nil)
	rebind.Headers = maps.Clone(rebind.Headers)
	rebind.Headers[hCommand] = cmdRebind
	r.keys.server.Sign(dest.AgentCommand, rebind.Headers, rebind.Body)
	for _, c := range []struct {
		name         string
		older, newer broker.Message
		want         bool
	}{
		{"a later ping", older, r.pingMsg(idA, 1, 11, nil), true},
		{"an older ping", older, r.pingMsg(idA, 1, 9, nil), false},
		{"the same seq", older, r.pingMsg(idA, 1, 10, nil), false},
		{"another token", older, r.pingMsg(idB, 2, 11, nil), false},
		{"another server", older, otherNode, false},
		{"a forged ping", older, forged, false},
		{"a stranger's key", older, stranger, false},
		{"a rebind after it", older, rebind, false},
		{"a rebind before a ping", rebind, r.pingMsg(idA, 1, 16, nil), false},
	} {
		if got := sup(c.older, c.newer); got != c.want {
			t.Errorf("%s: supersedes %v, want %v", c.name, got, c.want)
		}
	}
}

// An agent that knows no other server (no failover_servers, so no standby
// link) gets the new primary's rebind on its bound link, where the new
// primary also sends it (the old primary's broker), and follows it.
func TestARebindOnTheBoundLinkMovesAnAgentThatKnowsNoOtherServer(t *testing.T) {
	r := newRRig(t)
	ra := r.start(rebindFile, nil, nil)
	r.eventually("bound to server-a", func() bool { s := ra.a.Status(); return s.Server == "server-a:1001" && s.Connected })
	if n := len(ra.a.Status().Standby); n != 0 {
		t.Fatalf("%d standby links without failover_servers", n)
	}
	r.rebind("server-a:1001", rb{id: idB, epoch: 2, seq: 1, adv: "server-b:1002"})
	r.eventually("bound to server-b", func() bool {
		s := ra.a.Status()
		return s.Server == "server-b:1002" && s.Connected && s.Bound.Epoch == 2 && s.RebindsAccepted == 1
	})
	if got := ra.read(t); !strings.Contains(got, "stomp_interface: server-b # primary\nstomp_port: 1002\n") || !strings.Contains(got, "failover_epoch: 2\n") {
		t.Fatalf("file:\n%s", got)
	}
}
