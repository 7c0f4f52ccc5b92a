package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
)

func init() {
	register("history", "every role change of this server (time, reason, old and new primary, epoch, takeover phases), from its event log", cmdHistory)
}

func cmdHistory(args []string) int { return runHistory(args, os.Stdout, os.Stderr) }

const historyUsage = `
Usage: tandem history --config FILE [--json] [--limit N]

Prints every role change of this server from its event log (DATA/events.jsonl,
or the config's event_log), oldest first: when, the new ROLE, the REASON
(start, failover, switchover, clean-stop, fence, resume), the old and the new
primary (FROM→TO), the EPOCH and the one-line why. A completed takeover adds
its phase durations (epoch persisted, before hook, files rewritten, location
dormant, first heartbeat); fences (by whom), maintenance on/off and refused
starts are listed too. Times are local.

It reads the file, so it works whether or not the server runs. Heartbeat and
command lines (event_log_messages: true) are skipped.

Exit codes: 0 ok (also "no history yet" when the file does not exist),
1 the file cannot be read, 2 bad usage or bad config.
`

// historyKinds are the event kinds history shows; heartbeat and command
// lines are skipped.
var historyKinds = map[string]bool{
	eventlog.KindRole: true, eventlog.KindFenced: true, eventlog.KindTakeover: true,
	eventlog.KindMaintenance: true, eventlog.KindRefused: true, eventlog.KindDeposed: true,
}

// historyEntry is one event of `tandem history --json`. Every key is always
// present (stable for scripts).
type historyEntry struct {
	Time       string           `json:"time"` // local, RFC 3339 with ms
	TMS        int64            `json:"t_ms"`
	Node       string           `json:"node"`
	Kind       string           `json:"kind"`
	Role       string           `json:"role"`
	Reason     string           `json:"reason"`
	From       string           `json:"from"`
	To         string           `json:"to"`
	Epoch      uint64           `json:"epoch"`
	FailoverID string           `json:"failover_id"`
	Detail     string           `json:"detail"`
	PhasesMS   map[string]int64 `json:"phases_ms"`
}

func newHistoryEntry(e eventlog.Event) historyEntry {
	return historyEntry{
		Time: time.UnixMilli(e.TMS).Local().Format("2006-01-02T15:04:05.000Z07:00"), TMS: e.TMS,
		Node: e.Node, Kind: e.Kind, Role: e.Role, Reason: e.Reason, From: e.From, To: e.To,
		Epoch: e.Epoch, FailoverID: e.FailoverID, Detail: e.Detail, PhasesMS: e.PhasesMS,
	}
}

