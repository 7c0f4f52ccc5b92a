package primary

// Table tests of the pure core: inputs in, outputs checked. No goroutines,
// no clock, no sleeps.

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/protocol"
)

const (
	ownID   = "aaaaaaaa-0000-4000-8000-000000000000"
	lowerID = "00000000-0000-4000-8000-000000000000" // orders below ownID
	upperID = "ffffffff-0000-4000-8000-000000000000" // orders above ownID
	backID  = "bbbbbbbb-0000-4000-8000-000000000000" // orders above ownID too
	period  = 100 * time.Millisecond
)

var t0 = time.Unix(1_700_000_000, 0)

func testCore(files bool) *core {
	return newCore(coreConfig{Node: "a", Token: failoverid.Token{ID: ownID, Epoch: 3}, Advertise: "h:1",
		Period: period, ReplyPeriod: time.Second, HandoverTimeout: 5 * period, CheckEvery: time.Hour,
		Files: files, Ping: true, Instance: "i-own", StartedMS: 2000, SeqBase: 10})
}

// at is t0 plus n periods.
func at(n float64) time.Time { return t0.Add(time.Duration(n * float64(period))) }

// step is one input to the core and what must come out.
type step struct {
	name string
	in   func(c *core) (Output, error)
	// want: "beat", "beat+ping", "beat-ping" (beat without ping), "scan",
	// "fenced", "handed-over", "duplicate", "peer", "error-log", "warn-log",
	// or "quiet" (nothing to publish, no end). Several are comma-separated.
	want string
	err  error
}

func hb(id string, epoch uint64, role string) protocol.Envelope {
	return protocol.Envelope{FailoverID: id, Epoch: epoch, Node: "x", Seq: 1, Role: role, Advertise: "x:1"}
}

func tick(n float64) func(c *core) (Output, error) {
	return func(c *core) (Output, error) { return c.tick(at(n)), nil }
}
func start(n float64, files *scanResult) func(c *core) (Output, error) {
	return func(c *core) (Output, error) { return c.start(at(n), files), nil }
}
func heartbeat(n float64, env protocol.Envelope) func(c *core) (Output, error) {
	return func(c *core) (Output, error) { return c.heartbeat(at(n), env, nil), nil }
}
func reply(n float64, env protocol.Envelope) func(c *core) (Output, error) {
	return func(c *core) (Output, error) { return c.reply(at(n), env, nil), nil }
}
func agent(n float64, id string, epoch uint64) func(c *core) (Output, error) {
	return func(c *core) (Output, error) {
		return c.agentStatus(at(n), protocol.Envelope{FailoverID: id, Epoch: epoch, Node: "agent-1"}, []byte(`{"path":"/a.yaml"}`), true), nil
	}
}

// untrustedAgent reports a token without a valid server signature.
func untrustedAgent(n float64, id string, epoch uint64) func(c *core) (Output, error) {
	return func(c *core) (Output, error) {
		return c.agentStatus(at(n), protocol.Envelope{FailoverID: id, Epoch: epoch, Node: "agent-1"}, []byte(`{"path":"/a.yaml"}`), false), nil
	}
}
func scanned(n float64, gen int, higher *failoverid.Token) func(c *core) (Output, error) {
	return func(c *core) (Output, error) { return c.scanDone(at(n), scanResult{higher: higher, gen: gen}), nil }
}
func switchover(n float64) func(c *core) (Output, error) {
	return func(c *core) (Output, error) { return c.switchover(at(n), "") }
}

func tok(id string, epoch uint64) *failoverid.Token { return &failoverid.Token{ID: id, Epoch: epoch} }

