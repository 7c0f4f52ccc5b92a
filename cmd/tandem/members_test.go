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

// intv is *p, or -1 for nil (unknown).
func intv[T int | uint64](p *T) int64 {
	if p == nil {
		return -1
	}
	return int64(*p)
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
	st := node.Status{Node: "opsc-b", Role: "backup", Epoch: 2, FailoverID: "id-b", Advertise: "10.0.0.2:61620", Priority: 100, EffectivePriority: 100,
		Primary: &node.PrimaryStatus{Node: "opsc-a", FailoverID: "id-a", Epoch: 3, Advertise: "10.0.0.1:61620", LastHeartbeatAgeMS: 2100, SilentForMS: 2100, Heard: true, TakeoverInMS: 57900,
			Priority: 100, EffectivePriority: 100}}
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
	base := node.Status{Node: "opsc-a", Role: "primary", Epoch: 3, FailoverID: "id-a", Advertise: "10.0.0.1:61620", BackupConfigured: true, Priority: 100, EffectivePriority: 100,
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
		if len(m) != 2 || m[0].Node != "opsc-a" || m[0].Role != "primary" || intv(m[0].Priority) != 100 || intv(m[0].EffectivePriority) != 100 {
			t.Fatalf("%s: %+v", tc.name, m)
		}
		if m[1].Node != "opsc-b" || m[1].Health != tc.health || m[1].Maintenance != tc.maintenance || m[1].Address != "10.0.0.2:61620" || intv(m[1].Epoch) != 2 {
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
	if len(m) != 2 || m[0].Role != "stopped" || intv(m[0].Epoch) != 4 || m[1].Node != "opsc-a" || m[1].Role != "primary" || intv(m[1].Epoch) != 5 ||
		intv(m[0].Priority) != 100 || m[0].EffectivePriority != nil || m[1].Priority != nil {
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

// membersTable runs members --admin addr and returns its lines as fields
// (" ago" joined to its age, so each column is one field).
func membersTable(t *testing.T, addr string) (rows [][]string, warnings []string) {
	t.Helper()
	code, out, errs := runCLI(membersCmd, "--admin", addr)
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q", code, errs)
	}
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if w, ok := strings.CutPrefix(l, "WARNING: "); ok {
			warnings = append(warnings, w)
			continue
		}
		l = strings.ReplaceAll(l, " ago", "_ago")
		l = strings.ReplaceAll(l, "down (effective 0)", "down_(effective_0)")
		rows = append(rows, strings.Fields(l))
	}
	return rows, warnings
}

func wantRows(t *testing.T, got [][]string, want [][]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d: %q", len(got), len(want), got)
	}
	for i := range want {
		if strings.Join(got[i], " ") != strings.Join(want[i], " ") {
			t.Errorf("line %d: %q\n           want %q", i, got[i], want[i])
		}
	}
}

// A primary with two backups: every member, best backup first, each
// backup's health from its effective priority.
func TestMembersOfAGroupFromThePrimary(t *testing.T) {
	st := node.Status{Node: "a", Role: "primary", Epoch: 7, FailoverID: "id-a", Advertise: "10.0.0.1:61620", BackupConfigured: true,
		Priority: 200, EffectivePriority: 200, Health: "all",
		Checks: []node.CheckStatus{{Name: "opscenterd", Up: true, Since: "2026-12-01T10:00:00Z", Output: "200 OK"}},
		Backup: &node.PeerStatus{Node: "b", FailoverID: "id-b", Epoch: 6, Address: "10.0.0.2:61620", AgeMS: 3000},
		Backups: []node.GroupMember{
			{Node: "b", FailoverID: "id-b", Address: "10.0.0.2:61620", Epoch: 6, Priority: 150, EffectivePriority: 150, LastReplyAgeMS: 3000},
			{Node: "c", FailoverID: "id-c", Address: "10.0.0.3:61620", Epoch: 4, Priority: 120, EffectivePriority: 0, LastReplyAgeMS: 12500},
		}}
	addr, _ := fakeAdmin(t, st)
	rows, warns := membersTable(t, addr)
	wantRows(t, rows, [][]string{
		{"NODE", "ROLE", "EPOCH", "PRIORITY", "EFFECTIVE", "HEALTH", "LAST_HEARD", "ADDRESS", "MAINTENANCE"},
		{"a", "PRIMARY", "7", "200", "200", "ok", "now", "10.0.0.1:61620", "off"},
		{"b", "BACKUP", "6", "150", "150", "ok", "3s_ago", "10.0.0.2:61620", "off"},
		{"c", "BACKUP", "4", "120", "0", "down_(effective_0)", "12.5s_ago", "10.0.0.3:61620", "off"},
	})
	if len(warns) != 0 {
		t.Errorf("warnings %q", warns)
	}
	m := membersJSON(t, "--admin", addr)
	if len(m) != 3 || m[2].Epoch == nil || *m[2].Epoch != 4 || intv(m[2].Priority) != 120 || intv(m[2].EffectivePriority) != 0 || m[2].LastHeardMS != 12500 || m[2].FailoverID != "id-c" || m[2].Self {
		t.Fatalf("%+v", m)
	}

	// The primary's own check down, a backup in maintenance, a manual one,
	// equal priorities, and the last backup that replied no longer does.
	st.EffectivePriority = 0
	st.Checks = []node.CheckStatus{{Name: "opscenterd", Up: false, Output: "connection refused"}, {Name: "api", Up: true}, {Name: "cassandra", Up: false}}
	st.Backups = []node.GroupMember{
		{Node: "c", FailoverID: "id-c", Address: "10.0.0.3:61620", Priority: 120, EffectivePriority: 120, Maintenance: true, LastReplyAgeMS: 1000},
		{Node: "d", FailoverID: "id-d", Address: "10.0.0.4:61620", Priority: 0, EffectivePriority: 0, LastReplyAgeMS: 2000},
		{Node: "e", FailoverID: "id-e", Address: "10.0.0.5:61620", Priority: 120, EffectivePriority: 120, LastReplyAgeMS: 4000},
	}
	st.Backup.AgeMS = 700000
	st.Warnings = []string{"WARNING: equal configured priority 120 on c, e: the election then goes by the last heartbeat heard; give each server its own priority"}
	addr, _ = fakeAdmin(t, st)
	rows, warns = membersTable(t, addr)
	wantRows(t, rows, [][]string{
		rows[0],
		{"a", "PRIMARY", "7", "200", "0", "down:", "opscenterd,cassandra", "now", "10.0.0.1:61620", "off"},
		{"c", "BACKUP", "0", "120", "120", "maintenance", "1s_ago", "10.0.0.3:61620", "ON"},
		{"d", "BACKUP", "0", "0", "0", "manual", "(priority", "0)", "2s_ago", "10.0.0.4:61620", "off"},
		{"e", "BACKUP", "0", "120", "120", "ok", "4s_ago", "10.0.0.5:61620", "off"},
		{"b", "BACKUP", "6", "-", "-", "silent", "11m40s_ago", "10.0.0.2:61620", "off"},
	})
	if len(warns) != 1 || !strings.HasPrefix(warns[0], "equal configured priority 120 on c, e") {
		t.Errorf("warnings %q", warns)
	}
}

// A backup that knows one peer: itself, its primary, the peer; its rank
// and why it is not eligible.
func TestMembersOfAGroupFromABackup(t *testing.T) {
	rank := 1
	st := node.Status{Node: "c", Role: "backup", Epoch: 5, FailoverID: "id-c", Advertise: "10.0.0.3:61620",
		Priority: 100, EffectivePriority: 0, Health: "all", Rank: &rank,
		Ineligible: "effective priority is 0 (health checks down): not eligible to take over",
		Checks:     []node.CheckStatus{{Name: "opscenterd", Up: false, Output: "exit status 7"}},
		Primary: &node.PrimaryStatus{Node: "a", FailoverID: "id-a", Epoch: 7, Advertise: "10.0.0.1:61620", LastHeartbeatAgeMS: 800, SilentForMS: 800,
			Heard: true, TakeoverInMS: -1, Priority: 200, EffectivePriority: 200},
		Backups: []node.GroupMember{{Node: "b", FailoverID: "id-b", Address: "10.0.0.2:61620", Priority: 150, EffectivePriority: 150, LastReplyAgeMS: 9000}},
	}
	addr, _ := fakeAdmin(t, st)
	rows, warns := membersTable(t, addr)
	wantRows(t, rows, [][]string{
		{"NODE", "ROLE", "EPOCH", "PRIORITY", "EFFECTIVE", "HEALTH", "LAST_HEARD", "ADDRESS", "MAINTENANCE"},
		{"c", "BACKUP", "5", "100", "0", "down:", "opscenterd", "now", "10.0.0.3:61620", "off"},
		{"a", "PRIMARY", "7", "200", "200", "ok", "800ms_ago", "10.0.0.1:61620", "off"},
		{"b", "BACKUP", "-", "150", "150", "ok", "9s_ago", "10.0.0.2:61620", "off"},
	})
	if len(warns) != 1 || !strings.Contains(warns[0], "c is not eligible for automatic takeover: effective priority is 0") {
		t.Errorf("warnings %q", warns)
	}
	// The primary's checks down (its heartbeats say effective 0).
	st.Primary.EffectivePriority = 0
	addr, _ = fakeAdmin(t, st)
	if m := membersJSON(t, "--admin", addr); len(m) != 3 || m[1].Health != "down (effective 0)" || intv(m[1].Priority) != 200 {
		t.Fatalf("%+v", m)
	}
	// A primary never heard: its priorities are not known.
	st.Primary = &node.PrimaryStatus{LastHeartbeatAgeMS: -1, TakeoverInMS: -1}
	addr, _ = fakeAdmin(t, st)
	if m := membersJSON(t, "--admin", addr); len(m) != 3 || m[1].Health != "never heard" || m[1].Priority != nil || m[1].EffectivePriority != nil {
		t.Fatalf("%+v", m)
	}
}
