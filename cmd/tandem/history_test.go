package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
)

func historyCmd(args []string, o, e *bytes.Buffer) int { return runHistory(args, o, e) }

// t0 is the first event's time in the hand-written logs.
const t0 = int64(1717236000000)

// writeEvents writes an events.jsonl by hand: the events, then raw lines.
func writeEvents(t *testing.T, path string, evs []eventlog.Event, raw ...string) {
	t.Helper()
	var b bytes.Buffer
	for _, e := range evs {
		line, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	for _, r := range raw {
		b.WriteString(r + "\n")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o640); err != nil {
		t.Fatal(err)
	}
}

// aFailover is a backup's log: start, a failover with its phases, a
// maintenance window, a fence and a refused start; heartbeat lines and a
// line cut by a crash in between.
func aFailover() []eventlog.Event {
	return []eventlog.Event{
		{TMS: t0, Node: "opsc-b", Kind: eventlog.KindRole, Role: "backup", Reason: "start", Epoch: 1, Detail: "backup of the primary at 10.0.0.1:61620"},
		{TMS: t0 + 1000, Node: "opsc-b", Kind: eventlog.KindHeartbeat, Epoch: 1, Seq: 7},
		{TMS: t0 + 300000, Node: "opsc-b", Kind: eventlog.KindRole, Role: "taking-over", Reason: "failover", From: "opsc-a", Detail: "taking over from opsc-a (failover): no heartbeat for 60s"},
		{TMS: t0 + 300050, Node: "opsc-b", Kind: eventlog.KindRole, Role: "primary", Reason: "failover", From: "opsc-a", To: "opsc-b", Epoch: 2, Detail: "took over from opsc-a at epoch 2 (failover)"},
		{TMS: t0 + 300051, Node: "opsc-b", Kind: eventlog.KindTakeover, Epoch: 2, Detail: "decision to first heartbeat: 51ms",
			PhasesMS: map[string]int64{"epoch_persisted": 3, "before_hook": 0, "files_rewritten": 41, "location_dormant": 2, "first_heartbeat": 5}},
		{TMS: t0 + 300100, Node: "opsc-b", Kind: eventlog.KindCommand, Epoch: 2, Seq: 1},
		{TMS: t0 + 400000, Node: "opsc-b", Kind: eventlog.KindMaintenance, Epoch: 2, Detail: "on"},
		{TMS: t0 + 410000, Node: "opsc-b", Kind: eventlog.KindMaintenance, Epoch: 2, Detail: "off"},
		{TMS: t0 + 500000, Node: "opsc-b", Kind: eventlog.KindFenced, FailoverID: cliOtherID, Epoch: 3, Detail: "agent n1 reports epoch 3"},
		{TMS: t0 + 500001, Node: "opsc-b", Kind: eventlog.KindRole, Role: "fenced", Reason: "fence", From: "opsc-b", To: "opsc-a", Epoch: 2, Detail: "fenced by opsc-a at epoch 3"},
		{TMS: t0 + 600000, Node: "opsc-b", Kind: eventlog.KindRefused, Epoch: 2, Detail: "node: refused to act as primary: this node was fenced"},
	}
}

func TestHistoryTable(t *testing.T) {
	e := newCLIEnv(t, "")
	writeEvents(t, filepath.Join(e.data, "events.jsonl"), aFailover(), `{"t_ms":1717236,"node":"opsc-b","kind":"ro`)
	code, out, errs := runCLI(historyCmd, "--config", e.cfg)
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q", code, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 11 { // header, 9 events, the phases line
		t.Fatalf("%d lines:\n%s", len(lines), out)
	}
	if !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[0], "ROLE") || !strings.Contains(lines[0], "REASON") ||
		!strings.Contains(lines[0], "FROM→TO") || !strings.Contains(lines[0], "EPOCH") {
		t.Fatalf("header %q", lines[0])
	}
	at := func(ms int64) string { return time.UnixMilli(ms).Local().Format("2006-01-02 15:04:05") }
	for i, want := range [][]string{
		{at(t0), "backup", "start", "1", "backup of the primary at 10.0.0.1:61620"},
		{at(t0 + 300000), "taking-over", "failover", "opsc-a→opsc-b"},
		{at(t0 + 300050), "primary", "failover", "opsc-a→opsc-b", "2", "took over from opsc-a"},
		{at(t0 + 300051), "takeover done", "decision to first heartbeat: 51ms"},
		{"phases: epoch 3ms, hook 0ms, files 41ms, dormant 2ms, first heartbeat 5ms"},
		{"maintenance on", "automatic failover paused"},
		{"maintenance off"},
		{"fenced", "by " + cliOtherID + " at epoch 3: agent n1 reports epoch 3"},
		{"fenced", "fence", "opsc-b→opsc-a", "fenced by opsc-a at epoch 3"},
		{"start refused", "this node was fenced"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("line %d lacks %q: %q", i+1, w, lines[i+1])
			}
		}
	}
	// The columns line up: ROLE starts at the same offset on every row.
	col := strings.Index(lines[0], "ROLE")
	if !strings.HasPrefix(lines[3][col:], "primary") || strings.Index(lines[5], "phases:") != col {
		t.Errorf("columns do not line up:\n%s", out)
	}
	if strings.Contains(out, "heartbeat  ") || strings.Contains(out, "command") {
		t.Errorf("heartbeat/command lines must be skipped:\n%s", out)
	}

	code, out, _ = runCLI(historyCmd, "--config", e.cfg, "--limit", "2")
	if code != exitOK || strings.Count(out, "\n") != 4 || !strings.Contains(out, "start refused") || !strings.Contains(out, "the last 2 of 9 events") {
		t.Fatalf("--limit 2: %d\n%s", code, out)
	}
}

