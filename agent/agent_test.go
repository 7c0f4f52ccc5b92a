package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/clock"
	"github.com/tandem-ha/tandem/protocol"
)

const (
	idA = "aaaaaaaa-0000-4000-8000-000000000000"
	idB = "bbbbbbbb-0000-4000-8000-000000000000"
)

var dest = protocol.NewDestinations("")

type rig struct {
	t       *testing.T
	hub     *broker.MemHub
	clk     *clock.Fake
	path    string
	a       *Agent
	changes chan struct{}
	mu      sync.Mutex
	dialed  []string
	events  []Event
}

func writeFile(t testing.TB, path, iface string, port int, id string, epoch uint64) {
	t.Helper()
	body := fmt.Sprintf("# agent\nstomp_interface: %s\nstomp_port: %d\nfailover_id: %s\nfailover_epoch: %d\n", iface, port, id, epoch)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newRig(t *testing.T) *rig {
	r := &rig{t: t, hub: broker.NewMemHub(), clk: clock.NewFake(time.Unix(1_700_000_000, 0)),
		path: filepath.Join(t.TempDir(), "address.yaml"), changes: make(chan struct{}, 1)}
	writeFile(t, r.path, "server-a", 1001, idA, 1)
	log, _ := test.NewNullLogger()
	r.a = New(Config{
		Path: r.path, ID: "agent-1", Period: 100 * time.Millisecond, Dest: dest, Signer: protocol.NewSigner(nil),
		Clock: r.clk, Log: log,
		Dial: func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
			name := fmt.Sprintf("%s:%d", addr.StompInterface, addr.StompPort)
			r.mu.Lock()
			r.dialed = append(r.dialed, name)
			r.mu.Unlock()
			return r.hub.Client(name), nil
		},
		Watch: func(ctx context.Context, path string, d time.Duration) (<-chan struct{}, error) {
			return r.changes, nil
		},
		OnEvent: func(e Event) {
			r.mu.Lock()
			r.events = append(r.events, e)
			r.mu.Unlock()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.a.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	r.eventually("connected to server-a", func() bool { return r.a.Status().Connected && r.lastDial() == "server-a:1001" })
	return r
}

func (r *rig) lastDial() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.dialed) == 0 {
		return ""
	}
	return r.dialed[len(r.dialed)-1]
}

func (r *rig) eventually(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// command publishes a command as server (endpoint name) with a token.
func (r *rig) command(server, id string, epoch, seq uint64) {
	h := protocol.Envelope{FailoverID: id, Epoch: epoch, Node: server, Seq: seq}.Headers()
	if err := r.hub.Client(server).Publish(context.Background(), dest.AgentCommand, h, []byte(`{"command":"ping"}`)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) decided(n int) []Event {
	r.t.Helper()
	r.eventually(fmt.Sprintf("%d command decisions", n), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.events) >= n
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

func TestAcceptsOnlyTheBoundServerAndEpoch(t *testing.T) {
	r := newRig(t)
	r.command("server-a:1001", idA, 1, 1) // bound: accepted
	r.command("server-a:1001", idA, 2, 2) // right id, wrong epoch
	r.command("server-a:1001", idB, 1, 3) // wrong id
	ev := r.decided(3)
	if !ev[0].Accepted || ev[1].Accepted || ev[2].Accepted {
		t.Fatalf("decisions: %+v", ev)
	}
	s := r.a.Status()
	if s.Accepted != 1 || s.Rejected != 2 || s.Bound.Accepted != 1 || len(s.Commands) != 3 {
		t.Fatalf("status: %+v", s)
	}
}

func TestARewrittenFileRejectsTheOldServerEvenBeforeTheWatcherFires(t *testing.T) {
	r := newRig(t)
	// The backup took over: the file now names server-b at epoch 2. The
	// watcher has not fired yet (nothing is sent on r.changes) and the old
	// primary keeps sending on the connection the agent still holds.
	time.Sleep(10 * time.Millisecond) // a distinct mtime on coarse file systems
	writeFile(t, r.path, "server-b", 1002, idB, 2)
	r.command("server-a:1001", idA, 1, 7)
	ev := r.decided(1)
	if ev[0].Accepted || ev[0].Bound.Epoch != 2 || ev[0].Bound.ID != idB {
		t.Fatalf("I1: an agent whose file names epoch 2 accepted epoch 1: %+v", ev[0])
	}
}

func TestFollowsTheFileToTheNewServer(t *testing.T) {
	r := newRig(t)
	writeFile(t, r.path, "server-b", 1002, idB, 2)
	r.changes <- struct{}{}
	r.eventually("reconnected to server-b", func() bool { return r.lastDial() == "server-b:1002" && r.a.Status().Connected })
	r.command("server-b:1002", idB, 2, 1)
	if ev := r.decided(1); !ev[0].Accepted {
		t.Fatalf("%+v", ev[0])
	}
	// Status reports go to the new server, tagged with the new token.
	st, _ := r.hub.Client("server-b:1002").Subscribe(dest.AgentStatus)
	r.clk.Advance(100 * time.Millisecond)
	select {
	case m := <-st.C():
		e, err := protocol.Decode(m.Headers)
		if err != nil || e.FailoverID != idB || e.Epoch != 2 || e.Node != "agent-1" {
			t.Fatalf("status envelope %+v %v", e, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no status report at the new server")
	}
}

// The period tick backs the file watch up: a file rewritten with no watch
// event (a lost inotify event, a file system that sends none) is followed
// within a few periods, also right after a command check, whose stat the
// tick does not repeat (recheck).
func TestAFileChangedWithNoWatchEventIsFollowedAtATick(t *testing.T) {
	r := newRig(t)
	r.command("server-a:1001", idA, 1, 1)
	if ev := r.decided(1); !ev[0].Accepted {
		t.Fatalf("%+v", ev[0])
	}
	time.Sleep(10 * time.Millisecond) // a distinct mtime on coarse file systems
	writeFile(t, r.path, "server-b", 1002, idB, 2)
	r.eventually("reconnected to server-b at a tick", func() bool {
		if r.lastDial() == "server-b:1002" {
			return true
		}
		r.clk.Advance(100 * time.Millisecond)
		return false
	})
}

func TestABadFileKeepsTheLastGoodConfiguration(t *testing.T) {
	r := newRig(t)
	if err := os.WriteFile(r.path, []byte("stomp_interface: server-b\nstomp_port: not-a-port\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.changes <- struct{}{}
	r.eventually("file error reported", func() bool { return r.a.Status().FileError != "" })
	r.command("server-a:1001", idA, 1, 1)
	if ev := r.decided(1); !ev[0].Accepted {
		t.Fatalf("the agent should still obey its last good binding: %+v", ev[0])
	}
	if r.lastDial() != "server-a:1001" {
		t.Fatalf("reconnected on a bad file: %s", r.lastDial())
	}
	// The next good version is picked up.
	writeFile(t, r.path, "server-b", 1002, idB, 2)
	r.changes <- struct{}{}
	r.eventually("picked up the good version", func() bool { return r.lastDial() == "server-b:1002" && r.a.Status().FileError == "" })
}

// published waits until n messages were published on the hub (the fake
// clock does not move, so the agent publishes only when told to).
func (r *rig) published(n uint64) {
	r.t.Helper()
	r.eventually(fmt.Sprintf("%d messages published", n), func() bool { return r.hub.Stats().Published >= n })
}

// statusFrom waits for one status report on st (or fails) and returns its
// envelope.
func statusFrom(t *testing.T, st broker.Subscription) protocol.Envelope {
	t.Helper()
	select {
	case m := <-st.C():
		e, err := protocol.Decode(m.Headers)
		if err != nil {
			t.Fatalf("status envelope: %v", err)
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no status report")
	}
	return protocol.Envelope{}
}

func noStatus(t *testing.T, st broker.Subscription, why string) {
	t.Helper()
	select {
	case m := <-st.C():
		t.Fatalf("unexpected status report (%s): %v", why, m.Headers)
	case <-time.After(20 * time.Millisecond):
	}
}

// A takeover's new primary accepts connections before its primary role
// listens to status reports: the report sent on connect is lost. The
// agent reports again as soon as its bound server first speaks to it, not
// a period later (the fake clock never moves here).
func TestReportsWhenItsBoundServerFirstSpeaks(t *testing.T) {
	r := newRig(t)
	// The status report made on connect went to nobody.
	r.published(1)
	st, _ := r.hub.Client("server-a:1001").Subscribe(dest.AgentStatus)
	r.command("server-a:1001", idB, 1, 1) // not its server: no report
	r.decided(1)
	noStatus(t, st, "a rejected command")
	r.command("server-a:1001", idA, 1, 2)
	if e := statusFrom(t, st); e.FailoverID != idA || e.Epoch != 1 || e.Node != "agent-1" {
		t.Fatalf("status envelope %+v", e)
	}
	// Once per connection and binding: the next command does not report.
	r.command("server-a:1001", idA, 1, 3)
	r.decided(3)
	noStatus(t, st, "a second command from the same server")

	// The file moves it to server-b, whose primary role is not listening yet.
	writeFile(t, r.path, "server-b", 1002, idB, 2)
	r.changes <- struct{}{}
	r.eventually("reconnected to server-b", func() bool { return r.lastDial() == "server-b:1002" && r.a.Status().Connected })
	r.published(6) // 2 reports, 3 commands, the report on connect to server-b
	stB, _ := r.hub.Client("server-b:1002").Subscribe(dest.AgentStatus)
	r.command("server-b:1002", idB, 2, 1)
	if e := statusFrom(t, stB); e.FailoverID != idB || e.Epoch != 2 {
		t.Fatalf("status envelope at server-b %+v", e)
	}
}

// A new binding on the same connection (a server that claims the file with
// a higher epoch) is reported when that token is first heard.
func TestReportsANewBindingOnTheSameConnection(t *testing.T) {
	r := newRig(t)
	r.published(1)
	st, _ := r.hub.Client("server-a:1001").Subscribe(dest.AgentStatus)
	r.command("server-a:1001", idA, 1, 1)
	statusFrom(t, st)
	time.Sleep(10 * time.Millisecond) // a distinct mtime on coarse file systems
	writeFile(t, r.path, "server-a", 1001, idA, 2)
	r.command("server-a:1001", idA, 2, 2)
	if e := statusFrom(t, st); e.Epoch != 2 {
		t.Fatalf("status envelope %+v", e)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.dialed) != 1 {
		t.Fatalf("reconnected for a new epoch at the same server: %v", r.dialed)
	}
}

// A recorded command of the bound server, sent again, is rejected: a
// command is accepted only with a sequence number above the last accepted.
func TestAReplayedCommandIsRejected(t *testing.T) {
	r := newRig(t)
	r.command("server-a:1001", idA, 1, 5)
	r.command("server-a:1001", idA, 1, 5) // the same one, replayed
	r.command("server-a:1001", idA, 1, 4) // an older one
	r.command("server-a:1001", idA, 1, 6)
	ev := r.decided(4)
	if !ev[0].Accepted || ev[1].Accepted || ev[2].Accepted || !ev[3].Accepted {
		t.Fatalf("decisions: %+v", ev)
	}
	if s := r.a.Status(); s.Bound.Replayed != 2 || s.Accepted != 2 {
		t.Fatalf("status: %+v", s)
	}
}

func TestEventAppendJSONIsWhatEncodingJSONMakes(t *testing.T) {
	for _, e := range []Event{
		{},
		{Agent: "r001/conf", Accepted: true, From: failoverid.Token{ID: idA, Epoch: 3}, FromNode: "b", Bound: failoverid.Token{ID: idA, Epoch: 3}, Seq: 1796188176429},
		{Agent: "odd \"name\" \\ <&> \n\t\x01 é \u2028 \xff", FromNode: "<script>", From: failoverid.Token{ID: "x\"y", Epoch: 1<<64 - 1}},
	} {
		want, err := json.Marshal(struct {
			T int64 `json:"t_ms"`
			Event
		}{-42, e})
		if err != nil {
			t.Fatal(err)
		}
		if got := e.AppendJSON(nil, -42); string(got) != string(want) {
			t.Errorf("AppendJSON:\n%s\nencoding/json:\n%s", got, want)
		}
	}
}

// A status report's body is byte for byte what encoding/json makes of the
// Status (servers decode it with encoding/json; the protocol documents it).
func TestStatusAppendJSONIsWhatEncodingJSONMakes(t *testing.T) {
	odd := "odd \"name\" \\ <&> \n\t\x01 é \u2028 \xff"
	for i, s := range []Status{
		{},
		{Commands: []Counts{}},
		{ID: "r001/conf", Path: "/var/lib/datastax-agent/conf/address.yaml", Server: "127.0.0.1:61620", Connected: true,
			Bound:    Counts{FailoverID: idA, Epoch: 3, Accepted: 12, Rejected: 1, Replayed: 1},
			Commands: []Counts{{FailoverID: idA, Epoch: 3, Accepted: 12, Rejected: 1, Replayed: 1}, {FailoverID: idB, Epoch: 2, Rejected: 7}},
			Accepted: 12, Rejected: 8, RebindsAccepted: 2, RebindsRejected: 40,
			Standby: []StandbyStatus{{Server: "b:61620", Connected: true}, {Server: "c:61620"}}},
		{ID: odd, Path: odd, Server: odd, FileError: odd, LastRebindRejection: odd, Bound: Counts{FailoverID: odd, Epoch: 1<<64 - 1},
			Accepted: 1<<64 - 1, Standby: []StandbyStatus{{Server: odd}}},
		{Standby: []StandbyStatus{}},
	} {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.AppendJSON(nil); string(got) != string(want) {
			t.Errorf("case %d: AppendJSON:\n%s\nencoding/json:\n%s", i, got, want)
		}
	}
}

func BenchmarkStatusJSON(b *testing.B) {
	s := Status{ID: "r001/conf", Path: "/var/lib/datastax-agent/conf/address.yaml", Server: "127.0.0.1:61620", Connected: true,
		Bound:    Counts{FailoverID: idA, Epoch: 3, Accepted: 12},
		Commands: []Counts{{FailoverID: idA, Epoch: 3, Accepted: 12}, {FailoverID: idB, Epoch: 2, Rejected: 7}},
		Accepted: 12, Rejected: 7, RebindsAccepted: 2, Standby: []StandbyStatus{{Server: "b:61620", Connected: true}}}
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			_ = s.AppendJSON(make([]byte, 0, 1024))
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			_, _ = json.Marshal(s)
		}
	})
}