func TestCoreTransitions(t *testing.T) {
	backupReply := reply(0.5, protocol.Envelope{FailoverID: backID, Epoch: 0, Node: "b", Role: "backup", Advertise: "b:1"})
	cases := []struct {
		name  string
		files bool
		steps []step
	}{
		{"fresh start beats at once", false, []step{
			{"start", start(0, nil), "beat+ping", nil},
			{"tick", tick(1), "beat+ping", nil},
		}},
		{"start-up scan above us fences before any heartbeat", true, []step{
			{"start", start(0, &scanResult{higher: tok(backID, 4)}), "fenced", nil},
		}},
		{"start-up scan at our epoch, greater id, fences", true, []step{
			{"start", start(0, &scanResult{higher: tok(upperID, 3)}), "fenced", nil},
		}},
		{"start-up scan error warns and beats", true, []step{
			{"start", start(0, &scanResult{err: errors.New("disk")}), "beat,warn-log", nil},
		}},
		{"heartbeat at a higher epoch fences", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"hb", heartbeat(0.5, hb(lowerID, 4, "primary")), "fenced", nil},
		}},
		{"heartbeat at our epoch with a greater id fences", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"hb", heartbeat(0.5, hb(upperID, 3, "primary")), "fenced", nil},
		}},
		{"heartbeat at our epoch with a smaller id does not fence", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"hb", heartbeat(0.5, hb(lowerID, 3, "primary")), "quiet,error-log", nil},
			{"tick", tick(1), "beat", nil},
		}},
		{"heartbeat at a lower epoch does not fence", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"hb", heartbeat(0.5, hb(upperID, 2, "primary")), "quiet,error-log", nil},
		}},
		{"our own echo is not a higher token, at any epoch", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"echo", heartbeat(0.5, hb(ownID, 3, "primary")), "quiet", nil},
			{"own id, higher epoch, no instance", heartbeat(0.6, hb(ownID, 4, "primary")), "quiet", nil},
			{"reply echo", reply(0.7, hb(ownID, 9, "primary")), "quiet", nil},
		}},
		{"a clone that started earlier stops us", false, []step{
			{"start", start(0, nil), "beat", nil},
			// One message (or a replay of an old one) is not believed...
			{"clone", heartbeat(0.5, protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "a2", Role: "primary", Instance: "i-early", StartedMS: 1000}), "quiet,warn-log", nil},
			{"tick: our heartbeat echoes the clone", tick(1), "beat", nil},
			// ...a live clone answering this process is.
			{"clone answers", heartbeat(1.5, protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "a2", Role: "primary", Instance: "i-early", StartedMS: 1000, Echo: []string{"i-own"}}), "duplicate", nil},
		}},
		{"a clone that started later only warns", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"clone", heartbeat(0.5, protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "a2", Role: "primary", Instance: "i-late", StartedMS: 3000}), "quiet,error-log", nil},
			{"tick", tick(1), "beat", nil},
		}},
		{"a backup's reply at a higher epoch does not fence; its peer is remembered", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"reply", reply(0.5, hb(backID, 7, "backup")), "quiet,peer", nil},
			{"same reply", reply(0.6, hb(backID, 7, "backup")), "quiet", nil},
		}},
		{"a reply as primary above us fences", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"reply", reply(0.5, hb(upperID, 3, "primary")), "fenced", nil},
		}},
		{"an agent bound above us fences; at our token it is recorded", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"own", agent(0.5, ownID, 3), "quiet", nil},
			{"lower id", agent(0.6, lowerID, 3), "quiet", nil},
			{"greater id", agent(0.7, upperID, 3), "fenced", nil},
		}},
		{"an agent bound to a higher epoch fences", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"agent", agent(0.5, backID, 9), "fenced", nil},
		}},
		{"an agent's higher token without a server signature is tampered, not a fence", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"unsigned", untrustedAgent(0.5, backID, 999999), "quiet,warn-log", nil},
			{"tick", tick(1), "beat", nil},
		}},
		{"periodic scans, one at a time", true, []step{
			{"start", start(0, &scanResult{}), "beat", nil},
			{"tick", tick(1), "beat", nil},
			{"due", tick(2), "scan,beat+ping", nil},
			{"tick while scanning", tick(3), "beat", nil},
			{"due while scanning: no second scan", tick(4), "beat", nil},
			{"result below, and the rescan", scanned(4.5, 1, tok(lowerID, 3)), "scan,quiet", nil},
			{"result", scanned(4.6, 2, nil), "quiet", nil},
		}},
		{"waking late holds the heartbeat until a fresh scan looked", true, []step{
			{"start", start(0, &scanResult{}), "beat", nil},
			{"late tick", tick(5), "scan,quiet,warn-log", nil},
			{"clean result", scanned(5.1, 1, nil), "beat", nil},
			{"next tick", tick(6), "beat", nil},
		}},
		{"waking late, the scan finds a higher epoch: fenced without a word", true, []step{
			{"start", start(0, &scanResult{}), "beat", nil},
			{"late tick", tick(5), "scan,quiet", nil},
			{"higher", scanned(5.1, 1, tok(backID, 4)), "fenced", nil},
			{"tick after the end", tick(6), "quiet", nil},
		}},
		{"a slow scan holds the heartbeat one period at most", true, []step{
			{"start", start(0, &scanResult{}), "beat", nil},
			{"late tick", tick(5), "scan,quiet", nil},
			{"within the period", tick(5.5), "quiet", nil},
			{"a period later", tick(6), "beat,warn-log", nil},
			{"the late result still fences", scanned(6.5, 1, tok(upperID, 3)), "fenced", nil},
		}},
		{"a late wake during a scan waits for the next scan", true, []step{
			{"start", start(0, &scanResult{}), "beat", nil},
			{"tick", tick(1), "beat", nil},
			{"due", tick(2), "scan,beat", nil},
			{"late tick", tick(7), "quiet", nil},
			{"old scan: no release, rescan", scanned(7.1, 1, nil), "scan,quiet", nil},
			{"new scan releases", scanned(7.2, 2, nil), "beat", nil},
		}},
		{"switchover without a backup is refused", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"switch", switchover(0.5), "quiet", ErrNoBackup},
		}},
		{"switchover hands over to the backup that replied", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"reply", backupReply, "peer", nil},
			{"switch", switchover(0.6), "beat-ping", nil},
			{"again", switchover(0.7), "quiet", ErrSwitchoverState},
			{"tick: no pings during a handover", tick(1), "beat-ping", nil},
			{"the backup's file, before its heartbeat", scanned(1.5, 1, tok(backID, 4)), "handed-over", nil},
		}},
		{"a higher token from someone else during a handover fences", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"reply", backupReply, "peer", nil},
			{"switch", switchover(0.6), "beat", nil},
			{"other", heartbeat(0.7, hb(upperID, 4, "primary")), "fenced", nil},
		}},
		{"a switchover lapses after the handover timeout", false, []step{
			{"start", start(0, nil), "beat", nil},
			{"reply", backupReply, "peer", nil},
			{"switch", switchover(0.6), "beat-ping", nil},
			{"still pending", tick(5), "beat-ping", nil},
			{"lapsed", tick(6), "beat+ping,warn-log", nil},
			{"the backup's heartbeat now fences", heartbeat(6.5, hb(backID, 4, "primary")), "fenced", nil},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testCore(tc.files)
			c.cfg.CheckEvery = 2 * period
			for _, s := range tc.steps {
				out, err := s.in(c)
				if !errors.Is(err, s.err) {
					t.Fatalf("%s: error %v, want %v", s.name, err, s.err)
				}
				check(t, s.name, s.want, out)
			}
		})
	}
}

