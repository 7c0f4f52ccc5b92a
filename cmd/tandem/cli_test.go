package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
)

// cliEnv is a stopped node: a config file, its data dir and agents dir.
type cliEnv struct {
	dir, cfg, data, agents string
}

const cliTestID = "3f1c2a9e-8d4b-4c1a-9e2f-0b7d6a5c4e31"
const cliOtherID = "11111111-2222-4333-8444-555555555555"

func newCLIEnv(t *testing.T, extra string) cliEnv {
	t.Helper()
	dir := t.TempDir()
	e := cliEnv{dir: dir, cfg: filepath.Join(dir, "tandem.yaml"), data: filepath.Join(dir, "data"), agents: filepath.Join(dir, "agents")}
	content := "node: opsc-b\ndata_dir: data\nadvertise: 10.0.0.2\nadmin: 127.0.0.1:0\nagents: [\"agents/*/address.yaml\"]\n" + extra
	if err := os.WriteFile(e.cfg, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e cliEnv) writeAgent(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(e.agents, name, "address.yaml")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// node gives the data dir a failover id and a state.
func (e cliEnv) node(t *testing.T, idCmd string, st failoverid.State) {
	t.Helper()
	if err := os.MkdirAll(e.data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.data, failoverid.IDFile), []byte(idCmd+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := failoverid.SaveState(e.data, st); err != nil {
		t.Fatal(err)
	}
}

func runCLI(fn func([]string, *bytes.Buffer, *bytes.Buffer) int, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := fn(args, &out, &errb)
	return code, out.String(), errb.String()
}

func idCmd(args []string, o, e *bytes.Buffer) int     { return runID(args, o, e) }
func agentCmd(args []string, o, e *bytes.Buffer) int  { return runAgent(args, o, e) }
func rejoinCmd(args []string, o, e *bytes.Buffer) int { return runRejoin(args, o, e) }
func agentsCmd(args []string, o, e *bytes.Buffer) int { return runAgents(args, o, e) }

func cliOneLineErr(t *testing.T, stderr string) {
	t.Helper()
	if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Fatalf("stderr should be exactly one line: %q", stderr)
	}
}

// cliRunningServer answers /status on the returned admin address.
func cliRunningServer(t *testing.T) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/status" {
			w.Write([]byte(`{"role":"primary"}`))
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

func cliReadFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func cliExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestIDCreatesOnFirstUseThenReads(t *testing.T) {
	e := newCLIEnv(t, "")
	code, out, errs := runCLI(idCmd, "--config", e.cfg)
	if code != exitOK || !strings.Contains(errs, "created "+filepath.Join(e.data, failoverid.IDFile)) {
		t.Fatalf("first use: %d %q %q", code, out, errs)
	}
	first := strings.TrimSpace(out)
	if _, err := failoverid.ParseID(first); err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("stdout should be just the id: %q", out)
	}
	code, out, errs = runCLI(idCmd, "-config", e.cfg)
	if code != exitOK || strings.TrimSpace(out) != first || errs != "" {
		t.Fatalf("second use: %d %q %q", code, out, errs)
	}
}

func TestIDRegenerate(t *testing.T) {
	e := newCLIEnv(t, "")
	e.node(t, cliTestID, failoverid.State{Epoch: 3})
	code, out, errs := runCLI(idCmd, "--config", e.cfg, "--regenerate")
	if code != exitOK {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	now, err := failoverid.LoadID(e.data)
	if err != nil || now == cliTestID {
		t.Fatalf("id not replaced: %q %v", now, err)
	}
	if !strings.Contains(out, cliTestID+" → "+now) || !strings.Contains(out, "tandem agents repoint --config "+e.cfg+" --to 10.0.0.2:61620 --force") {
		t.Fatalf("output: %q", out)
	}
	if st, _ := failoverid.LoadState(e.data); st.Epoch != 3 {
		t.Fatalf("state touched: %+v", st)
	}
}

func TestIDRegenerateRefusedWhileServerRuns(t *testing.T) {
	e := newCLIEnv(t, "admin: "+cliRunningServer(t)+"\n")
	// admin given twice would be a config error: rewrite the file instead.
	b := strings.Replace(cliReadFile(t, e.cfg), "admin: 127.0.0.1:0\n", "", 1)
	os.WriteFile(e.cfg, []byte(b), 0o644)
	e.node(t, cliTestID, failoverid.State{Epoch: 1})
	code, out, errs := runCLI(idCmd, "--config", e.cfg, "--regenerate")
	if code != exitRuntime || !strings.Contains(errs, "stop the server first") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	cliOneLineErr(t, errs)
	if got, _ := failoverid.LoadID(e.data); got != cliTestID {
		t.Fatalf("id changed while running: %s", got)
	}
	// Reading the idCmd is fine while it runs.
	if code, out, _ := runCLI(idCmd, "--config", e.cfg); code != exitOK || strings.TrimSpace(out) != cliTestID {
		t.Fatalf("read while running: %d %q", code, out)
	}
}

func TestIDCorruptFile(t *testing.T) {
	e := newCLIEnv(t, "")
	os.MkdirAll(e.data, 0o700)
	path := filepath.Join(e.data, failoverid.IDFile)
	os.WriteFile(path, []byte("not-a-uuid\n"), 0o600)
	code, out, errs := runCLI(idCmd, "--config", e.cfg)
	if code != exitUsage || out != "" || !strings.Contains(errs, path) || !strings.Contains(errs, "UUID") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	cliOneLineErr(t, errs)
	if cliReadFile(t, path) != "not-a-uuid\n" {
		t.Fatal("corrupt id file was modified")
	}
	// --regenerate is the documented way out.
	code, out, errs = runCLI(idCmd, "--config", e.cfg, "--regenerate")
	if code != exitOK || !strings.Contains(out, "(corrupt) → ") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	if _, err := failoverid.LoadID(e.data); err != nil {
		t.Fatal(err)
	}
}

func TestUsageErrors(t *testing.T) {
	e := newCLIEnv(t, "")
	cases := []struct {
		fn   func([]string, *bytes.Buffer, *bytes.Buffer) int
		args []string
		want string
	}{
		{idCmd, nil, "--config FILE is required"},
		{idCmd, []string{"--config"}, "flag needs an argument"},
		{idCmd, []string{"--config", e.cfg, "--bogus"}, "not defined: -bogus"},
		{idCmd, []string{"--config", e.cfg, "extra"}, `unexpected argument "extra"`},
		{rejoinCmd, []string{"--config", e.cfg}, "--primary HOST[:PORT] is required"},
		{rejoinCmd, []string{"--config", e.cfg, "--primary", "a b:1"}, "--primary"},
		{rejoinCmd, []string{"--config", e.cfg, "--primary", "h:99999"}, "0-65535"},
		{rejoinCmd, []string{"--config", e.cfg, "--primary", "10.0.0.2"}, "own advertise address"},
		{agentsCmd, nil, "missing subcommand"},
		{agentsCmd, []string{"frobnicate"}, `unknown subcommand "frobnicate"`},
		{agentsCmd, []string{"list"}, "--config FILE is required"},
		{agentsCmd, []string{"repoint", "--config", e.cfg}, "--to HOST[:PORT] is required"},
		{agentsCmd, []string{"repoint", "--config", e.cfg, "--to", "0.0.0.0"}, "not an address"},
		{agentCmd, []string{"--config", e.cfg, "--ca", filepath.Join(e.dir, "missing.pem")}, "--ca: open"},
		{agentCmd, []string{"--config", e.cfg, "--ca", e.cfg}, "no PEM certificate found"},
	}
	for _, tc := range cases {
		code, out, errs := runCLI(tc.fn, tc.args...)
		if code != exitUsage || out != "" || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: %d %q %q, want exit 2 with %q", tc.args, code, out, errs, tc.want)
			continue
		}
		cliOneLineErr(t, errs)
	}
	if cliExists(e.data) {
		t.Fatal("bad usage wrote the data dir")
	}
}

func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		fn   func([]string, *bytes.Buffer, *bytes.Buffer) int
		args []string
		want []string
	}{
		{idCmd, []string{"--help"}, []string{"Usage: tandem id", "-regenerate", "-config"}},
		{rejoinCmd, []string{"-h"}, []string{"Usage: tandem rejoin", "-primary", "epoch is kept"}},
		{agentsCmd, []string{"--help"}, []string{"tandem agents list", "tandem agents repoint"}},
		{agentsCmd, []string{"list", "--help"}, []string{"Usage: tandem agents list", "-json"}},
		{agentsCmd, []string{"repoint", "--help"}, []string{"Usage: tandem agents repoint", "-force", "LOWER"}},
	} {
		code, out, errs := runCLI(tc.fn, tc.args...)
		if code != exitOK || errs != "" {
			t.Errorf("%v: %d %q", tc.args, code, errs)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: help lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
}

func TestBadConfigExit2NothingWritten(t *testing.T) {
	e := newCLIEnv(t, "heartbeat: {period: 10s, fail_windw: 60s}\n")
	agent := e.writeAgent(t, "a1", "stomp_interface: 10.0.0.1\nfailover_epoch: 1\n")
	for _, args := range [][]string{
		{"id"}, {"id", "--regenerate"},
		{"rejoin", "--primary", "10.0.0.1"},
		{"agents", "list"}, {"agents", "list", "--json"},
		{"agents", "repoint", "--to", "10.0.0.2", "--force"},
	} {
		var fn func([]string, *bytes.Buffer, *bytes.Buffer) int
		rest := args[1:]
		switch args[0] {
		case "id":
			fn = idCmd
		case "rejoin":
			fn = rejoinCmd
		default:
			fn = agentsCmd
		}
		code, out, errs := runCLI(fn, append(rest, "--config", e.cfg)...)
		if code != exitUsage || out != "" {
			t.Errorf("%v: %d %q %q", args, code, out, errs)
			continue
		}
		cliOneLineErr(t, errs)
		if !strings.Contains(errs, e.cfg+": heartbeat.fail_windw: unknown key (did you mean heartbeat.fail_window?) (line 6)") {
			t.Errorf("%v: error should name the file, key and line: %q", args, errs)
		}
	}
	if cliExists(e.data) {
		t.Fatal("a bad config wrote the data dir")
	}
	if cliReadFile(t, agent) != "stomp_interface: 10.0.0.1\nfailover_epoch: 1\n" {
		t.Fatal("a bad config rewrote an agent file")
	}
}

func TestMissingConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	code, _, errs := runCLI(agentsCmd, "list", "--config", path)
	if code != exitUsage || !strings.Contains(errs, path+": cannot read the config file") {
		t.Fatalf("%d %q", code, errs)
	}
}

