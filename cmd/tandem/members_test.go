package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/node"
)

func membersCmd(args []string, o, e *bytes.Buffer) int { return runMembers(args, o, e) }

type membersOut struct {
	Members []member `json:"members"`
}

func membersJSON(t *testing.T, args ...string) []member {
	t.Helper()
	code, out, errs := runCLI(membersCmd, append(args, "--json")...)
	if code != exitOK {
		t.Fatalf("%v: %d %q", args, code, errs)
	}
	var m membersOut
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return m.Members
}

func TestMembersFromABackup(t *testing.T) {
	st := node.Status{Node: "opsc-b", Role: "backup", Epoch: 2, FailoverID: "id-b", Advertise: "10.0.0.2:61620",
		Primary: &node.PrimaryStatus{Node: "opsc-a", FailoverID: "id-a", Epoch: 3, Advertise: "10.0.0.1:61620", LastHeartbeatAgeMS: 2100, SilentForMS: 2100, Heard: true, TakeoverInMS: 57900}}
	addr, _ := fakeAdmin(t, st)
	code, out, errs := runCLI(membersCmd, "--admin", addr)
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q", code, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%q", out)
	}
	for i, want := range [][]string{
		{"NODE", "ROLE", "EPOCH", "PRIORITY", "EFFECTIVE", "HEALTH", "LAST_HEARD", "ADDRESS", "MAINTENANCE"},
		{"opsc-b", "BACKUP", "2", "100", "100", "ok", "now", "10.0.0.2:61620", "off"},
		{"opsc-a", "PRIMARY", "3", "100", "100", "ok", "2.1s ago", "10.0.0.1:61620", "off"},
	} {
		f := strings.Fields(strings.Replace(lines[i], " ago", "_ago", 1))
		if strings.Join(f, " ") != strings.Replace(strings.Join(want, " "), " ago", "_ago", 1) {
			t.Errorf("line %d: %q, want %v", i, lines[i], want)
		}
	}

	for _, tc := range []struct {
		p      node.PrimaryStatus
		warn   string
		health string
	}{
		{node.PrimaryStatus{Node: "opsc-a", LastHeartbeatAgeMS: -1, TakeoverInMS: -1}, "", "never heard"},
		{node.PrimaryStatus{Node: "opsc-a", LastHeartbeatAgeMS: -1, Heard: true, TakeoverInMS: 50000}, "", "silent"},
		{node.PrimaryStatus{Node: "opsc-a", LastHeartbeatAgeMS: 25000, SilentForMS: 25000, Heard: true, TakeoverInMS: 35000}, "the primary has been silent for 25s: automatic takeover in 35s", "silent"},
		{node.PrimaryStatus{Node: "opsc-a", LastHeartbeatAgeMS: 25000, SilentForMS: 25000, Heard: true, TakeoverInMS: -1}, "", "silent"}, // maintenance: no warning, but 2 × period
	} {
		p := tc.p
		s := st
		s.Primary = &p
		if tc.warn != "" {
			s.Warnings = []string{tc.warn}
		}
		addr, _ := fakeAdmin(t, s)
		m := membersJSON(t, "--admin", addr)
		if len(m) != 2 || m[1].Health != tc.health || m[1].LastHeardMS != p.LastHeartbeatAgeMS || m[0].Health != "ok" || !m[0].Self || m[1].Self {
			t.Errorf("%+v: %+v", p, m)
		}
	}
}

