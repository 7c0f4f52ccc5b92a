package node

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/protocol"
)

// keyFile writes a new group signing key and returns its path.
func keyFile(t *testing.T) string {
	t.Helper()
	_, priv, err := protocol.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := protocol.EncodePrivateKey(priv)
	p := filepath.Join(t.TempDir(), "signing.key")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitWarning polls node i's status until a warning contains want.
func (c *cluster) waitWarning(i int, want string) Status {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := c.nodes[i].n.Status()
		for _, w := range s.Warnings {
			if strings.Contains(w, want) {
				return s
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: no warning containing %q (warnings %q)", c.nodes[i].name, want, s.Warnings)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A backup with another group key than its primary receives ~every
// heartbeat, all badly signed: it says so, and never takes the role from
// the healthy primary it cannot verify (it used to, after one window).
func TestABackupThatNeverHeardItsPrimaryDoesNotTakeOver(t *testing.T) {
	keyA, keyB := keyFile(t), keyFile(t)
	c := makeCluster(t, clusterOptions{nodes: 2, agents: 2,
		configure: func(i int, cfg *config.Config) {
			cfg.Insecure = false
			cfg.SigningKey = keyA
			if i == 1 {
				cfg.SigningKey = keyB
			}
		}})
	c.start(0)
	c.waitRole(0, RolePrimary)
	c.start(1)
	s := c.waitWarning(1, "badly signed")
	if !strings.Contains(strings.Join(s.Warnings, "\n"), "never heard a valid heartbeat") {
		t.Fatalf("warnings %q", s.Warnings)
	}
	// Well past the window (100 ms) — the backup's loop has ticked through
	// it many times — it is still a backup and the primary still primary.
	deadline := time.Now().Add(10 * time.Second)
	for c.nodes[1].n.Status().Primary.SilentForMS < 10*c.nodes[1].cfg.Heartbeat.FailWindow.Milliseconds() {
		if time.Now().After(deadline) {
			t.Fatal("the backup's window never ran")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r0, r1 := c.nodes[0].n.Status().Role, c.nodes[1].n.Status().Role; r0 != "primary" || r1 != "backup" {
		t.Fatalf("roles %s, %s: a backup that never heard its primary took over", r0, r1)
	}
	if st := c.disk(1); st.Epoch != 0 || st.Takeover != nil {
		t.Fatalf("the backup claimed an epoch: %+v", st)
	}
}

// Once heard, a silent primary shows a countdown to the takeover.
func TestASilentPrimaryShowsTheCountdown(t *testing.T) {
	c := makeCluster(t, clusterOptions{nodes: 2, agents: 1,
		configure: func(i int, cfg *config.Config) {
			cfg.Heartbeat.Period = 50 * time.Millisecond
			cfg.Heartbeat.FailWindow = 3 * time.Second
		}})
	c.startPair()
	c.stop(0)
	s := c.waitWarning(1, "automatic takeover in")
	if s.Primary == nil || !s.Primary.Heard || s.Primary.TakeoverInMS < 0 || s.Primary.TakeoverInMS > 3000 {
		t.Fatalf("primary view %+v", s.Primary)
	}
}

// A clean stop (SIGTERM) of the primary hands over at once to its backup,
// which takes over without waiting a fail_window; the stopped node comes
// back as the new primary's backup (no rejoin).
func TestACleanStopOfThePrimaryHandsOver(t *testing.T) {
	c := makeCluster(t, clusterOptions{nodes: 2, agents: 3,
		configure: func(i int, cfg *config.Config) {
			cfg.Heartbeat.FailWindow = 30 * time.Second // a failover would take 30 s
		},
		options: func(i int) Options { return Options{StopHandover: 10 * time.Second} }})
	c.startPair()
	deadline := time.Now().Add(10 * time.Second)
	for !c.nodes[0].n.Status().BackupConfigured {
		if time.Now().After(deadline) {
			t.Fatal("the primary never heard its backup")
		}
		time.Sleep(2 * time.Millisecond)
	}
	start := time.Now()
	if err := c.cleanStop(0); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	s := c.waitRole(1, RolePrimary)
	if took := time.Since(start); took > 10*time.Second || s.Epoch != 2 {
		t.Fatalf("handover took %s (epoch %d); want far less than the 30 s window", took, s.Epoch)
	}
	st := c.disk(0)
	loc, isBackup, err := config.ReadPrimaryLocation(c.nodes[0].dir)
	if err != nil || !isBackup || loc != c.advertise(1) || st.Role != "backup" {
		t.Fatalf("the stopped node: primary_location %q (%v, %v), state %+v; want a backup of %s", loc, isBackup, err, st, c.advertise(1))
	}
	if bound, other := c.boundTo(s.FailoverID); bound != 3 || other != 0 {
		t.Fatalf("files bound to the new primary: %d, elsewhere %d", bound, other)
	}
	evs, err := eventlog.Read(filepath.Join(c.nodes[0].dir, "events.jsonl"), 0)
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1]
	if last.Kind != eventlog.KindRole || last.Role != "backup" || last.Reason != "clean-stop" || last.To != "n1" {
		t.Fatalf("the stopped node's last event %+v: want backup, clean-stop, to n1", last)
	}
}

// In maintenance (an upgrade), a clean stop hands nothing over.
func TestACleanStopInMaintenanceDoesNotHandOver(t *testing.T) {
	c := makeCluster(t, clusterOptions{nodes: 2, agents: 1,
		configure: func(i int, cfg *config.Config) { cfg.Heartbeat.FailWindow = 30 * time.Second },
		options:   func(i int) Options { return Options{StopHandover: 10 * time.Second} }})
	c.start(0)
	c.waitRole(0, RolePrimary)
	c.start(1)
	c.waitHeard(1)
	if err := c.nodes[0].n.SetMaintenance(true); err != nil {
		t.Fatal(err)
	}
	if err := c.cleanStop(0); err != nil {
		t.Fatal(err)
	}
	if _, isBackup, _ := config.ReadPrimaryLocation(c.nodes[0].dir); isBackup {
		t.Fatal("the stopped primary handed over although maintenance was on")
	}
	if st := c.disk(1); st.Epoch != 0 || st.Takeover != nil {
		t.Fatalf("the backup took over: %+v", st)
	}
}

// A takeover leaves its story: status says since when and why this node
// holds its role, and the event log (DATA/events.jsonl by default) has
// every role change with its reason and the takeover's phase durations
// (what tandem history prints). Heartbeat lines are left out by default.
func TestATakeoverIsRecordedWithItsReasonAndPhases(t *testing.T) {
	c := makeCluster(t, clusterOptions{nodes: 2, agents: 2})
	c.startPair()
	c.stop(0)
	s := c.waitRole(1, RolePrimary)
	if s.Since == "" || !strings.Contains(s.Why, "took over from n0 at epoch 2 (failover)") || !strings.Contains(s.Why, "no heartbeat") {
		t.Fatalf("since %q why %q", s.Since, s.Why)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := eventlog.Read(filepath.Join(c.nodes[1].dir, "events.jsonl"), 0)
		if err != nil {
			t.Fatal(err)
		}
		var roles []string
		var phases map[string]int64
		for _, e := range evs {
			switch e.Kind {
			case eventlog.KindRole:
				roles = append(roles, e.Role+"/"+e.Reason+"/"+e.From+">"+e.To)
			case eventlog.KindTakeover:
				phases = e.PhasesMS
			case eventlog.KindHeartbeat, eventlog.KindCommand:
				t.Fatalf("a %s line without event_log_messages", e.Kind)
			}
		}
		want := []string{"backup/start/>", "taking-over/failover/n0>n1", "primary/failover/n0>n1"}
		if strings.Join(roles, " ") == strings.Join(want, " ") && phases != nil {
			if _, ok := phases[PhaseFilesRewritten]; !ok {
				t.Fatalf("phases %v", phases)
			}
			if _, ok := phases[PhaseFirstHeartbeat]; !ok {
				t.Fatalf("phases %v", phases)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("role events %q (want %q), phases %v", roles, want, phases)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Configurations that validate but will not do what their owner expects
// are standing warnings: a glob that matches nothing, and an advertise
// address without a port while the broker listens on another one (every
// agent would be told 61620, where nothing listens).
func TestMisconfigurationsThatValidateAreWarnings(t *testing.T) {
	c := makeCluster(t, clusterOptions{nodes: 1, agents: 0,
		configure: func(i int, cfg *config.Config) {
			cfg.Advertise = "127.0.0.1"
			cfg.Listen = "127.0.0.1:5555"
		}})
	c.start(0)
	c.waitRole(0, RolePrimary)
	c.waitWarning(0, "match no file")
	c.waitWarning(0, "has no port")
}

// The primary's roster (every agent it heard, agents on their own hosts
// included) reaches its backup, which keeps it in DATA/roster.json; after
// a takeover the new primary's status counts them (agents.remote) and how
// many already report to it (agents.bound).
func TestTheRosterReachesTheBackupAndSurvivesTheTakeover(t *testing.T) {
	c := makeCluster(t, clusterOptions{nodes: 2, agents: 1})
	c.startPair()
	primaryID := c.nodes[0].n.Status().FailoverID
	agent := c.hub.Client("remote-agent")
	report := func(id string) {
		env := protocol.Envelope{FailoverID: primaryID, Epoch: 1, Node: id, Role: "agent"}
		if err := agent.Publish(context.Background(), protocol.NewDestinations("").AgentStatus, env.Headers(), []byte(`{"path":"/var/lib/datastax-agent/conf/address.yaml"}`)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		report("cassandra-7")
		ro, err := LoadRoster(c.nodes[1].dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(ro.Agents) == 1 && ro.Agents[0].ID == "cassandra-7" && ro.From == primaryID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("roster on the backup: %+v", ro)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.stop(0)
	s := c.waitRole(1, RolePrimary)
	if s.Agents.Remote != 1 || s.Agents.Bound != 0 {
		t.Fatalf("agents after the takeover: %+v; want 1 remote, 0 bound", s.Agents)
	}
}
