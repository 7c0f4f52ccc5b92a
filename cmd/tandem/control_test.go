package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/arbiter"
	"github.com/tandem-ha/tandem/node"
)

// fakeAdmin records the maintenance requests and serves a status. Its
// POST endpoints want the token of testTokenFile.
func fakeAdmin(t *testing.T, st node.Status) (addr string, maint *[]string) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.Header.Get("Authorization") != "Bearer "+testToken {
			w.WriteHeader(401)
			w.Write([]byte(`{"error":"admin token required"}`))
			return
		}
		switch r.URL.Path {
		case "/maintenance":
			got = append(got, r.URL.Query().Get("state"))
			w.Write([]byte(`{"maintenance":true}`))
		case "/status":
			json.NewEncoder(w).Encode(st)
		case "/switchover":
			w.WriteHeader(409)
			w.Write([]byte(`{"error":"primary: no backup has replied; nothing to hand over to"}`))
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), &got
}

func TestMaintenanceAcceptsTheContractOrder(t *testing.T) {
	addr, got := fakeAdmin(t, node.Status{})
	tf := testTokenFile(t)
	for _, args := range [][]string{
		{"on", "--admin", addr, "--token-file", tf},
		{"--admin", addr, "--token-file", tf, "off"},
		{"--admin=" + addr, "--token-file=" + tf, "on"},
	} {
		var out, errb bytes.Buffer
		if code := runMaintenance(args, &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
	}
	if strings.Join(*got, ",") != "on,off,on" {
		t.Fatalf("requests %v", *got)
	}
	var out, errb bytes.Buffer
	for _, bad := range [][]string{{"--admin", addr, "--token-file", tf}, {"maybe", "--admin", addr, "--token-file", tf}, {"on", "off", "--admin", addr, "--token-file", tf}} {
		if code := runMaintenance(bad, &out, &errb); code != 2 {
			t.Fatalf("%v: exit %d, want 2", bad, code)
		}
	}
}

func TestStatusTableAndJSON(t *testing.T) {
	st := node.Status{Node: "b", Role: "backup", Epoch: 2, FailoverID: "id-b", Warnings: []string{"something odd"},
		Primary: &node.PrimaryStatus{Node: "a", Epoch: 1, LastHeartbeatAgeMS: 120},
		Agents:  node.AgentsStatus{Managed: 3}}
	addr, _ := fakeAdmin(t, st)
	var out, errb bytes.Buffer
	if code := runStatus([]string{"--admin", addr}, &out, &errb); code != 0 {
		t.Fatalf("exit %d %s", code, errb.String())
	}
	for _, want := range []string{"BACKUP", "a epoch 1, last heartbeat 120ms ago", "3 managed", "WARNING", "something odd"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := runStatus([]string{"--admin", addr, "--json"}, &out, &errb); code != 0 {
		t.Fatal(code)
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil || m["role"] != "backup" {
		t.Fatalf("%v %v", m, err)
	}
}

func TestControlCommandsSayWhenNoServerAnswers(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runStatus([]string{"--admin", "127.0.0.1:1"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no tandem server answers at 127.0.0.1:1") {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	addr, _ := fakeAdmin(t, node.Status{})
	errb.Reset()
	if code := runSwitchover([]string{"--admin", addr, "--token-file", testTokenFile(t)}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no backup") {
		t.Fatalf("switchover without backup: exit %d %s", code, errb.String())
	}
}

// Groups in the status table: priorities, each check, the backups, and a
// backup's rank and eligibility.
func TestStatusTableOfAGroup(t *testing.T) {
	prim := node.Status{Node: "a", Role: "primary", Epoch: 7, BackupConfigured: true, Priority: 200, EffectivePriority: 200, Health: "all",
		Checks: []node.CheckStatus{{Name: "opscenterd", Up: true, Since: "2026-12-01T10:00:00Z", Output: "HTTP 200"}},
		Backup: &node.PeerStatus{Node: "b", FailoverID: "id-b", Address: "10.0.0.2:61620", AgeMS: 3000},
		Backups: []node.GroupMember{
			{Node: "b", FailoverID: "id-b", Address: "10.0.0.2:61620", Priority: 150, EffectivePriority: 150, LastReplyAgeMS: 3000},
			{Node: "c", FailoverID: "id-c", Address: "10.0.0.3:61620", Priority: 120, EffectivePriority: 0, LastReplyAgeMS: 12500, Maintenance: true},
		}}
	rank := 1
	back := node.Status{Node: "c", Role: "backup", Epoch: 5, Priority: 120, EffectivePriority: 0, Health: "progressive", Rank: &rank,
		Ineligible: "effective priority is 0 (health checks down): not eligible to take over",
		Checks: []node.CheckStatus{{Name: "opscenterd", Up: false, Since: "2026-12-01T11:00:00Z", Output: "exit status 7\nmore"},
			{Name: "cassandra", Up: true}},
		Primary: &node.PrimaryStatus{Node: "a", Epoch: 7, LastHeartbeatAgeMS: 800, Heard: true, Priority: 200, EffectivePriority: 200},
		Backups: []node.GroupMember{{Node: "b", Address: "10.0.0.2:61620", Priority: 150, EffectivePriority: 150, LastReplyAgeMS: 9000}}}
	for _, tc := range []struct {
		st      node.Status
		want    []string
		notWant []string
	}{
		{prim, []string{
			"priority 200, effective 200 (health: all)",
			"check opscenterd up since 2026-12-01T10:00:00Z: HTTP 200",
			"backups b (10.0.0.2:61620), priority 150 (effective 150), heard 3s ago: takes over first",
			"\n c (10.0.0.3:61620), priority 120 (effective 0), heard 12.5s ago, maintenance ON\n",
			"backup b (10.0.0.2:61620), replied 3s ago\nbackups b",
		}, []string{"rank", "eligible"}},
		{back, []string{
			"primary a epoch 7, last heartbeat 800ms ago, priority 200 (effective 200)",
			"priority 120, effective 0 (health: progressive)",
			"check opscenterd DOWN since 2026-12-01T11:00:00Z: exit status 7; more\n",
			"check cassandra up\n",
			"rank 1 (1 eligible backup(s) outrank it and take over first)",
			"eligible NO: effective priority is 0 (health checks down)",
			"other backups b (10.0.0.2:61620), priority 150 (effective 150), heard 9s ago\n",
		}, nil},
	} {
		addr, _ := fakeAdmin(t, tc.st)
		code, out, errs := runCLI(statusCmd, "--admin", addr)
		out = squeeze(out)
		if code != 0 {
			t.Fatalf("exit %d %s", code, errs)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("status lacks %q:\n%s", w, out)
			}
		}
		for _, w := range tc.notWant {
			if strings.Contains(out, w) {
				t.Errorf("status has %q:\n%s", w, out)
			}
		}
	}
	// No checks, and a pre-groups server (no health key): nothing new.
	st := prim
	st.Checks, st.Backups = []node.CheckStatus{}, nil
	addr, _ := fakeAdmin(t, st)
	if _, out, _ := runCLI(statusCmd, "--admin", addr); !strings.Contains(squeeze(out), "checks none") || !strings.Contains(squeeze(out), "backup b (10.0.0.2:61620), replied 3s ago") {
		t.Errorf("%s", out)
	}
	st.Health = ""
	addr, _ = fakeAdmin(t, st)
	if _, out, _ := runCLI(statusCmd, "--admin", addr); strings.Contains(out, "priority") || strings.Contains(out, "checks") {
		t.Errorf("%s", out)
	}
}

// squeeze turns each run of spaces into one (the table's padding).
func squeeze(s string) string { return regexp.MustCompile(` {2,}`).ReplaceAllString(s, " ") }

func TestStatusAndMembersShowTheArbiter(t *testing.T) {
	a := &node.ArbiterStatus{Prefix: "/tandem/opsc", Holder: "a", HoldsTerm: true, LeaseTTLLeftMS: 9000, RenewsOK: 12, RenewsFailed: 1, RenewLatencyMS: 2.5,
		Endpoints: []arbiter.EndpointStatus{{URL: "http://e1:2379", Reachable: true}, {URL: "http://e2:2379", Reachable: true}, {URL: "http://e3:2379"}}}
	var b strings.Builder
	printStatus(&b, node.Status{Node: "a", Role: "primary", Arbiter: a})
	for _, want := range []string{"arbiter", "etcd /tandem/opsc, election held by a; this node holds the term (lease 9s left); 2/3 endpoints reachable; renewals 12 ok, 1 failed (last 2.5 ms)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	a.HoldsTerm, a.Failsafe = false, true
	if l := arbiterLine(a); strings.Contains(l, "holds the term") || !strings.Contains(l, "FAILSAFE") {
		t.Errorf("failsafe line: %s", l)
	}
}