func check(t *testing.T, name, want string, out Output) {
	t.Helper()
	has := map[string]bool{}
	for _, w := range strings.Split(want, ",") {
		has[w] = true
	}
	endKind := func(k EndKind) bool { return out.End != nil && out.End.Kind == k }
	switch {
	case has["fenced"] && !endKind(Fenced), has["handed-over"] && !endKind(HandedOver), has["duplicate"] && !endKind(Duplicate):
		t.Fatalf("%s: end %+v, want %s", name, out.End, want)
	case out.End != nil && !has["fenced"] && !has["handed-over"] && !has["duplicate"]:
		t.Fatalf("%s: ended %+v, want %s", name, *out.End, want)
	}
	if out.End != nil && (out.Beat != nil || out.Command != nil || out.Scan != 0 || out.Peer != nil) {
		t.Fatalf("%s: an end that also acts: %+v", name, out)
	}
	beat := has["beat"] || has["beat+ping"] || has["beat-ping"]
	if beat != (out.Beat != nil) || (has["quiet"] && (out.Beat != nil || out.End != nil)) {
		t.Fatalf("%s: heartbeat %v, want %s", name, out.Beat, want)
	}
	if has["beat+ping"] && out.Command == nil || has["beat-ping"] && out.Command != nil {
		t.Fatalf("%s: ping %v, want %s", name, out.Command, want)
	}
	if has["scan"] != (out.Scan > 0) {
		t.Fatalf("%s: scan %d, want %s", name, out.Scan, want)
	}
	if has["peer"] != (out.Peer != nil) {
		t.Fatalf("%s: peer %v, want %s", name, out.Peer, want)
	}
	for _, lv := range []string{"error", "warn"} {
		found := false
		for _, l := range out.Logs {
			found = found || l.Level.String() == lv || (lv == "warn" && l.Level.String() == "warning")
		}
		if has[lv+"-log"] && !found {
			t.Fatalf("%s: no %s log in %+v", name, lv, out.Logs)
		}
	}
}

