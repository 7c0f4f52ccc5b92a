package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