// readHistory streams the event log at path and returns its history events
// (historyKinds only, at most limit of the last ones when limit > 0), in
// file order, and the total number kept before the limit. Lines it cannot
// parse (cut by a crash) are skipped, as eventlog.Read does; heartbeat and
// command lines are skipped before they are decoded, so a log written with
// event_log_messages: true costs little.
func readHistory(path string, limit int) ([]eventlog.Event, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	var out []eventlog.Event
	total := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.Contains(line, []byte(`"kind":"heartbeat"`)) || bytes.Contains(line, []byte(`"kind":"command"`)) {
			continue
		}
		var e eventlog.Event
		if json.Unmarshal(line, &e) != nil || !historyKinds[e.Kind] {
			continue
		}
		total++
		out = append(out, e)
		if limit > 0 && len(out) > 2*limit+64 {
			out = append(out[:0], out[len(out)-limit:]...)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, 0, fmt.Errorf("read %s: %v", path, err)
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, total, nil
}

// lastEvents are the last role change of the log at path and, when a
// start was refused after it, the last refusal (nil when none or the file
// cannot be read).
func lastEvents(path string) (role, refused *eventlog.Event) {
	evs, _, err := readHistory(path, 0)
	if err != nil {
		return nil, nil
	}
	for i := len(evs) - 1; i >= 0; i-- {
		switch evs[i].Kind {
		case eventlog.KindRole:
			return &evs[i], refused
		case eventlog.KindRefused:
			if refused == nil {
				refused = &evs[i]
			}
		}
	}
	return nil, refused
}

// phaseLabels name a takeover's phases in order (node.Phase*).
var phaseLabels = []struct{ key, label string }{
	{"epoch_persisted", "epoch"},
	{"before_hook", "hook"},
	{"files_rewritten", "files"},
	{"location_dormant", "dormant"},
	{"first_heartbeat", "first heartbeat"},
}

// formatPhases is "epoch 3ms, hook 0ms, files 41ms, dormant 2ms, first
// heartbeat 5ms"; phases it does not know follow, by name.
func formatPhases(p map[string]int64) string {
	var parts []string
	known := map[string]bool{}
	for _, pl := range phaseLabels {
		known[pl.key] = true
		if ms, ok := p[pl.key]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", pl.label, fmtMS(ms)))
		}
	}
	var rest []string
	for k := range p {
		if !known[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		parts = append(parts, fmt.Sprintf("%s %s", k, fmtMS(p[k])))
	}
	return strings.Join(parts, ", ")
}

// fmtMS prints a duration in ms as Go does ("41ms", "1.2s").
func fmtMS(ms int64) string {
	if ms >= 0 && ms < 1000 {
		return strconv.FormatInt(ms, 10) + "ms"
	}
	return (time.Duration(ms) * time.Millisecond).Round(100 * time.Millisecond).String()
}

// fromTo is "a→b" for a role change that moved the primary role, "-" else.
func fromTo(from, to string) string {
	if from == "" && to == "" {
		return "-"
	}
	return nonEmpty(from, "?") + "→" + nonEmpty(to, "?")
}

func nonEmpty(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}

// historyRow is the table row of one event: ROLE, REASON, FROM→TO, EPOCH,
// DETAIL; extra is a line printed under it (a takeover's phases).
func historyRow(e eventlog.Event) (cols []string, extra string) {
	role, reason, ft, detail := "-", e.Reason, "-", e.Detail
	switch e.Kind {
	case eventlog.KindRole:
		to := e.To
		if to == "" && e.Role == "taking-over" {
			to = e.Node // the log names only the primary being replaced
		}
		role, ft = e.Role, fromTo(e.From, to)
	case eventlog.KindTakeover:
		reason = "takeover done"
		if len(e.PhasesMS) > 0 {
			extra = "phases: " + formatPhases(e.PhasesMS)
		}
	case eventlog.KindFenced:
		reason = "fenced"
		by := e.FailoverID
		if by == "" {
			by = "?"
		}
		detail = fmt.Sprintf("by %s at epoch %d", by, e.Epoch)
		if e.Detail != "" {
			detail += ": " + e.Detail
		}
	case eventlog.KindMaintenance:
		reason, detail = "maintenance "+nonEmpty(e.Detail, "?"), ""
		if e.Detail == "on" {
			detail = "automatic failover paused"
		} else if e.Detail == "off" {
			detail = "automatic failover resumed"
		}
	case eventlog.KindRefused:
		reason = "start refused"
	case eventlog.KindDeposed:
		reason = "stopped acting (arbiter)"
	}
	return []string{nonEmpty(role, "-"), nonEmpty(reason, "-"), ft, strconv.FormatUint(e.Epoch, 10), nonEmpty(detail, "-")}, extra
}

// localTime is an event's wall-clock time in the local zone.
func localTime(tms int64) string {
	return time.UnixMilli(tms).Local().Format("2006-01-02 15:04:05")
}

// printHistory prints the table: aligned columns (computed here: a
// takeover's phases line under its row would break text/tabwriter's
// columns). A NODE column is added when the log holds several nodes' lines
// (a shared event_log).
func printHistory(w io.Writer, evs []eventlog.Event) {
	nodes := map[string]bool{}
	for _, e := range evs {
		nodes[e.Node] = true
	}
	withNode := len(nodes) > 1
	head := []string{"TIME"}
	if withNode {
		head = append(head, "NODE")
	}
	head = append(head, "ROLE", "REASON", "FROM→TO", "EPOCH", "DETAIL")
	rows := [][]string{head}
	extras := []string{""}
	for _, e := range evs {
		cols, extra := historyRow(e)
		r := []string{localTime(e.TMS)}
		if withNode {
			r = append(r, nonEmpty(e.Node, "?"))
		}
		rows = append(rows, append(r, cols...))
		extras = append(extras, extra)
	}
	width := make([]int, len(head))
	for _, r := range rows {
		for i, c := range r[:len(r)-1] {
			if n := len([]rune(c)); n > width[i] {
				width[i] = n
			}
		}
	}
	var b strings.Builder
	for i, r := range rows {
		for j, c := range r {
			b.WriteString(c)
			if j < len(r)-1 {
				b.WriteString(strings.Repeat(" ", width[j]-len([]rune(c))+2))
			}
		}
		b.WriteByte('\n')
		if extras[i] != "" {
			b.WriteString(strings.Repeat(" ", width[0]+2))
			b.WriteString(extras[i])
			b.WriteByte('\n')
		}
	}
	io.WriteString(w, b.String())
}

func runHistory(args []string, stdout, stderr io.Writer) int {
	c := newOfflineCmd("history", historyUsage, stdout, stderr)
	asJSON := c.Bool("json", false, "print the events as a JSON array (keys: time, t_ms, node, kind, role, reason, from, to, epoch, failover_id, detail, phases_ms)")
	limit := c.Int("limit", 0, "show only the last N events (0: all)")
	if code, ok := c.parse(args); !ok {
		return code
	}
	if *limit < 0 {
		return c.usageError("--limit %d: expected 0 (all) or a positive number", *limit)
	}
	cfg, code, ok := c.loadConfig()
	if !ok {
		return code
	}
	path := cfg.EventLogFile()
	evs, total, err := readHistory(path, *limit)
	if errors.Is(err, fs.ErrNotExist) {
		if *asJSON {
			fmt.Fprintln(stdout, "[]")
		}
		msg := fmt.Sprintf("no history yet: %s does not exist (the server writes it from its first start)", path)
		if _, derr := os.Stat(cfg.DataDir); errors.Is(derr, fs.ErrNotExist) {
			msg = fmt.Sprintf("no history yet: %s does not exist, nor the data dir %s (the server never started with this config)", path, cfg.DataDir)
		}
		if *asJSON {
			fmt.Fprintln(stderr, msg)
		} else {
			fmt.Fprintln(stdout, msg)
		}
		return exitOK
	}
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) && errors.Is(err, fs.ErrPermission) {
			return c.fail(exitRuntime, "cannot read %s: permission denied: run this as the user the server runs as (e.g. sudo -u tandem)", path)
		}
		return c.fail(exitRuntime, "%v", err)
	}
	if *asJSON {
		out := make([]historyEntry, 0, len(evs))
		for _, e := range evs {
			out = append(out, newHistoryEntry(e))
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return exitOK
	}
	if len(evs) == 0 {
		fmt.Fprintf(stdout, "no history yet: %s holds no role change\n", path)
		return exitOK
	}
	printHistory(stdout, evs)
	if total > len(evs) {
		fmt.Fprintf(stdout, "(the last %d of %d events; --limit 0 for all)\n", len(evs), total)
	}
	return exitOK
}