// Two primaries at one epoch: each hears the other's heartbeat; exactly the
// one with the lower failover id ends, fenced by the other's token.
func TestTwoPrimariesAtOneEpochEndWithTheLowerIDFenced(t *testing.T) {
	mk := func(id string) *core {
		return newCore(coreConfig{Node: id[:1], Token: failoverid.Token{ID: id, Epoch: 5}, Period: period,
			ReplyPeriod: time.Second, HandoverTimeout: 5 * period, CheckEvery: time.Hour})
	}
	low, up := mk(lowerID), mk(upperID)
	lowBeat, upBeat := *low.start(t0, nil).Beat, *up.start(t0, nil).Beat
	lowOut, upOut := low.heartbeat(at(0.5), upBeat, nil), up.heartbeat(at(0.5), lowBeat, nil)
	if lowOut.End == nil || lowOut.End.Kind != Fenced || lowOut.End.By != (failoverid.Token{ID: upperID, Epoch: 5}) {
		t.Fatalf("the lower id was not fenced by the upper: %+v", lowOut.End)
	}
	if upOut.End != nil {
		t.Fatalf("the upper id ended too: %+v", upOut.End)
	}
	if o := up.tick(at(1)); o.Beat == nil {
		t.Fatal("the surviving primary stopped heartbeating")
	}
	if o := low.tick(at(1)); o.Beat != nil || o.End != nil {
		t.Fatalf("the fenced primary still acts: %+v", o)
	}
}

func TestHigherIsATotalOrder(t *testing.T) {
	own := failoverid.Token{ID: ownID, Epoch: 3}
	for _, tc := range []struct {
		other failoverid.Token
		want  bool
	}{
		{failoverid.Token{ID: lowerID, Epoch: 4}, true},
		{failoverid.Token{ID: upperID, Epoch: 3}, true},
		{failoverid.Token{ID: lowerID, Epoch: 3}, false},
		{own, false},
		{failoverid.Token{ID: upperID, Epoch: 2}, false},
	} {
		if got := higher(tc.other, own); got != tc.want {
			t.Errorf("higher(%v, %v) = %v, want %v", tc.other, own, got, tc.want)
		}
		if tc.other != own && higher(tc.other, own) == higher(own, tc.other) {
			t.Errorf("%v and %v are not ordered", tc.other, own)
		}
	}
}

