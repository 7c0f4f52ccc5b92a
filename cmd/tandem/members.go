package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/node"
)

func init() {
	register("members", "every server of the group as one node sees it: role, epoch, priority, health, last heard, address, maintenance", func(a []string) int { return runMembers(a, os.Stdout, os.Stderr) })
}

// member is one row of `tandem members`. Epoch, Priority and
// EffectivePriority are null (JSON) and "-" (table) when the answering
// node does not know them: a backup other than the last one that replied,
// the peer of a stopped server, a primary never heard.
type member struct {
	Node              string  `json:"node"`
	Role              string  `json:"role"`
	Epoch             *uint64 `json:"epoch"`
	Priority          *int    `json:"priority"`
	EffectivePriority *int    `json:"effective_priority"`
	// Health: for the node that answered "ok" or "down: CHECK[,CHECK]"
	// (its health checks); for the primary a backup watches "ok",
	// "silent", "never heard" or "down (effective 0)"; for a backup of the
	// group "ok", "down (effective 0)", "manual (priority 0)",
	// "maintenance", "silent", "never heard" or "stopped (clean stop)";
	// "unknown (…)" when the answering node cannot tell.
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

// ineligibleWhy is status "ineligible" without its closing "not eligible
// to take over" (the line around it says so already).
func ineligibleWhy(s string) string { return strings.TrimSuffix(s, ": not eligible to take over") }

func ptr[T any](v T) *T { return &v }

// selfHealth is the answering node's HEALTH: "ok", or the checks down.
func selfHealth(checks []node.CheckStatus) string {
	var down []string
	for _, c := range checks {
		if !c.Up {
			down = append(down, c.Name)
		}
	}
	if len(down) == 0 {
		return "ok"
	}
	return "down: " + strings.Join(down, ",")
}

// groupHealth is a group member's HEALTH from what its replies (or the
// primary's heartbeats) say of it.
func groupHealth(g node.GroupMember) string {
	switch {
	case g.Maintenance:
		return "maintenance"
	case g.Priority == 0:
		// A priority-0 server announces effective 0 whatever its checks
		// say: it is not down, it only never takes over by itself.
		return "manual (priority 0)"
	case g.EffectivePriority > 0:
		return "ok"
	default:
		return "down (effective 0)"
	}
}

// members is the member list from one node's status. period is the
// heartbeat period used to call a primary silent when the status has no
// warning saying so (2 × period without a heartbeat).
//
// ownMaint, when known (--config: state.json), is the answering node's own
// maintenance setting.
func members(s node.Status, period time.Duration, ownMaint *bool) (rows []member, notes []string) {
	self := member{Node: s.Node, Role: s.Role, Epoch: ptr(s.Epoch), Priority: ptr(s.Priority), EffectivePriority: ptr(s.EffectivePriority),
		Health: selfHealth(s.Checks), Address: s.Advertise, Maintenance: s.Maintenance, FailoverID: s.FailoverID, Self: true}
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
	switch {
	case s.Primary != nil:
		p := s.Primary
		m := member{Node: nonEmpty(p.Node, "(not heard yet)"), Role: "primary", Epoch: ptr(p.Epoch), Address: p.Advertise,
			LastHeardMS: p.LastHeartbeatAgeMS, FailoverID: p.FailoverID}
		if p.Heard || p.LastHeartbeatAgeMS >= 0 {
			m.Priority, m.EffectivePriority = ptr(p.Priority), ptr(p.EffectivePriority)
		}
		if p.Maintenance {
			// The primary's heartbeats announce maintenance: its row shows
			// it. A backup's own "maintenance" is then on too; its own
			// setting is state.json's, when readable (--config).
			m.Maintenance = true
			if ownMaint != nil {
				rows[0].Maintenance = *ownMaint
			}
		}
		switch {
		case !p.Heard && p.LastHeartbeatAgeMS < 0:
			m.Health = "never heard"
		case p.LastHeartbeatAgeMS < 0:
			m.Health = "silent" // heard before a restart, not since
		case hasWarning("the primary has been silent"), period > 0 && p.SilentForMS > 2*period.Milliseconds():
			m.Health = "silent"
		case p.Priority > 0 && p.EffectivePriority == 0:
			m.Health = "down (effective 0)"
		default:
			m.Health = "ok"
		}
		if m.Address == "" {
			m.Address = "-"
		}
		rows = append(rows, m)
	case s.FencedBy != nil:
		f := s.FencedBy
		rows = append(rows, member{Node: nonEmpty(f.Node, f.FailoverID), Role: "primary", Epoch: ptr(f.Epoch), Address: nonEmpty(f.Address, "-"),
			Health: "unknown (it fenced this node)", LastHeardMS: -1, FailoverID: f.FailoverID})
	}

	// The group's backups: on a primary those replying to it (best
	// first), on a backup the other backups it knows of.
	role := "backup"
	listed := map[string]bool{}
	seen := func(id string) bool {
		if id == "" {
			return false
		}
		was := listed[id]
		listed[id] = true
		return was
	}
	seen(s.FailoverID)
	if s.Primary != nil {
		seen(s.Primary.FailoverID)
	}
	for _, g := range s.Backups {
		if seen(g.FailoverID) {
			continue
		}
		m := member{Node: nonEmpty(g.Node, g.FailoverID), Role: role, Priority: ptr(g.Priority), EffectivePriority: ptr(g.EffectivePriority),
			Health: groupHealth(g), LastHeardMS: g.LastReplyAgeMS, Address: nonEmpty(g.Address, "-"), Maintenance: g.Maintenance, FailoverID: g.FailoverID}
		if s.Role == "primary" {
			m.Epoch = ptr(g.Epoch) // from the backup's replies
		} else if b := s.Backup; b != nil && b.FailoverID == g.FailoverID {
			m.Epoch = ptr(b.Epoch)
		}
		rows = append(rows, m)
	}
	// The last backup that replied to a primary, when it no longer replies
	// (or the status predates the group list): why it is not in the list.
	if b := s.Backup; b != nil && s.Primary == nil && (b.FailoverID == "" || !listed[b.FailoverID]) {
		m := member{Node: nonEmpty(b.Node, b.FailoverID), Role: "backup", Epoch: ptr(b.Epoch), Address: nonEmpty(b.Address, "-"),
			LastHeardMS: b.AgeMS, Maintenance: b.Maintenance, FailoverID: b.FailoverID}
		switch {
		case hasWarning("backup "+b.Node+" stopped", "clean stop"):
			m.Health, m.Role = "stopped (clean stop)", "stopped"
		case b.AgeMS < 0:
			m.Health = "never heard"
		case !s.BackupConfigured || len(s.Backups) > 0:
			m.Health = "silent"
		default:
			m.Health = "ok"
		}
		rows = append(rows, m)
	}

	if s.Role == "primary" && !s.BackupConfigured && len(s.Backups) == 0 {
		notes = append(notes, "no backup has replied to this primary: automatic failover is NOT enabled")
	}
	if s.Ineligible != "" {
		notes = append(notes, fmt.Sprintf("%s is not eligible for automatic takeover: %s", s.Node, ineligibleWhy(s.Ineligible)))
	}
	for _, w := range s.Warnings {
		if strings.HasPrefix(w, "WARNING: equal configured priority") {
			notes = append(notes, strings.TrimPrefix(w, "WARNING: "))
		}
	}
	return rows, notes
}

// offlineMembers lists a stopped server (its priority from cfg) and the
// peer state.json remembers.
func offlineMembers(o offlineStatus, st failoverid.State, cfg *config.Config) []member {
	self := member{Node: o.Node, Role: "stopped", Epoch: ptr(o.Epoch),
		Health: "stopped", LastHeardMS: -1, Address: o.Advertise, Maintenance: o.Maintenance, FailoverID: o.FailoverID, Self: true}
	if cfg != nil {
		self.Priority = ptr(cfg.Priority)
	}
	rows := []member{self}
	if p := st.Peer; p != nil && (p.Node != "" || p.FailoverID != "") {
		role := "?"
		switch {
		case o.FencedBy != nil && o.FencedBy.FailoverID == p.FailoverID, o.LastRole == "backup":
			role = "primary"
		case o.LastRole == "primary":
			role = "backup"
		}
		rows = append(rows, member{Node: nonEmpty(p.Node, p.FailoverID), Role: role, Epoch: ptr(p.Epoch),
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
	num := func(p *int) string {
		if p == nil {
			return "-"
		}
		return strconv.Itoa(*p)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tEPOCH\tPRIORITY\tEFFECTIVE\tHEALTH\tLAST_HEARD\tADDRESS\tMAINTENANCE")
	for _, m := range rows {
		epoch := "-"
		if m.Epoch != nil {
			epoch = strconv.FormatUint(*m.Epoch, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Node, strings.ToUpper(m.Role), epoch, num(m.Priority), num(m.EffectivePriority),
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

Lists every server of the group as the server asked sees it, one line each:
NODE ROLE EPOCH PRIORITY EFFECTIVE HEALTH LAST_HEARD ADDRESS MAINTENANCE.

  the server asked   first, heard "now"; HEALTH "ok", or "down: CHECK[,CHECK]"
                     naming its health checks that are down
  its primary        (asked a backup) "ok", "silent", "never heard" or
                     "down (effective 0)"
  the backups        (asked a primary: every backup replying to it, best
                     first, the one that takes over first at the top; asked
                     a backup: the other backups it knows of) "ok", "down
                     (effective 0)" (its checks are down: not eligible),
                     "manual (priority 0)", "maintenance", or, for the last
                     backup that replied and no longer does, "silent",
                     "never heard" or "stopped (clean stop)"

PRIORITY is the configured priority (tandem.yaml priority:, default 100; 0:
never takes over automatically), EFFECTIVE what the health checks leave of
it. "-" means the server asked does not know (e.g. another backup's epoch).
MAINTENANCE shows where maintenance is on. WARNING lines follow: a backup
not eligible for automatic takeover, equal configured priorities. With an
arbiter, a last "arbiter:" line shows the election's holder and the etcd
endpoints reachable (as tandem status does).

With --config, a stopped server is listed from its data dir (and the peer
its state.json remembers). --json prints {"members": [{node, role, epoch,
priority, effective_priority, health, last_heard_ms, address, maintenance,
failover_id, self}], "arbiter": {...}}; epoch and the priorities are null
when not known; "arbiter" (status JSON's) only with an arbiter.
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
	var arb *node.ArbiterStatus
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
		rows = offlineMembers(o, st, target.cfg)
		notes = append(notes, fmt.Sprintf("server %s is STOPPED (nothing answers at %s): listed from its data dir", o.Node, target.addr))
	} else {
		var s node.Status
		if err := json.Unmarshal(raw, &s); err != nil {
			fmt.Fprintln(stderr, "tandem members: unexpected answer:", err)
			return exitRuntime
		}
		period := config.DefaultPeriod
		var ownMaint *bool
		if target.cfg != nil {
			period = target.cfg.Heartbeat.Period
			if st, err := failoverid.LoadState(target.cfg.DataDir); err == nil {
				ownMaint = &st.Maintenance
			}
		}
		rows, notes = members(s, period, ownMaint)
		arb = s.Arbiter
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Members []member            `json:"members"`
			Arbiter *node.ArbiterStatus `json:"arbiter,omitempty"`
		}{rows, arb})
		return exitOK
	}
	printMembers(stdout, rows, notes)
	if arb != nil {
		fmt.Fprintln(stdout, "arbiter:", arbiterLine(arb))
	}
	return exitOK
}
