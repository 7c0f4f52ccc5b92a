package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tandem-ha/tandem/internal/admintoken"
	"github.com/tandem-ha/tandem/node"
	"github.com/tandem-ha/tandem/primary"
)

const testToken = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

// testTokenFile writes testToken to a 0600 file and returns its path.
func testTokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), admintoken.FileName)
	if err := os.WriteFile(p, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ctlFake is the node side of the real admin API for the CLI tests.
type ctlFake struct {
	mu    sync.Mutex
	maint []bool
	sw    int
	// to is the `to` of every switchover asked; backups, when set, are the
	// names a switchover may go to (others fail as the primary's do).
	to      []string
	backups []string
	// st, when set, is the status served.
	st *node.Status
}

func (c *ctlFake) Status() node.Status {
	if c.st != nil {
		return *c.st
	}
	return node.Status{Node: "opsc-b", Role: "primary"}
}
func (c *ctlFake) Metrics() node.Metrics       { return node.Metrics{} }
func (c *ctlFake) Agents() []primary.AgentView { return nil }
func (c *ctlFake) Switchover(_ context.Context, to string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.to = append(c.to, to)
	if to != "" && c.backups != nil && !slices.Contains(c.backups, to) {
		return fmt.Errorf("%w: no live backup is named %q (tandem members lists them)", primary.ErrNoBackup, to)
	}
	c.sw++
	return nil
}
func (c *ctlFake) SetMaintenance(on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maint = append(c.maint, on)
	return nil
}

// realAdmin serves the real admin API (token, Host, Origin and
// Content-Type checks) on loopback for tok.
func realAdmin(t *testing.T, c node.Controller, tok string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr, done, err := node.ServeAdmin(ctx, "127.0.0.1:0", node.AdminHandler(c, node.AdminToken(tok), node.AdminAddress("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); done() })
	return addr
}

func maintCmd(args []string, o, e *bytes.Buffer) int { return runMaintenance(args, o, e) }
func swCmd(args []string, o, e *bytes.Buffer) int    { return runSwitchover(args, o, e) }
func statusCmd(args []string, o, e *bytes.Buffer) int {
	return runStatus(args, o, e)
}

// The CLI's requests pass the real admin API's checks: --token-file with
// --admin, and --config (the token from the config's data_dir).
func TestControlCommandsSendTheToken(t *testing.T) {
	c := &ctlFake{}
	addr := realAdmin(t, c, testToken)
	tf := testTokenFile(t)
	if code, out, errs := runCLI(maintCmd, "on", "--admin", addr, "--token-file", tf); code != 0 || !strings.Contains(out, "maintenance on") {
		t.Fatalf("maintenance on --token-file: %d %q %q", code, out, errs)
	}
	if code, out, errs := runCLI(swCmd, "--admin", addr, "--token-file", tf); code != 0 || !strings.Contains(out, "switchover started") {
		t.Fatalf("switchover --token-file: %d %q %q", code, out, errs)
	}

	// --config: the server created DATA/admin.token on its first start.
	e := newCLIEnv(t, "")
	os.MkdirAll(e.data, 0o700)
	tok, _, err := admintoken.LoadOrCreate(e.data)
	if err != nil {
		t.Fatal(err)
	}
	cfgAddr := realAdmin(t, c, tok)
	cfg := strings.Replace(cliReadFile(t, e.cfg), "admin: 127.0.0.1:0", "admin: "+cfgAddr, 1)
	os.WriteFile(e.cfg, []byte(cfg), 0o644)
	if code, out, errs := runCLI(maintCmd, "--config", e.cfg, "off"); code != 0 || !strings.Contains(out, "maintenance off") {
		t.Fatalf("maintenance off --config: %d %q %q", code, out, errs)
	}
	if code, out, errs := runCLI(swCmd, "--config", e.cfg); code != 0 {
		t.Fatalf("switchover --config: %d %q %q", code, out, errs)
	}
	// status needs no token.
	if code, out, errs := runCLI(statusCmd, "--admin", addr); code != 0 || !strings.Contains(out, "PRIMARY") {
		t.Fatalf("status: %d %q %q", code, out, errs)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.maint) != 2 || !c.maint[0] || c.maint[1] || c.sw != 2 {
		t.Fatalf("maintenance %v, switchovers %d", c.maint, c.sw)
	}
}

// A missing, unreadable, bad or wrong token is one line naming the file
// and the fix, exit 2; nothing reaches the controller.
func TestControlCommandsWithoutAGoodTokenSayWhy(t *testing.T) {
	c := &ctlFake{}
	addr := realAdmin(t, c, testToken)
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope", admintoken.FileName)
	garbage := filepath.Join(dir, "garbage.token")
	os.WriteFile(garbage, []byte("hello\n"), 0o600)
	wrong := filepath.Join(dir, "wrong.token")
	os.WriteFile(wrong, []byte(strings.Repeat("ab", admintoken.Size)+"\n"), 0o600)
	e := newCLIEnv(t, "") // data dir without a token
	cfg := strings.Replace(cliReadFile(t, e.cfg), "admin: 127.0.0.1:0", "admin: "+addr, 1)
	os.WriteFile(e.cfg, []byte(cfg), 0o644)

	type tc struct {
		name string
		args []string
		want []string
	}
	cases := []tc{
		{"--admin alone", []string{"--admin", addr}, []string{"--config FILE", "--token-file FILE"}},
		{"no flags", nil, []string{"--config FILE", "--token-file FILE"}},
		{"missing file", []string{"--admin", addr, "--token-file", missing}, []string{missing, "first start", "--token-file"}},
		{"garbage", []string{"--admin", addr, "--token-file", garbage}, []string{garbage, "not a tandem admin token"}},
		{"wrong token", []string{"--admin", addr, "--token-file", wrong}, []string{wrong, "refused the admin token"}},
		{"config without a token", []string{"--config", e.cfg}, []string{filepath.Join(e.data, admintoken.FileName), "first start"}},
	}
	if os.Geteuid() != 0 {
		unreadable := filepath.Join(dir, "unreadable.token")
		os.WriteFile(unreadable, []byte(testToken+"\n"), 0o600)
		os.Chmod(unreadable, 0)
		cases = append(cases, tc{"unreadable", []string{"--admin", addr, "--token-file", unreadable}, []string{unreadable, "permission denied", "user the server runs as"}})
	}
	for _, k := range cases {
		for _, cmd := range []struct {
			name string
			fn   func([]string, *bytes.Buffer, *bytes.Buffer) int
			args []string
		}{{"maintenance", maintCmd, []string{"on"}}, {"switchover", swCmd, nil}} {
			code, _, errs := runCLI(cmd.fn, append(append([]string{}, cmd.args...), k.args...)...)
			if code != exitUsage {
				t.Errorf("%s %s: exit %d (%q), want 2", cmd.name, k.name, code, errs)
				continue
			}
			if strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "tandem "+cmd.name+": ") {
				t.Errorf("%s %s: not one line: %q", cmd.name, k.name, errs)
			}
			for _, w := range k.want {
				if !strings.Contains(errs, w) {
					t.Errorf("%s %s: %q lacks %q", cmd.name, k.name, errs, w)
				}
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.maint) != 0 || c.sw != 0 {
		t.Fatalf("maintenance %v, switchovers %d", c.maint, c.sw)
	}
}

func TestControlHelpNamesTheToken(t *testing.T) {
	for _, cmd := range []func([]string, *bytes.Buffer, *bytes.Buffer) int{maintCmd, swCmd} {
		code, out, _ := runCLI(cmd, "--help")
		if code != 0 {
			t.Fatalf("--help: exit %d", code)
		}
		for _, w := range []string{"--token-file FILE", "-token-file", "admin.token", "--config FILE"} {
			if !strings.Contains(out, w) {
				t.Errorf("help lacks %q:\n%s", w, out)
			}
		}
	}
	if _, out, _ := runCLI(statusCmd, "--help"); strings.Contains(out, "token-file") {
		t.Errorf("status needs no token, its help should not offer one:\n%s", out)
	}
}

// --to reaches the controller as the "to" query parameter (escaped), and a
// refusal naming an unknown node is one clear line, exit 1.
func TestSwitchoverTo(t *testing.T) {
	c := &ctlFake{backups: []string{"c", "opsc b&c"}}
	addr := realAdmin(t, c, testToken)
	tf := testTokenFile(t)
	for _, to := range []string{"c", "opsc b&c"} {
		code, out, errs := runCLI(swCmd, "--admin", addr, "--token-file", tf, "--to", to)
		if code != exitOK || !strings.Contains(out, "switchover started: "+to+" is taking over") {
			t.Fatalf("--to %s: %d %q %q", to, code, out, errs)
		}
	}
	if code, out, errs := runCLI(swCmd, "--to=", "--admin", addr, "--token-file", tf); code != exitOK || !strings.Contains(out, "the backup is taking over") {
		t.Fatalf("--to empty: %d %q %q", code, out, errs)
	}
	code, out, errs := runCLI(swCmd, "--admin", addr, "--token-file", tf, "--to", "zz")
	if code != exitRuntime || out != "" {
		t.Fatalf("--to zz: %d %q %q", code, out, errs)
	}
	cliOneLineErr(t, errs)
	if strings.Contains(errs, "no backup has replied") {
		t.Errorf("other backups reply; only none is named zz: %q", errs)
	}
	for _, w := range []string{"tandem switchover --to zz: the server at " + addr + " refused", `no live backup is named "zz"`, "tandem members"} {
		if !strings.Contains(errs, w) {
			t.Errorf("%q lacks %q", errs, w)
		}
	}
	c.mu.Lock()
	if strings.Join(c.to, "|") != "c|opsc b&c||zz" || c.sw != 3 {
		t.Fatalf("to %q, switchovers %d", c.to, c.sw)
	}
	c.to = nil
	// A backup whose checks are down would refuse the handover: said at
	// once, nothing asked. A manual one (priority 0) is a fine target.
	c.st = &node.Status{Node: "a", Role: "primary", Backups: []node.GroupMember{
		{Node: "c", FailoverID: "id-c", Priority: 120, EffectivePriority: 0},
		{Node: "opsc b&c", FailoverID: "id-d", Priority: 0, EffectivePriority: 0},
	}}
	c.mu.Unlock()
	for _, to := range []string{"c", "id-c"} {
		code, out, errs := runCLI(swCmd, "--admin", addr, "--token-file", tf, "--to", to)
		if code != exitRuntime || out != "" || !strings.Contains(errs, "effective priority 0") || !strings.Contains(errs, "would refuse the handover") {
			t.Fatalf("--to %s (checks down): %d %q %q", to, code, out, errs)
		}
		cliOneLineErr(t, errs)
	}
	if code, _, errs := runCLI(swCmd, "--admin", addr, "--token-file", tf, "--to", "opsc b&c"); code != exitOK {
		t.Fatalf("--to a manual backup: %d %q", code, errs)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if strings.Join(c.to, "|") != "opsc b&c" {
		t.Fatalf("to %q", c.to)
	}
}

func TestSwitchoverHelpNamesTo(t *testing.T) {
	code, out, _ := runCLI(swCmd, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, w := range []string{"tandem switchover [--to NODE]", "-to", "best backup", "failover id"} {
		if !strings.Contains(out, w) {
			t.Errorf("help lacks %q:\n%s", w, out)
		}
	}
}