func TestRejoinClearsFencedKeepsEpoch(t *testing.T) {
	e := newCLIEnv(t, "")
	st := failoverid.State{
		Epoch: 5, Role: "fenced",
		FencedBy: &failoverid.Token{ID: cliOtherID, Epoch: 6},
		Takeover: &failoverid.Journal{Epoch: 5, Reason: "failover", Step: failoverid.StepBeforeHook},
		Peer:     &failoverid.Peer{Node: "opsc-a", Address: "10.0.0.1:61620"},
	}
	e.node(t, cliTestID, st)
	dormant := filepath.Join(e.data, config.PrimaryLocationDormantFile)
	os.WriteFile(dormant, []byte("10.0.0.9\n"), 0o644)

	code, out, errs := runCLI(rejoinCmd, "--config", e.cfg, "--primary", "opsc-a.example.com:7000")
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	if got := cliReadFile(t, filepath.Join(e.data, config.PrimaryLocationFile)); got != "opsc-a.example.com:7000\n" {
		t.Fatalf("primary_location %q", got)
	}
	if hp, present, err := config.ReadPrimaryLocation(e.data); err != nil || !present || hp != "opsc-a.example.com:7000" {
		t.Fatalf("%q %v %v", hp, present, err)
	}
	if cliExists(dormant) {
		t.Fatal("primary_location.dormant not removed")
	}
	got, err := failoverid.LoadState(e.data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Epoch != 5 || got.FencedBy != nil || got.Takeover != nil || got.Role != "backup" || got.Peer == nil || got.Peer.Node != "opsc-a" {
		t.Fatalf("state after rejoin: %+v", got)
	}
	for _, w := range []string{"is now a backup of opsc-a.example.com:7000", "removed " + dormant, "cleared the fenced mark", "epoch stays 5",
		"abandoned the interrupted failover takeover", "next: start the server: tandem server --config " + e.cfg} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "WARNING: that takeover") {
		t.Errorf("no agents were rewritten by that takeover, no warning expected:\n%s", out)
	}
	if idCmd, _ := failoverid.LoadID(e.data); idCmd != cliTestID {
		t.Fatal("rejoin must not touch the failover id")
	}
}