func TestCoreStatusAndRegistry(t *testing.T) {
	c := testCore(false)
	c.start(t0, nil)
	var s Status
	c.status(at(1), &s)
	if s.Epoch != 3 || s.LastReplyAgeMS != -1 || s.Backup != nil || s.BackupConfigured {
		t.Fatalf("fresh status %+v", s)
	}
	c.reply(at(1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1"}, nil)
	c.agentStatus(at(1), protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "agent-1"}, []byte(`{"path":"/a.yaml","accepted":4}`), true)
	s = Status{}
	c.status(at(3), &s)
	if !s.BackupConfigured || s.Backup == nil || s.Backup.Address != "b:1" || s.LastReplyAgeMS != 200 {
		t.Fatalf("status after a reply %+v", s)
	}
	a := c.agentViews(at(3))
	if len(a) != 1 || a[0].Path != "/a.yaml" || a[0].Accepted != 4 || !a[0].Connected {
		t.Fatalf("registry %+v", a)
	}
	if a := c.agentViews(at(1).Add(3*time.Second + time.Millisecond)); a[0].Connected {
		t.Fatal("an agent silent past the connected window counts as connected")
	}
	// No reply for 2 × reply_period: the warning.
	c.tick(at(25))
	s = Status{}
	c.status(at(25), &s)
	if s.BackupConfigured || len(s.Warnings) != 1 {
		t.Fatalf("want a warning %+v", s)
	}
}

// Heartbeats echo the latest nonce of each backup (the backup counts only
// heartbeats sent after its own reply: a replayed stream echoes nothing it
// issued), bounded in number.
func TestHeartbeatsEchoTheBackupsNonces(t *testing.T) {
	c := testCore(false)
	c.start(at(0), nil)
	c.reply(at(0.1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1", Nonce: "n1"}, nil)
	out := c.tick(at(1))
	if out.Beat == nil || !out.Beat.Echoes("n1") {
		t.Fatalf("beat %+v does not echo the backup's nonce", out.Beat)
	}
	c.reply(at(1.1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1", Nonce: "n2"}, nil)
	out = c.tick(at(2))
	if !out.Beat.Echoes("n2") || out.Beat.Echoes("n1") {
		t.Fatalf("echo %v: want only the backup's latest nonce", out.Beat.Echo)
	}
	for i := 0; i < 50; i++ {
		c.reply(at(2.1), protocol.Envelope{FailoverID: fmt.Sprintf("cccccccc-0000-4000-8000-%012d", i), Node: "x", Role: "backup", Nonce: fmt.Sprintf("m%d", i)}, nil)
	}
	out = c.tick(at(3))
	if len(out.Beat.Echo) > maxEchoes || len(strings.Join(out.Beat.Echo, ",")) > 256 {
		t.Fatalf("echo unbounded: %d values", len(out.Beat.Echo))
	}
}

func TestTheRegistryBoundsWhatAnAgentSays(t *testing.T) {
	c := testCore(false)
	c.start(at(0), nil)
	body := []byte(`{"path":"/a.yaml","file_error":"` + strings.Repeat("x", 1<<20) + `"}`)
	c.agentStatus(at(0.1), protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "agent-1"}, body, true)
	v := c.agentViews(at(0.2))
	if len(v) != 1 || len(v[0].FileError) > maxFileError+8 {
		t.Fatalf("file_error kept at %d bytes", len(v[0].FileError))
	}
}

// A backup's clean stop says so: the primary knows at once that nobody
// watches it (instead of after 2 × reply_period).
func TestABackupsCleanStopIsKnownAtOnce(t *testing.T) {
	c := testCore(false)
	c.start(at(0), nil)
	c.reply(at(0.1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1", Nonce: "n1"}, nil)
	var s Status
	c.status(at(0.2), &s)
	if !s.BackupConfigured {
		t.Fatal("backup not configured after its reply")
	}
	c.reply(at(0.3), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1", Stopping: true}, nil)
	s = Status{}
	c.status(at(0.4), &s)
	if s.BackupConfigured || len(s.Warnings) == 0 || !strings.Contains(s.Warnings[0], "clean stop") {
		t.Fatalf("after the backup's stop: %+v", s)
	}
	if _, err := c.switchover(at(0.5), ""); err == nil {
		t.Fatal("a switchover to a stopped backup was accepted")
	}
	// It comes back.
	c.reply(at(1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1", Nonce: "n2"}, nil)
	s = Status{}
	c.status(at(1.1), &s)
	if !s.BackupConfigured || len(s.Warnings) != 0 {
		t.Fatalf("after the backup came back: %+v", s)
	}
}

// A primary rebinds agents on their own hosts: with every ping for the
// first RebindPeriods periods, and then in the period after an agent
// behind it (no token, or a lower one) reported; pings name the backup as
// the agents' failover server.
func TestRebindsGoOutAtTheStartAndForAgentsBehind(t *testing.T) {
	c := newCore(coreConfig{Node: "a", Token: failoverid.Token{ID: ownID, Epoch: 3}, Advertise: "10.0.0.1:61620",
		Period: period, ReplyPeriod: time.Second, HandoverTimeout: 5 * period, CheckEvery: time.Hour,
		Ping: true, Instance: "i-own", StartedMS: 2000, SeqBase: 10, RebindPeriods: 2})
	out := c.start(at(0), nil)
	if out.Rebind == nil || out.Rebind.Command != protocol.CommandRebind || out.Rebind.Advertise != "10.0.0.1:61620" || out.Rebind.Epoch != 3 {
		t.Fatalf("start: rebind %+v", out.Rebind)
	}
	if out = c.tick(at(1)); out.Rebind == nil {
		t.Fatal("second period: no rebind")
	}
	if out = c.tick(at(2)); out.Rebind != nil {
		t.Fatal("a rebind after RebindPeriods with nobody behind")
	}
	// An agent at our token: no rebind. One behind: a rebind next period.
	c.agentStatus(at(2.1), protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "ag-1"}, nil, true)
	if out = c.tick(at(3)); out.Rebind != nil {
		t.Fatal("rebind for an agent bound to us")
	}
	c.agentStatus(at(3.1), protocol.Envelope{FailoverID: "none", Epoch: 0, Node: "ag-new"}, nil, true)
	if out = c.tick(at(4)); out.Rebind == nil {
		t.Fatal("no rebind for a new agent")
	}
	c.agentStatus(at(4.1), protocol.Envelope{FailoverID: backID, Epoch: 2, Node: "ag-old"}, nil, true)
	if out = c.tick(at(5)); out.Rebind == nil {
		t.Fatal("no rebind for an agent at a lower token")
	}
	// The backup is the agents' failover server.
	c.reply(at(5.1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "10.0.0.2:61620", Nonce: "n"}, nil)
	if out = c.tick(at(6)); out.Command == nil || strings.Join(out.Command.FailoverServers, ",") != "10.0.0.2:61620" {
		t.Fatalf("ping %+v: want failover-servers naming the backup", out.Command)
	}
}

// An agent that just bound to this primary (it reports on connect) is
// pinged at once, not at the next period — bounded to one ping per c.pingGap()
// however many agents connect; each ping has a new seq.
func TestAnAgentThatJustBoundIsPingedAtOnce(t *testing.T) {
	c := testCore(false)
	c.start(at(0), nil)
	now := at(0.1)
	out := c.agentStatus(now, protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "ag-1"}, nil, true)
	if out.Command == nil || out.Command.Seq <= 10 {
		t.Fatalf("no ping for a newly bound agent: %+v", out.Command)
	}
	first := out.Command.Seq
	if out = c.agentStatus(now.Add(time.Millisecond), protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "ag-2"}, nil, true); out.Command != nil {
		t.Fatal("a second ping within c.pingGap()")
	}
	out = c.agentStatus(now.Add(c.pingGap()+time.Millisecond), protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "ag-3"}, nil, true)
	if out.Command == nil || out.Command.Seq <= first {
		t.Fatalf("ping after c.pingGap(): %+v", out.Command)
	}
	// An agent already known at our token: no extra ping.
	if out = c.agentStatus(now.Add(10*c.pingGap()), protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: "ag-1"}, nil, true); out.Command != nil {
		t.Fatal("a ping for an agent already bound")
	}
}

// The early pings' gap grows with the agents reporting here: each ping is
// delivered to, and checked by, every one of them, so a takeover of 10,000
// agents must not send ten pings a period to all of them while they bind.
func TestEarlyPingsSlowDownAsTheFleetGrows(t *testing.T) {
	c := testCore(false)
	c.start(at(0), nil)
	period := c.cfg.Period
	if got := c.pingGap(); got != max(period/10, 2*time.Millisecond) {
		t.Fatalf("gap with no agents %s, want a tenth of the period %s", got, period)
	}
	now := at(0.1)
	report := func(i int) Output {
		return c.agentStatus(now, protocol.Envelope{FailoverID: ownID, Epoch: 3, Node: fmt.Sprintf("ag-%d", i)}, nil, true)
	}
	for i := 0; i < earlyPingDeliveries/2; i++ {
		report(i)
	}
	if got := c.pingGap(); got != period/2 {
		t.Fatalf("gap with %d agents %s, want half the period", len(c.agents), got)
	}
	last := c.lastPing
	now = last.Add(period/2 - time.Millisecond)
	if out := report(-1); out.Command != nil {
		t.Fatalf("an early ping %s after the last one with %d agents", now.Sub(last), len(c.agents)-1)
	}
	now = last.Add(period/2 + time.Millisecond)
	if out := report(-2); out.Command == nil {
		t.Fatal("no early ping once the gap passed")
	}
	for i := earlyPingDeliveries / 2; i < 2*earlyPingDeliveries; i++ {
		report(i)
	}
	if got, want := c.pingGap(), time.Duration(int64(period)*int64(len(c.agents))/earlyPingDeliveries); got != want || got <= period {
		t.Fatalf("gap with %d agents %s, want %s: more than a period (the periodic ping comes first)", len(c.agents), got, want)
	}
}

// A replay of a backup's older replies does not replace the nonce our
// heartbeats echo (the live backup would not count them: a stranger
// replaying replies would cause a failover).
func TestReplayedRepliesDoNotReplaceTheEchoedNonce(t *testing.T) {
	c := testCore(false)
	c.start(at(0), nil)
	reply := func(seq uint64, nonce string) {
		c.reply(at(0.1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1",
			Instance: "b-1", StartedMS: 500, Seq: seq, Nonce: nonce}, nil)
	}
	reply(1000, "old1")
	reply(2000, "old2")
	reply(3000, "live")
	// A stranger replays the recorded older ones, again and again.
	for i := 0; i < 5; i++ {
		reply(1000, "old1")
		reply(2000, "old2")
	}
	out := c.tick(at(1))
	if !out.Beat.Echoes("live") || out.Beat.Echoes("old1") || out.Beat.Echoes("old2") {
		t.Fatalf("echo %v after replays: want only the live nonce", out.Beat.Echo)
	}
	// A restarted backup (a newer process) is taken at once.
	c.reply(at(1.1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1",
		Instance: "b-2", StartedMS: 900, Seq: 1, Nonce: "restarted"}, nil)
	if out = c.tick(at(2)); !out.Beat.Echoes("restarted") {
		t.Fatalf("echo %v: want the restarted backup's nonce", out.Beat.Echo)
	}
	// Two live processes of one failover id (a clone not stopped yet): each
	// keeps its own nonce echoed; neither displaces the other.
	c.reply(at(2.1), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1",
		Instance: "b-3", StartedMS: 950, Seq: 1, Nonce: "clone"}, nil)
	c.reply(at(2.2), protocol.Envelope{FailoverID: backID, Node: "b", Role: "backup", Advertise: "b:1",
		Instance: "b-2", StartedMS: 900, Seq: 2, Nonce: "restarted2"}, nil)
	if out = c.tick(at(2.5)); !out.Beat.Echoes("restarted2") || !out.Beat.Echoes("clone") {
		t.Fatalf("echo %v: want both live processes' nonces", out.Beat.Echo)
	}
	// And a replay of the old process's recorded replies changes nothing.
	reply(2000, "old-process")
	if out = c.tick(at(3)); !out.Beat.Echoes("restarted2") || out.Beat.Echoes("old-process") {
		t.Fatalf("echo %v: an old process's reply was taken", out.Beat.Echo)
	}
}

// A tampered file is reported every period by its agent: the primary warns
// once per agent and token, then logs it at debug; another token warns again.
func TestATamperedReportWarnsOncePerAgentAndToken(t *testing.T) {
	c := testCore(false)
	c.start(at(0), nil)
	levels := func(out Output) []logrus.Level {
		var l []logrus.Level
		for _, x := range out.Logs {
			l = append(l, x.Level)
		}
		return l
	}
	report := func(n float64, epoch uint64) []logrus.Level {
		out, _ := untrustedAgent(n, backID, epoch)(c)
		return levels(out)
	}
	if l := report(0.1, 1000); len(l) != 1 || l[0] != logrus.WarnLevel {
		t.Fatalf("first report: %v, want one warning", l)
	}
	for i := 0; i < 3; i++ {
		if l := report(0.2+float64(i)/10, 1000); len(l) != 1 || l[0] != logrus.DebugLevel {
			t.Fatalf("repeat %d: %v, want debug", i, l)
		}
	}
	if l := report(0.9, 5000); len(l) != 1 || l[0] != logrus.WarnLevel {
		t.Fatalf("another token: %v, want a warning", l)
	}
	if c.tampered != 5 {
		t.Fatalf("tampered %d, want every report counted", c.tampered)
	}
}
