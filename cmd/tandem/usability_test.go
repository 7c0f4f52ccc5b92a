package main

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/node"
)

func TestUnknownCommandSuggestsTheClosest(t *testing.T) {
	for typo, want := range map[string]string{"stauts": "status", "statsu": "status", "histroy": "history", "memebrs": "members", "rejion": "rejoin", "swithcover": "switchover", "hist": "history"} {
		var out, errb bytes.Buffer
		if code := dispatch([]string{typo, "--config", "x"}, &out, &errb); code != exitUsage {
			t.Errorf("%s: exit %d", typo, code)
		}
		if got := errb.String(); !strings.Contains(got, `unknown command "`+typo+`": did you mean "`+want+`"?`) || strings.Count(got, "\n") != 1 {
			t.Errorf("%s: %q, want a suggestion of %q", typo, got, want)
		}
	}
	var out, errb bytes.Buffer
	if code := dispatch([]string{"frobnicate"}, &out, &errb); code != exitUsage || strings.Contains(errb.String(), "did you mean") || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("no close command: %d %q", code, errb.String())
	}
}

func TestAdminAcceptsAURL(t *testing.T) {
	addr, _ := fakeAdmin(t, node.Status{Node: "b", Role: "backup"})
	for _, a := range []string{addr, "http://" + addr, "http://" + addr + "/", "HTTP://" + addr + "/status", addr + "/"} {
		code, out, errs := runCLI(statusCmd, "--admin", a)
		if code != exitOK || !strings.Contains(out, "BACKUP") {
			t.Errorf("--admin %s: %d %q", a, code, errs)
		}
	}
	for a, want := range map[string]string{
		"https://" + addr:         "plain HTTP",
		"http://" + addr + "/x/y": "not a URL with the path",
		"127.0.0.1":               "expected HOST:PORT",
		"http://127.0.0.1":        "expected HOST:PORT",
		"127.0.0.1:http":          "1-65535",
		"stomp://" + addr:         "expected HOST:PORT",
	} {
		for _, c := range []struct {
			fn  func([]string, *bytes.Buffer, *bytes.Buffer) int
			pre []string
		}{{statusCmd, nil}, {membersCmd, nil}, {maintCmd, []string{"on", "--token-file", testTokenFile(t)}}} {
			code, _, errs := runCLI(c.fn, append(c.pre, "--admin", a)...)
			if code != exitUsage || !strings.Contains(errs, want) || strings.Contains(errs, "lookup") {
				t.Errorf("--admin %s: %d %q, want exit 2 with %q", a, code, errs, want)
			}
			cliOneLineErr(t, errs)
		}
	}
	if got, err := parseAdminFlag("http://[::1]:61630/"); err != nil || got != "[::1]:61630" {
		t.Fatalf("IPv6: %q %v", got, err)
	}
}

func TestRejoinWarnsWhenThePrimaryDoesNotAnswer(t *testing.T) {
	// A listening primary: no warning.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	e := newCLIEnv(t, "")
	code, out, errs := runCLI(rejoinCmd, "--config", e.cfg, "--primary", ln.Addr().String())
	if code != exitOK || errs != "" || strings.Contains(out, "WARNING") {
		t.Fatalf("answering primary: %d %q %q", code, out, errs)
	}
	// A closed port: a WARNING, and the rejoin is done all the same.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := dead.Addr().String()
	dead.Close()
	e2 := newCLIEnv(t, "")
	code, out, errs = runCLI(rejoinCmd, "--config", e2.cfg, "--primary", addr)
	if code != exitOK || errs != "" || !strings.Contains(out, "WARNING: nothing answers at "+addr) || !strings.Contains(out, "is now a backup of "+addr) {
		t.Fatalf("silent primary: %d %q %q", code, out, errs)
	}
	if got := cliReadFile(t, e2.data+"/primary_location"); got != addr+"\n" {
		t.Fatalf("primary_location %q", got)
	}
}
