package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/node"
)

func init() {
	register("members", "every server of the pair as one node sees it: role, epoch, priority, health, last heard, address, maintenance", func(a []string) int { return runMembers(a, os.Stdout, os.Stderr) })
}

// defaultPriority is every server's priority until priorities are
// configurable (ARCHITECTURE, "Groups": priority 1..255, default 100).
const defaultPriority = 100

// member is one row of `tandem members`.
type member struct {
	Node              string `json:"node"`
	Role              string `json:"role"`
	Epoch             uint64 `json:"epoch"`
	Priority          int    `json:"priority"`
	EffectivePriority int    `json:"effective_priority"`
	// Health: "ok" for the node that answered; for its peer "ok",
	// "silent", "never heard", "stopped (clean stop)", or "unknown (…)".
	Health string `json:"health"`
	// LastHeardMS is how long ago the answering node last heard this one
	// (0 for the answering node itself, -1 never).
	LastHeardMS int64  `json:"last_heard_ms"`
	Address     string `json:"address"`
	Maintenance bool   `json:"maintenance"`
	FailoverID  string `json:"failover_id"`
	// Self marks the node whose status the list comes from.
	Self bool `json:"self"`
}

// statusExtras are status keys that node.Status does not have (yet): the
// group version's priorities and a primary's maintenance as its backup
// sees it. Read when present, so members shows them once servers send them.
type statusExtras struct {
	Priority          *int `json:"priority"`
	EffectivePriority *int `json:"effective_priority"`
	Primary           *struct {
		Maintenance *bool `json:"maintenance"`
	} `json:"primary"`
}

// members is the member list from one node's status. period is the
// heartbeat period used to call a primary silent when the status has no
// warning saying so (2 × period without a heartbeat).
//
// ownMaint, when known (--config: state.json), is the answering node's own
// maintenance setting.
func members(s node.Status, ex statusExtras, period time.Duration, ownMaint *bool) (rows []member, notes []string) {
	self := member{Node: s.Node, Role: s.Role, Epoch: s.Epoch, Priority: defaultPriority, EffectivePriority: defaultPriority,
		Health: "ok", Address: s.Advertise, Maintenance: s.Maintenance, FailoverID: s.FailoverID, Self: true}
	if ex.Priority != nil {
		self.Priority = *ex.Priority
	}
	if ex.EffectivePriority != nil {
		self.EffectivePriority = *ex.EffectivePriority
	} else if ex.Priority != nil {
		self.EffectivePriority = *ex.Priority
	}
	rows = append(rows, self)
	hasWarning := func(parts ...string) bool {
		for _, w := range s.Warnings {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(w, p)
			}
			if all {
				return true
			}
		}
		return false
	}
	peer := func(m member) member {
		m.Priority, m.EffectivePriority = defaultPriority, defaultPriority
		return m
	}
	switch {
	case s.Primary != nil:
		p := s.Primary
		m := peer(member{Node: nonEmpty(p.Node, "(not heard yet)"), Role: "primary", Epoch: p.Epoch, Address: p.Advertise,
			LastHeardMS: p.LastHeartbeatAgeMS, FailoverID: p.FailoverID})
		switch {
		case ex.Primary != nil && ex.Primary.Maintenance != nil:
			// The primary's announcement is in the status: its row shows
			// it; this node's own setting is state.json's when readable.
			m.Maintenance = *ex.Primary.Maintenance
			if m.Maintenance && ownMaint != nil {
				rows[0].Maintenance = *ownMaint
			}
		case s.Maintenance && ownMaint != nil && !*ownMaint:
			// A backup's "maintenance" is also on when its primary's
			// heartbeats announce it; its own setting (state.json) is off:
			// it was set on the primary.
			m.Maintenance, rows[0].Maintenance = true, false
		}
		switch {
		case !p.Heard && p.LastHeartbeatAgeMS < 0:
			m.Health = "never heard"
		case p.LastHeartbeatAgeMS < 0:
			m.Health = "silent" // heard before a restart, not since
		case hasWarning("the primary has been silent"), period > 0 && p.SilentForMS > 2*period.Milliseconds():
			m.Health = "silent"
		default:
			m.Health = "ok"
		}
		if m.Address == "" {
			m.Address = "-"
		}
		rows = append(rows, m)
	case s.Backup != nil:
		b := s.Backup
		m := peer(member{Node: nonEmpty(b.Node, b.FailoverID), Role: "backup", Epoch: b.Epoch, Address: nonEmpty(b.Address, "-"),
			LastHeardMS: b.AgeMS, Maintenance: b.Maintenance, FailoverID: b.FailoverID})
		switch {
		case hasWarning("backup "+b.Node+" stopped", "clean stop"):
			m.Health, m.Role = "stopped (clean stop)", "stopped"
		case b.AgeMS < 0:
			m.Health = "never heard"
		case !s.BackupConfigured:
			m.Health = "silent"
		default:
			m.Health = "ok"
		}
		rows = append(rows, m)
	case s.FencedBy != nil:
		f := s.FencedBy
		rows = append(rows, peer(member{Node: nonEmpty(f.Node, f.FailoverID), Role: "primary", Epoch: f.Epoch, Address: nonEmpty(f.Address, "-"),
			Health: "unknown (it fenced this node)", LastHeardMS: -1, FailoverID: f.FailoverID}))
	case s.Role == "primary":
		notes = append(notes, "no backup has replied to this primary: automatic failover is NOT enabled")
	}
	return rows, notes
}