func TestMembersFromAPrimary(t *testing.T) {
	base := node.Status{Node: "opsc-a", Role: "primary", Epoch: 3, FailoverID: "id-a", Advertise: "10.0.0.1:61620", BackupConfigured: true,
		Backup: &node.PeerStatus{Node: "opsc-b", FailoverID: "id-b", Epoch: 2, Address: "10.0.0.2:61620", AgeMS: 41000}}
	for _, tc := range []struct {
		name        string
		mut         func(s *node.Status)
		health      string
		maintenance bool
	}{
		{"ok", func(s *node.Status) {}, "ok", false},
		{"maintenance on the backup", func(s *node.Status) {
			s.Backup.Maintenance = true
			s.Warnings = []string{"maintenance mode on the backup opsc-b: automatic failover is paused (tandem maintenance off there to resume)"}
		}, "ok", true},
		{"silent", func(s *node.Status) { s.BackupConfigured, s.Backup.AgeMS = false, 700000 }, "silent", false},
		{"clean stop", func(s *node.Status) {
			s.BackupConfigured, s.Backup.AgeMS = false, -1
			s.Warnings = []string{"backup opsc-b stopped (a clean stop) at 2025-06-01T10:00:00Z: automatic failover is off until a backup replies"}
		}, "stopped (clean stop)", false},
		{"never", func(s *node.Status) { s.BackupConfigured, s.Backup.AgeMS = false, -1 }, "never heard", false},
	} {
		s := base
		b := *base.Backup
		s.Backup = &b
		tc.mut(&s)
		addr, _ := fakeAdmin(t, s)
		m := membersJSON(t, "--admin", addr)
		if len(m) != 2 || m[0].Node != "opsc-a" || m[0].Role != "primary" || m[0].Priority != 100 || m[0].EffectivePriority != 100 {
			t.Fatalf("%s: %+v", tc.name, m)
		}
		if m[1].Node != "opsc-b" || m[1].Health != tc.health || m[1].Maintenance != tc.maintenance || m[1].Address != "10.0.0.2:61620" || m[1].Epoch != 2 {
			t.Errorf("%s: peer %+v", tc.name, m[1])
		}
		if tc.name == "maintenance on the backup" {
			_, out, _ := runCLI(membersCmd, "--admin", addr)
			if f := strings.Fields(strings.Split(out, "\n")[2]); f[len(f)-1] != "ON" {
				t.Errorf("MAINTENANCE column: %q", out)
			}
		}
	}
	// No backup: one member and a warning line.
	s := base
	s.Backup, s.BackupConfigured = nil, false
	addr, _ := fakeAdmin(t, s)
	code, out, _ := runCLI(membersCmd, "--admin", addr)
	if code != exitOK || strings.Count(out, "\n") != 3 || !strings.Contains(out, "WARNING: no backup has replied") {
		t.Fatalf("%d %q", code, out)
	}
	// The raw JSON keys.
	_, js, _ := runCLI(membersCmd, "--admin", addr, "--json")
	var raw map[string][]map[string]any
	json.Unmarshal([]byte(js), &raw)
	for _, k := range []string{"node", "role", "epoch", "priority", "effective_priority", "health", "last_heard_ms", "address", "maintenance"} {
		if _, ok := raw["members"][0][k]; !ok {
			t.Errorf("members[0] lacks %q: %s", k, js)
		}
	}
}

// A backup's status says "maintenance" also when its primary announced
// it; with --config, state.json tells whose it is.
func TestMembersMaintenanceSetOnThePrimary(t *testing.T) {
	st := node.Status{Node: "opsc-b", Role: "backup", Epoch: 2, Maintenance: true,
		Primary: &node.PrimaryStatus{Node: "opsc-a", Epoch: 3, LastHeartbeatAgeMS: 100, Heard: true, TakeoverInMS: -1, Maintenance: true}}
	addr, _ := fakeAdmin(t, st)
	e := newCLIEnv(t, "")
	os.WriteFile(e.cfg, []byte(strings.Replace(cliReadFile(t, e.cfg), "admin: 127.0.0.1:0", "admin: "+addr, 1)), 0o644)
	e.node(t, cliTestID, failoverid.State{Epoch: 2, Role: "backup"}) // maintenance off here
	m := membersJSON(t, "--config", e.cfg)
	if len(m) != 2 || m[0].Maintenance || !m[1].Maintenance {
		t.Fatalf("%+v", m)
	}
	// Set here (and not on the primary): the backup's row.
	st.Primary.Maintenance = false
	addr2, _ := fakeAdmin(t, st)
	os.WriteFile(e.cfg, []byte(strings.Replace(cliReadFile(t, e.cfg), "admin: "+addr, "admin: "+addr2, 1)), 0o644)
	e.node(t, cliTestID, failoverid.State{Epoch: 2, Role: "backup", Maintenance: true})
	m = membersJSON(t, "--config", e.cfg)
	if !m[0].Maintenance || m[1].Maintenance {
		t.Fatalf("%+v", m)
	}
}

func TestMembersOfAStoppedServer(t *testing.T) {
	e := newCLIEnv(t, "")
	e.node(t, cliTestID, failoverid.State{Epoch: 4, Role: "backup", Peer: &failoverid.Peer{Node: "opsc-a", FailoverID: cliOtherID, Epoch: 5, Address: "10.0.0.1:61620"}})
	code, out, errs := runCLI(membersCmd, "--config", e.cfg)
	if code != exitOK || errs != "" || !strings.Contains(out, "STOPPED") || !strings.Contains(out, "listed from its data dir") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	m := membersJSON(t, "--config", e.cfg)
	if len(m) != 2 || m[0].Role != "stopped" || m[0].Epoch != 4 || m[1].Node != "opsc-a" || m[1].Role != "primary" || m[1].Epoch != 5 {
		t.Fatalf("%+v", m)
	}
	// Nothing answers at --admin: exit 1, one line.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	code, _, errs = runCLI(membersCmd, "--admin", dead)
	if code != exitRuntime {
		t.Fatalf("%d %q", code, errs)
	}
	cliOneLineErr(t, errs)
}