func TestRejoinWarnsWhenAbandonedTakeoverRewroteAgents(t *testing.T) {
	e := newCLIEnv(t, "")
	e.node(t, cliTestID, failoverid.State{Epoch: 8, Role: "taking-over",
		Takeover: &failoverid.Journal{Epoch: 8, Reason: "failover", Step: failoverid.StepAgentsRewritten}})
	code, out, _ := runCLI(rejoinCmd, "--config", e.cfg, "--primary", "[::1]")
	if code != exitOK || !strings.Contains(out, "WARNING: that takeover may have repointed agents to epoch 8") ||
		!strings.Contains(out, "backup of [::1]:61620") {
		t.Fatalf("%d %q", code, out)
	}
}

func TestRejoinFreshDataDir(t *testing.T) {
	e := newCLIEnv(t, "")
	code, out, errs := runCLI(rejoinCmd, "--config", e.cfg, "--primary", "10.0.0.1")
	if code != exitOK {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	st, err := failoverid.LoadState(e.data)
	if err != nil || st.Epoch != 0 || st.Role != "backup" {
		t.Fatalf("%+v %v", st, err)
	}
	if hp, _, _ := config.ReadPrimaryLocation(e.data); hp != "10.0.0.1:61620" {
		t.Fatal(hp)
	}
}

func TestRejoinRefusedWhileServerRuns(t *testing.T) {
	e := newCLIEnv(t, "")
	b := strings.Replace(cliReadFile(t, e.cfg), "127.0.0.1:0", cliRunningServer(t), 1)
	os.WriteFile(e.cfg, []byte(b), 0o644)
	e.node(t, cliTestID, failoverid.State{Epoch: 2, Role: "fenced", FencedBy: &failoverid.Token{ID: cliOtherID, Epoch: 3}})
	code, out, errs := runCLI(rejoinCmd, "--config", e.cfg, "--primary", "10.0.0.1")
	if code != exitRuntime || out != "" || !strings.Contains(errs, "stop the server first") {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	cliOneLineErr(t, errs)
	if cliExists(filepath.Join(e.data, config.PrimaryLocationFile)) {
		t.Fatal("primary_location written while the server runs")
	}
	if st, _ := failoverid.LoadState(e.data); st.FencedBy == nil {
		t.Fatal("state changed while the server runs")
	}
}

func TestRejoinCorruptStateWritesNothing(t *testing.T) {
	e := newCLIEnv(t, "")
	os.MkdirAll(e.data, 0o700)
	path := filepath.Join(e.data, failoverid.StateFile)
	os.WriteFile(path, []byte(`{"epoch": 5`), 0o600)
	code, _, errs := runCLI(rejoinCmd, "--config", e.cfg, "--primary", "10.0.0.1")
	if code != exitUsage || !strings.Contains(errs, path) {
		t.Fatalf("%d %q", code, errs)
	}
	cliOneLineErr(t, errs)
	if cliExists(filepath.Join(e.data, config.PrimaryLocationFile)) {
		t.Fatal("primary_location written despite a corrupt state.json")
	}
}

// agentsFixture: one file naming this server at its epoch, one at a lower
// epoch (pointing elsewhere), one without an epoch, one at a higher epoch,
// one invalid.
func cliAgentsFixture(t *testing.T) (cliEnv, map[string]string) {
	e := newCLIEnv(t, "")
	e.node(t, cliTestID, failoverid.State{Epoch: 5, Role: "primary"})
	files := map[string]string{
		"current": e.writeAgent(t, "current", "# agent current\nstomp_interface: 10.0.0.2\nstomp_port: 61620\nfailover_id: "+cliTestID+"\nfailover_epoch: 5\n"),
		"lower":   e.writeAgent(t, "lower", "# keep me\nstomp_interface: 10.0.0.1 # old primary\nstomp_port: 61620\nuse_ssl: 0\nfailover_id: "+cliOtherID+"\nfailover_epoch: 3\nother: value\n"),
		"noepoch": e.writeAgent(t, "noepoch", "stomp_interface: 10.0.0.1\n"),
		"higher":  e.writeAgent(t, "higher", "stomp_interface: 10.0.0.7\nstomp_port: 7000\nfailover_id: "+cliOtherID+"\nfailover_epoch: 7\n"),
		"invalid": e.writeAgent(t, "invalid", "stomp_interface: 10.0.0.1\nstomp_port: lots\n"),
	}
	return e, files
}

func TestAgentsListText(t *testing.T) {
	e, files := cliAgentsFixture(t)
	code, out, errs := runCLI(agentsCmd, "list", "--config", e.cfg)
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 7 || !strings.HasPrefix(lines[0], "PATH") {
		t.Fatalf("want a header, 5 rows and a summary:\n%s", out)
	}
	if lines[6] != "5 managed, 1 at this server's epoch (5), 1 invalid" {
		t.Fatalf("summary %q", lines[6])
	}
	for _, l := range lines {
		if strings.HasPrefix(l, files["invalid"]) && !strings.Contains(l, "stomp_port: expected an integer 1-65535") {
			t.Fatalf("invalid row lacks the reason: %q", l)
		}
		if strings.HasPrefix(l, files["higher"]) && !strings.Contains(l, "10.0.0.7") || strings.HasPrefix(l, files["higher"]) && !strings.Contains(l, "7000") {
			t.Fatalf("higher row: %q", l)
		}
	}
}

func TestAgentsListJSON(t *testing.T) {
	e, files := cliAgentsFixture(t)
	code, out, errs := runCLI(agentsCmd, "list", "--config", e.cfg, "--json")
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	var got struct {
		Agents []map[string]any `json:"agents"`
		agentsListing
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	json.Unmarshal([]byte(out), &got)
	json.Unmarshal(raw["agents"], &got.Agents)
	if got.Managed != 5 || got.AtEpoch != 1 || got.Invalid != 1 || got.Epoch != 5 || got.FailoverID != cliTestID || len(got.Agents) != 5 {
		t.Fatalf("%s", out)
	}
	byPath := map[string]map[string]any{}
	for _, a := range got.Agents {
		for _, k := range []string{"path", "stomp_interface", "stomp_port", "failover_id", "failover_epoch", "error"} {
			if _, ok := a[k]; !ok {
				t.Fatalf("row lacks %q: %v", k, a)
			}
		}
		byPath[a["path"].(string)] = a
	}
	low := byPath[files["lower"]]
	if low["stomp_interface"] != "10.0.0.1" || low["stomp_port"] != float64(61620) || low["failover_id"] != cliOtherID || low["failover_epoch"] != float64(3) || low["error"] != "" {
		t.Fatalf("lower row %v", low)
	}
	if byPath[files["noepoch"]]["failover_epoch"] != nil {
		t.Fatalf("no epoch should be null: %v", byPath[files["noepoch"]])
	}
	if !strings.Contains(byPath[files["invalid"]]["error"].(string), "stomp_port") {
		t.Fatalf("invalid row %v", byPath[files["invalid"]])
	}
}

func TestAgentsListNoMatchesAndNoID(t *testing.T) {
	e := newCLIEnv(t, "")
	code, out, _ := runCLI(agentsCmd, "list", "--config", e.cfg)
	if code != exitOK || !strings.Contains(out, "no file matches") || !strings.Contains(out, "0 managed, 0 at this server's epoch (it has no failover id yet) (0), 0 invalid") {
		t.Fatalf("%d %q", code, out)
	}
	if cliExists(e.data) {
		t.Fatal("agents list must not create the data dir")
	}
}

func TestAgentsRepointCAS(t *testing.T) {
	e, files := cliAgentsFixture(t)
	before := map[string]string{}
	for k, p := range files {
		before[k] = cliReadFile(t, p)
	}
	code, out, errs := runCLI(agentsCmd, "repoint", "--config", e.cfg, "--to", "10.0.0.2")
	if code != exitRuntime || errs != "" {
		t.Fatalf("an invalid file must make it exit 1: %d %q %q", code, out, errs)
	}
	for _, name := range []string{"lower", "noepoch"} {
		a, err := agentcfg.ReadFile(files[name])
		if err != nil || a.StompInterface != "10.0.0.2" || a.StompPort != 61620 || a.FailoverID != cliTestID || a.FailoverEpoch != 5 {
			t.Fatalf("%s not repointed: %+v %v", name, a, err)
		}
	}
	if got := cliReadFile(t, files["lower"]); !strings.Contains(got, "# keep me\n") || !strings.Contains(got, "other: value\n") {
		t.Fatalf("comments/other keys lost:\n%s", got)
	}
	for _, name := range []string{"current", "higher", "invalid"} {
		if cliReadFile(t, files[name]) != before[name] {
			t.Fatalf("%s changed without --force", name)
		}
	}
	for _, w := range []string{
		"unchanged  " + files["higher"] + ": its epoch 7 is higher than this server's 5 (points at 10.0.0.7:7000; --force to override)",
		"unchanged  " + files["current"] + ": already points here at epoch 5",
		"invalid    " + files["invalid"] + ": stomp_port",
		"5 managed: 2 rewritten to 10.0.0.2:61620 (failover id " + cliTestID + ", epoch 5), 2 unchanged, 1 invalid, 0 failed",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, files["lower"]) || strings.Contains(out, "note:") {
		t.Errorf("rewritten files are only counted, and --to is the advertise address:\n%s", out)
	}
}

func TestAgentsRepointForce(t *testing.T) {
	e, files := cliAgentsFixture(t)
	os.RemoveAll(filepath.Dir(files["invalid"]))
	code, out, errs := runCLI(agentsCmd, "repoint", "--config", e.cfg, "--to", "10.0.0.3:7001", "--force")
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q %q", code, out, errs)
	}
	for name, p := range files {
		if name == "invalid" {
			continue
		}
		a, err := agentcfg.ReadFile(p)
		if err != nil || a.StompInterface != "10.0.0.3" || a.StompPort != 7001 || a.FailoverID != cliTestID || a.FailoverEpoch != 5 {
			t.Fatalf("%s not forced: %+v %v", name, a, err)
		}
	}
	for _, w := range []string{
		"note: 10.0.0.3:7001 is not this server's advertise address (10.0.0.2:61620)",
		"lowered    " + files["higher"] + ": epoch 7 → 5 (--force)",
		"WARNING: 1 file(s) had a higher epoch and were lowered by --force",
		"4 managed: ",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

func TestAgentsRepointNeedsIDAndEpoch(t *testing.T) {
	e := newCLIEnv(t, "")
	p := e.writeAgent(t, "a", "stomp_interface: 10.0.0.1\n")
	code, _, errs := runCLI(agentsCmd, "repoint", "--config", e.cfg, "--to", "10.0.0.2")
	if code != exitUsage || !strings.Contains(errs, "no failover id yet") {
		t.Fatalf("%d %q", code, errs)
	}
	e.node(t, cliTestID, failoverid.State{})
	code, _, errs = runCLI(agentsCmd, "repoint", "--config", e.cfg, "--to", "10.0.0.2", "--force")
	if code != exitUsage || !strings.Contains(errs, "epoch 0") {
		t.Fatalf("%d %q", code, errs)
	}
	cliOneLineErr(t, errs)
	if cliReadFile(t, p) != "stomp_interface: 10.0.0.1\n" {
		t.Fatal("file written")
	}
	os.WriteFile(filepath.Join(e.data, failoverid.StateFile), []byte("garbage"), 0o600)
	code, _, errs = runCLI(agentsCmd, "repoint", "--config", e.cfg, "--to", "10.0.0.2")
	if code != exitUsage || !strings.Contains(errs, failoverid.StateFile) {
		t.Fatalf("%d %q", code, errs)
	}
}

func TestRejoinAndRegenerateRefusedWhileTheDataDirIsLocked(t *testing.T) {
	e := newCLIEnv(t, "")
	e.node(t, cliTestID, failoverid.State{Epoch: 2, Role: "fenced"})
	unlock, err := failoverid.Lock(e.data) // what a running server holds
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	before := cliReadFile(t, filepath.Join(e.data, failoverid.StateFile))
	code, _, errs := runCLI(rejoinCmd, "--config", e.cfg, "--primary", "10.0.0.1")
	if code != exitRuntime || !strings.Contains(errs, "stop the server first") {
		t.Fatalf("rejoin while locked: %d %q", code, errs)
	}
	code, _, errs = runCLI(idCmd, "--config", e.cfg, "--regenerate")
	if code != exitRuntime || !strings.Contains(errs, "stop the server first") {
		t.Fatalf("id --regenerate while locked: %d %q", code, errs)
	}
	if cliExists(filepath.Join(e.data, config.PrimaryLocationFile)) || cliReadFile(t, filepath.Join(e.data, failoverid.StateFile)) != before {
		t.Fatal("a refused command wrote something")
	}
}

// A TLS key the server cannot load stops `tandem server` with exit 2 and one
// line naming the key, before anything is written; the other commands,
// which never read the key, still work with the same config.
func TestServerWithABadTLSKeyExits2OtherCommandsWork(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing-key.pem")
	cert := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(cert, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newCLIEnv(t, "listen: 127.0.0.1:0\ninsecure: true\ntls: {cert: "+cert+", key: "+missing+"}\n")
	code, out, errs := runCLI(func(a []string, o, e *bytes.Buffer) int { return runServer(a, o, e) }, "--config", e.cfg)
	if code != exitUsage || out != "" || !strings.Contains(errs, "tls.cert") {
		t.Fatalf("server: %d %q %q, want exit 2 naming tls.cert", code, out, errs)
	}
	cliOneLineErr(t, errs)
	if cliExists(e.data) {
		t.Fatal("a bad TLS key wrote the data dir")
	}
	if code, _, errs := runCLI(agentsCmd, "list", "--config", e.cfg); code != exitOK {
		t.Fatalf("agents list with the same config: %d %q", code, errs)
	}
}