func TestHistoryJSON(t *testing.T) {
	e := newCLIEnv(t, "")
	writeEvents(t, filepath.Join(e.data, "events.jsonl"), aFailover())
	code, out, errs := runCLI(historyCmd, "--config", e.cfg, "--json")
	if code != exitOK || errs != "" {
		t.Fatalf("%d %q", code, errs)
	}
	var got []map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(got) != 9 {
		t.Fatalf("%d events", len(got))
	}
	for i, m := range got {
		for _, k := range []string{"time", "kind", "role", "reason", "from", "to", "epoch", "detail", "phases_ms"} {
			if _, ok := m[k]; !ok {
				t.Errorf("event %d lacks the key %q: %v", i, k, m)
			}
		}
		if _, err := time.Parse(time.RFC3339, m["time"].(string)); err != nil {
			t.Errorf("time %v: %v", m["time"], err)
		}
	}
	p := got[2]
	if p["kind"] != "role" || p["role"] != "primary" || p["reason"] != "failover" || p["from"] != "opsc-a" || p["to"] != "opsc-b" || p["epoch"] != 2.0 {
		t.Errorf("the failover: %v", p)
	}
	ph, _ := got[3]["phases_ms"].(map[string]any)
	if got[3]["kind"] != "takeover" || ph["files_rewritten"] != 41.0 || ph["first_heartbeat"] != 5.0 {
		t.Errorf("the takeover: %v", got[3])
	}
}

func TestHistoryWithoutALog(t *testing.T) {
	e := newCLIEnv(t, "")
	// No data dir at all.
	code, out, errs := runCLI(historyCmd, "--config", e.cfg)
	if code != exitOK || errs != "" || !strings.HasPrefix(out, "no history yet") || strings.Count(out, "\n") != 1 || !strings.Contains(out, "data dir") {
		t.Fatalf("no data dir: %d %q %q", code, out, errs)
	}
	// A data dir, no file.
	e.node(t, cliTestID, stateAt(1, "primary"))
	code, out, errs = runCLI(historyCmd, "--config", e.cfg)
	if code != exitOK || errs != "" || !strings.HasPrefix(out, "no history yet: "+filepath.Join(e.data, "events.jsonl")+" does not exist") {
		t.Fatalf("no file: %d %q %q", code, out, errs)
	}
	code, out, _ = runCLI(historyCmd, "--config", e.cfg, "--json")
	if code != exitOK || strings.TrimSpace(out) != "[]" {
		t.Fatalf("--json without a file: %d %q", code, out)
	}
	// Only heartbeat lines.
	writeEvents(t, filepath.Join(e.data, "events.jsonl"), []eventlog.Event{{TMS: t0, Node: "opsc-b", Kind: eventlog.KindHeartbeat}})
	code, out, _ = runCLI(historyCmd, "--config", e.cfg)
	if code != exitOK || !strings.HasPrefix(out, "no history yet") {
		t.Fatalf("heartbeats only: %d %q", code, out)
	}
	// event_log names another file.
	other := filepath.Join(e.dir, "audit", "ev.jsonl")
	e2 := newCLIEnv(t, "event_log: "+other+"\n")
	writeEvents(t, other, aFailover()[:1])
	code, out, _ = runCLI(historyCmd, "--config", e2.cfg)
	if code != exitOK || !strings.Contains(out, "backup of the primary") {
		t.Fatalf("event_log: %d %q", code, out)
	}
}

func TestHistoryBadUsageAndConfig(t *testing.T) {
	e := newCLIEnv(t, "heartbeat: {period: 10s, fail_windw: 60s}\n")
	code, out, errs := runCLI(historyCmd, "--config", e.cfg)
	if code != exitUsage || out != "" || !strings.Contains(errs, "fail_windw") {
		t.Fatalf("bad config: %d %q %q", code, out, errs)
	}
	cliOneLineErr(t, errs)
	for _, args := range [][]string{nil, {"--config", e.cfg, "--limit", "-1"}, {"--config", e.cfg, "extra"}} {
		code, _, errs := runCLI(historyCmd, args...)
		if code != exitUsage {
			t.Errorf("%v: exit %d", args, code)
		}
		cliOneLineErr(t, errs)
	}
	code, out, _ = runCLI(historyCmd, "--help")
	if code != exitOK || !strings.Contains(out, "Usage: tandem history") || !strings.Contains(out, "-limit") {
		t.Fatalf("help: %d %q", code, out)
	}
}

func TestHistoryShowsAnArbiterDeposal(t *testing.T) {
	e := newCLIEnv(t, "")
	writeEvents(t, filepath.Join(e.data, "events.jsonl"), []eventlog.Event{
		{TMS: t0, Node: "opsc-a", Kind: eventlog.KindDeposed, Epoch: 4, Detail: "the arbiter's term is over (no lease renewal for 3s (renew_deadline 3s)); failsafe is off"},
	}, "")
	code, out, _ := runCLI(historyCmd, "--config", e.cfg)
	if code != exitOK || !strings.Contains(out, "stopped acting (arbiter)") || !strings.Contains(out, "no lease renewal for 3s") {
		t.Fatalf("%d\n%s", code, out)
	}
}
