package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/node"
)

func TestMain(m *testing.M) {
	// rejoin's connect to --primary: the tests name unreachable hosts.
	primaryProbeTimeout = 300 * time.Millisecond
	os.Exit(m.Run())
}

func stateAt(epoch uint64, role string) failoverid.State {
	return failoverid.State{Epoch: epoch, Role: role}
}

// The config of newCLIEnv has admin 127.0.0.1:0: nothing answers there, so
// status --config reads the data dir.
func TestStatusOfAStoppedFencedServer(t *testing.T) {
	e := newCLIEnv(t, "")
	e.node(t, cliTestID, failoverid.State{Epoch: 2, Role: "fenced", Maintenance: true,
		FencedBy: &failoverid.Token{ID: cliOtherID, Epoch: 3},
		Peer:     &failoverid.Peer{Node: "opsc-a", FailoverID: cliOtherID, Epoch: 3, Address: "10.0.0.1:61620"}})
	writeEvents(t, filepath.Join(e.data, "events.jsonl"), aFailover()[:10])

	code, out, errs := runCLI(statusCmd, "--config", e.cfg)
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	if !strings.HasPrefix(out, "server opsc-b is STOPPED") {
		t.Fatalf("first line: %q", out)
	}
	for _, want := range []string{
		"STOPPED (last role: fenced)", "epoch             2", cliTestID, "ON (automatic failover paused)",
		"fenced by         opsc-a (" + cliOtherID + ") at epoch 3",
		"last role change  " + time.UnixMilli(t0+500001).Local().Format("2006-01-02 15:04:05") + " fenced (fence, epoch 2): fenced by opsc-a at epoch 3",
		"next step         ", "tandem rejoin --config " + e.cfg + " --primary 10.0.0.1:61620",
		"refuses to act as primary",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %q:\n%s", want, out)
		}
	}

	code, out, _ = runCLI(statusCmd, "--config", e.cfg, "--json")
	if code != exitOK {
		t.Fatal(code)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if m["role"] != "stopped" || m["last_role"] != "fenced" || m["running"] != false || m["epoch"] != 2.0 || m["maintenance"] != true || m["node"] != "opsc-b" {
		t.Fatalf("json: %v", m)
	}
	for _, k := range []string{"failover_id", "primary", "backup_configured", "agents", "advertise", "warnings", "fenced_by", "runbook", "since", "why"} {
		if _, ok := m[k]; !ok {
			t.Errorf("json lacks %q (node.Status's keys): %v", k, m)
		}
	}
	fb, _ := m["fenced_by"].(map[string]any)
	if fb["failover_id"] != cliOtherID || fb["epoch"] != 3.0 || fb["node"] != "opsc-a" {
		t.Errorf("fenced_by %v", fb)
	}
}

func TestStatusOfAStoppedBackupWithAnInterruptedTakeover(t *testing.T) {
	e := newCLIEnv(t, "")
	e.node(t, cliTestID, failoverid.State{Epoch: 5, Role: "taking-over", HeardPrimary: "10.0.0.1:61620",
		Takeover: &failoverid.Journal{Epoch: 5, Reason: "failover", Step: failoverid.StepAgentsRewritten},
		Peer:     &failoverid.Peer{Node: "opsc-a", FailoverID: cliOtherID, Epoch: 4, Address: "10.0.0.1:61620"}})
	if err := config.WritePrimaryLocation(e.data, "10.0.0.1:61620"); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLI(statusCmd, "--config", e.cfg)
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q", code, errs)
	}
	for _, want := range []string{"server opsc-b is STOPPED", "last role: taking-over", "10.0.0.1:61620: a backup of 10.0.0.1:61620 (opsc-a, epoch 4), heard before",
		"interrupted failover to epoch 5, last step agents-rewritten", "resumes the interrupted failover takeover to epoch 5"} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "last role change") {
		t.Errorf("no event log, no last role change:\n%s", out)
	}
	var o offlineStatus
	_, js, _ := runCLI(statusCmd, "--config", e.cfg, "--json")
	if err := json.Unmarshal([]byte(js), &o); err != nil {
		t.Fatal(err)
	}
	if o.Takeover == nil || o.Takeover.Step != failoverid.StepAgentsRewritten || o.Primary == nil || o.Primary.Advertise != "10.0.0.1:61620" || !o.Primary.Heard || o.PrimaryLocation != "10.0.0.1:61620" {
		t.Fatalf("%+v", o)
	}
}

func TestStatusOfAServerThatNeverRan(t *testing.T) {
	e := newCLIEnv(t, "")
	code, out, errs := runCLI(statusCmd, "--config", e.cfg)
	if code != exitOK || errs != "" || !strings.Contains(out, "STOPPED (never ran)") || !strings.Contains(out, "does not exist") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	if cliExists(e.data) {
		t.Fatal("status created the data dir")
	}
	// A data dir without a lock file: status must not create one (a
	// root-owned .lock would stop the server's user from starting).
	e.node(t, cliTestID, stateAt(1, "primary"))
	runCLI(statusCmd, "--config", e.cfg)
	if cliExists(filepath.Join(e.data, failoverid.LockFile)) {
		t.Fatal("status created the lock file")
	}
}

func TestStatusStoppedErrors(t *testing.T) {
	e := newCLIEnv(t, "")
	e.node(t, cliTestID, stateAt(1, "primary"))
	// A server holds the data dir but does not answer: not "stopped".
	unlock, err := failoverid.Lock(e.data)
	if err != nil {
		t.Fatal(err)
	}
	code, _, errs := runCLI(statusCmd, "--config", e.cfg)
	unlock()
	if code != exitRuntime || !strings.Contains(errs, "a server runs on") {
		t.Fatalf("locked: %d %q", code, errs)
	}
	cliOneLineErr(t, errs)
	// A corrupt state.json: exit 2 naming the file.
	os.WriteFile(filepath.Join(e.data, failoverid.StateFile), []byte("{garbage"), 0o600)
	code, _, errs = runCLI(statusCmd, "--config", e.cfg)
	if code != exitUsage || !strings.Contains(errs, failoverid.StateFile) {
		t.Fatalf("corrupt: %d %q", code, errs)
	}
	cliOneLineErr(t, errs)
	// A bad config: exit 2.
	bad := newCLIEnv(t, "heartbeat: {perod: 1s}\n")
	code, _, errs = runCLI(statusCmd, "--config", bad.cfg)
	if code != exitUsage || !strings.Contains(errs, "perod") {
		t.Fatalf("bad config: %d %q", code, errs)
	}
	// --admin alone still fails when nothing answers (no data dir to read).
	code, _, _ = runCLI(statusCmd, "--admin", "127.0.0.1:1")
	if code != exitRuntime {
		t.Fatalf("--admin: %d", code)
	}
}

// A running server's status is not replaced by the data dir's.
func TestStatusOfARunningServerIsTheLiveOne(t *testing.T) {
	addr, _ := fakeAdmin(t, node.Status{Node: "opsc-b", Role: "backup", Epoch: 9})
	e := newCLIEnv(t, "")
	os.WriteFile(e.cfg, []byte(strings.Replace(cliReadFile(t, e.cfg), "admin: 127.0.0.1:0", "admin: "+addr, 1)), 0o644)
	e.node(t, cliTestID, stateAt(1, "primary"))
	code, out, _ := runCLI(statusCmd, "--config", e.cfg)
	if code != exitOK || strings.Contains(out, "STOPPED") || !strings.Contains(out, "BACKUP") {
		t.Fatalf("%d %q", code, out)
	}
}