// offlineMembers lists a stopped server and the peer state.json remembers.
func offlineMembers(o offlineStatus, st failoverid.State) []member {
	rows := []member{{Node: o.Node, Role: "stopped", Epoch: o.Epoch, Priority: defaultPriority, EffectivePriority: defaultPriority,
		Health: "stopped", LastHeardMS: -1, Address: o.Advertise, Maintenance: o.Maintenance, FailoverID: o.FailoverID, Self: true}}
	if p := st.Peer; p != nil && (p.Node != "" || p.FailoverID != "") {
		role := "?"
		switch {
		case o.FencedBy != nil && o.FencedBy.FailoverID == p.FailoverID, o.LastRole == "backup":
			role = "primary"
		case o.LastRole == "primary":
			role = "backup"
		}
		rows = append(rows, member{Node: nonEmpty(p.Node, p.FailoverID), Role: role, Epoch: p.Epoch, Priority: defaultPriority, EffectivePriority: defaultPriority,
			Health: "unknown (this node is stopped)", LastHeardMS: -1, Address: nonEmpty(p.Address, "-"), FailoverID: p.FailoverID})
	}
	return rows
}

func heardText(m member) string {
	switch {
	case m.Self && m.Role != "stopped":
		return "now"
	case strings.HasPrefix(m.Health, "unknown"):
		return "-"
	case m.LastHeardMS < 0:
		return "never"
	default:
		return fmtMS(m.LastHeardMS) + " ago"
	}
}

func printMembers(w io.Writer, rows []member, notes []string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tEPOCH\tPRIORITY\tEFFECTIVE\tHEALTH\tLAST_HEARD\tADDRESS\tMAINTENANCE")
	for _, m := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", m.Node, strings.ToUpper(m.Role), m.Epoch, m.Priority, m.EffectivePriority,
			m.Health, heardText(m), nonEmpty(m.Address, "-"), map[bool]string{true: "ON", false: "off"}[m.Maintenance])
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintln(w, "WARNING:", n)
	}
}

func runMembers(args []string, stdout, stderr io.Writer) int {
	var asJSON *bool
	fs, resolve, code, ok := parseControl("members", `Usage: tandem members [--admin HOST:PORT | --config FILE] [--json]

Lists every server of the pair as the server asked sees it, one line each:
NODE ROLE EPOCH PRIORITY EFFECTIVE HEALTH LAST_HEARD ADDRESS MAINTENANCE.
The server asked is "ok" and heard "now"; its peer (the primary a backup
watches, or the backup that replies to a primary) is "ok", "silent", "never
heard" or "stopped (clean stop)". MAINTENANCE shows where maintenance is on.
PRIORITY and EFFECTIVE are 100 for now: priorities are not configurable yet.

With --config, a stopped server is listed from its data dir (and the peer
its state.json remembers). --json prints {"members": [{node, role, epoch,
priority, effective_priority, health, last_heard_ms, address, maintenance,
failover_id, self}]}.
`, args, stdout, stderr, false, func(fs *flag.FlagSet) { asJSON = fs.Bool("json", false, `print {"members": [...]}`) })
	if !ok {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem members: unexpected argument", fs.Arg(0))
		return exitUsage
	}
	target, err := resolve()
	if err != nil {
		fmt.Fprintln(stderr, "tandem members:", err)
		return exitUsage
	}
	var rows []member
	var notes []string
	var raw json.RawMessage
	if code, err := call(http.MethodGet, target, "/status", "", &raw); err != nil {
		if code != 0 || target.cfg == nil {
			fmt.Fprintln(stderr, "tandem members:", err)
			return exitRuntime
		}
		if dataDirLocked(target.cfg.DataDir) {
			fmt.Fprintf(stderr, "tandem members: a server runs on %s (it holds %s) but its admin API does not answer: %v\n", target.cfg.DataDir, failoverid.LockFile, err)
			return exitRuntime
		}
		o, oerr := readOffline(target.cfg, target.cfgPath)
		if oerr != nil {
			fmt.Fprintln(stderr, "tandem members:", singleLine(strings.TrimPrefix(oerr.Error(), errBadDataDir.Error()+": ")))
			if errors.Is(oerr, errBadDataDir) {
				return exitUsage
			}
			return exitRuntime
		}
		st, _ := failoverid.LoadState(target.cfg.DataDir)
		rows = offlineMembers(o, st)
		notes = append(notes, fmt.Sprintf("server %s is STOPPED (nothing answers at %s): listed from its data dir", o.Node, target.addr))
	} else {
		var s node.Status
		var ex statusExtras
		if err := json.Unmarshal(raw, &s); err != nil {
			fmt.Fprintln(stderr, "tandem members: unexpected answer:", err)
			return exitRuntime
		}
		json.Unmarshal(raw, &ex)
		period := config.DefaultPeriod
		var ownMaint *bool
		if target.cfg != nil {
			period = target.cfg.Heartbeat.Period
			if st, err := failoverid.LoadState(target.cfg.DataDir); err == nil {
				ownMaint = &st.Maintenance
			}
		}
		rows, notes = members(s, ex, period, ownMaint)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(map[string][]member{"members": rows})
		return exitOK
	}
	printMembers(stdout, rows, notes)
	return exitOK
}
