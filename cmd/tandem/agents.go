package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/node"
	"github.com/tandem-ha/tandem/protocol"
)

func init() {
	register("agents", "agents list|repoint: show or rewrite the managed agents' address.yaml files", cmdAgents)
}

func cmdAgents(args []string) int { return runAgents(args, os.Stdout, os.Stderr) }

const agentsUsage = `Usage: tandem agents list    --config FILE [--json]
       tandem agents repoint --config FILE --to HOST[:PORT] [--force]

Work on the address.yaml files the server config's "agents" globs match,
with the server stopped or running. See tandem agents SUBCOMMAND --help.
`

func runAgents(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "tandem agents: missing subcommand list or repoint (see tandem agents --help)")
		return exitUsage
	}
	switch args[0] {
	case "list":
		return runAgentsList(args[1:], stdout, stderr)
	case "repoint":
		return runAgentsRepoint(args[1:], stdout, stderr)
	case "-h", "--help", "-help", "help":
		fmt.Fprint(stdout, agentsUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "tandem agents: unknown subcommand %q: want list or repoint (see tandem agents --help)\n", args[0])
	return exitUsage
}

// agentRow is one managed address.yaml as `agents list` shows it. Live
// columns (connected, last status) can be added here later.
// remoteRow is one agent of the roster.
type remoteRow struct {
	ID          string    `json:"id"`
	Path        string    `json:"path,omitempty"` // on the agent's host
	BoundEpoch  uint64    `json:"bound_epoch"`    // as the running server last heard (or the roster said)
	BoundID     string    `json:"bound_failover_id"`
	LastSeen    time.Time `json:"last_seen"`
	Missing     bool      `json:"missing"` // not reporting to the running server
	FromRoster  bool      `json:"from_roster"`
	FromRunning bool      `json:"from_running_server"`
}

type agentRow struct {
	Path           string  `json:"path"`
	StompInterface string  `json:"stomp_interface"`
	StompPort      int     `json:"stomp_port"`
	FailoverID     string  `json:"failover_id"`
	FailoverEpoch  *uint64 `json:"failover_epoch"` // null: the file has no epoch
	Error          string  `json:"error"`          // "" for a valid file
	// Signature is the failover_sig's verdict: "valid", "missing", or
	// "invalid" (a token no server signed: tampered, or written by hand);
	// "" when this user cannot read the group key to check it.
	Signature string `json:"signature,omitempty"`
	// Live is what the running server's agent registry says of the agent
	// that reads this file (null when the server is not running or the
	// agent never reported).
	Live *liveAgent `json:"live"`
}

// agentsListing is the `agents list --json` object.
type agentsListing struct {
	Agents  []agentRow `json:"agents"`
	Managed int        `json:"managed"`
	// Unsigned counts files whose token carries no valid failover_sig
	// (checked only when the group key is readable).
	Unsigned int `json:"unsigned"`
	// Remote are the agents of the roster (DATA/roster.json: every agent
	// the primary heard, agents on their own hosts included) that no
	// managed file names, with what the running server sees of them.
	Remote []remoteRow `json:"remote"`
	// AtEpoch counts valid files naming this server's failover id at its
	// epoch; Invalid counts files that could not be read or are not valid.
	AtEpoch    int    `json:"at_epoch"`
	Invalid    int    `json:"invalid"`
	FailoverID string `json:"failover_id"` // this server's ("" if it has none yet)
	Epoch      uint64 `json:"epoch"`       // this server's
	// ServerRunning: the server answered; Connected counts live agents.
	ServerRunning bool `json:"server_running"`
	Connected     int  `json:"connected"`
}

const agentsListUsage = `
Usage: tandem agents list --config FILE [--json]

Lists every address.yaml the config's agents globs match: stomp_interface,
stomp_port, failover_id, failover_epoch, and why a file is invalid. The
summary counts the files, those naming this server at its epoch, and the
invalid ones. Invalid files are listed, not fatal (exit 0).

Exit codes: 0 ok, 1 runtime failure, 2 bad usage, bad config or a corrupt
failover_id / state.json.
`

// serverToken reads this server's failover id (may be absent: "") and
// epoch; a corrupt file is exitUsage.
func (c *offlineCmd) serverToken(cfg *config.Config) (id string, st failoverid.State, code int, ok bool) {
	id, err := failoverid.LoadID(cfg.DataDir)
	switch {
	case errors.Is(err, failoverid.ErrNoID):
		id = ""
	case errors.Is(err, failoverid.ErrCorruptID):
		return "", st, c.fail(exitUsage, "%v", err), false
	case err != nil:
		return "", st, c.fail(exitRuntime, "%v", err), false
	}
	st, err = failoverid.LoadState(cfg.DataDir)
	switch {
	case errors.Is(err, failoverid.ErrCorrupt):
		return "", st, c.fail(exitUsage, "%v", err), false
	case err != nil:
		return "", st, c.fail(exitRuntime, "%v", err), false
	}
	return id, st, 0, true
}

func runAgentsList(args []string, stdout, stderr io.Writer) int {
	c := newOfflineCmd("agents list", agentsListUsage, stdout, stderr)
	asJSON := c.Bool("json", false, "print one JSON object {\"agents\":[...], \"managed\":N, ...}")
	if code, ok := c.parse(args); !ok {
		return code
	}
	cfg, code, ok := c.loadConfig()
	if !ok {
		return code
	}
	id, st, code, ok := c.serverToken(cfg)
	if !ok {
		return code
	}
	paths, err := agentcfg.Expand(cfg.Agents)
	if err != nil {
		return c.fail(exitRuntime, "expand agents globs: %v", err)
	}
	sort.Strings(paths)
	out := agentsListing{Agents: []agentRow{}, Managed: len(paths), FailoverID: id, Epoch: st.Epoch}
	var verify *protocol.Signer // nil: the group key cannot be read here
	if keys, err := cfg.GroupKeys(); err == nil && keys.Private != nil {
		verify = protocol.NewGroupSigner(protocol.NewDestinations(cfg.DestinationPrefix), keys)
	}
	for _, p := range paths {
		row := agentRow{Path: p}
		a, err := agentcfg.ReadFileWith(p, agentcfg.ReadOptions{MaxFileSize: cfg.MaxAgentFileSize})
		if err != nil {
			row.Error = singleLine(strings.TrimPrefix(err.Error(), p+": "))
			out.Invalid++
		} else {
			row.StompInterface, row.StompPort, row.FailoverID = a.StompInterface, a.StompPort, a.FailoverID
			if verify != nil && a.HasEpoch {
				switch err := verify.VerifyTokenSig(a.FailoverSig, a.FailoverID, a.FailoverEpoch, a.StompInterface, a.StompPort); {
				case err == nil:
					row.Signature = "valid"
				case a.FailoverSig == "":
					row.Signature = "missing"
				default:
					row.Signature = "invalid"
				}
				if row.Signature != "valid" {
					out.Unsigned++
				}
			}
			if a.HasEpoch {
				e := a.FailoverEpoch
				row.FailoverEpoch = &e
				if id != "" && a.FailoverID == id && e == st.Epoch {
					out.AtEpoch++
				}
			}
		}
		out.Agents = append(out.Agents, row)
	}
	live, running := liveAgents(cfg.Admin)
	for i := range out.Agents {
		abs, err := filepath.Abs(out.Agents[i].Path)
		if err != nil {
			continue
		}
		if l, ok := live[abs]; ok {
			l := l
			out.Agents[i].Live = &l
			if l.Connected {
				out.Connected++
			}
		}
	}
	out.ServerRunning = running
	out.Remote = remoteAgents(cfg, out.Agents, running)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return c.fail(exitRuntime, "%v", err)
		}
		return exitOK
	}
	if len(out.Agents) > 0 {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PATH\tSTOMP_INTERFACE\tSTOMP_PORT\tFAILOVER_ID\tEPOCH\tLIVE\tBOUND_EPOCH\tLAST_SEEN\tERROR")
		for _, r := range out.Agents {
			epoch, port := "-", "-"
			if r.FailoverEpoch != nil {
				epoch = fmt.Sprint(*r.FailoverEpoch)
			}
			if r.Error == "" {
				port = fmt.Sprint(r.StompPort)
			}
			liveCol, bound, seen := "-", "-", "-"
			if !running {
				liveCol = "(server down)"
			} else if l := r.Live; l != nil {
				liveCol = map[bool]string{true: "connected", false: "gone"}[l.Connected]
				bound = fmt.Sprint(l.Epoch)
				seen = time.Since(l.LastSeen).Round(100*time.Millisecond).String() + " ago"
			} else {
				liveCol = "never seen"
			}
			errCol := r.Error
			if r.Signature == "missing" || r.Signature == "invalid" {
				errCol = strings.TrimSpace(errCol + " failover_sig " + r.Signature + ": no server signed this token")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Path, dash(r.StompInterface), port, dash(r.FailoverID), epoch, liveCol, bound, seen, errCol)
		}
		tw.Flush()
	} else {
		fmt.Fprintf(stdout, "no file matches the agents globs %q\n", cfg.Agents)
	}
	if len(out.Remote) > 0 {
		fmt.Fprintln(stdout, "\nagents on their own hosts (roster):")
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPATH\tBOUND_EPOCH\tLAST_SEEN\tMISSING")
		for _, r := range out.Remote {
			seen := "-"
			if !r.LastSeen.IsZero() {
				seen = time.Since(r.LastSeen).Round(100*time.Millisecond).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%v\n", r.ID, dash(r.Path), r.BoundEpoch, seen, map[bool]string{true: "yes", false: "no"}[r.Missing])
		}
		tw.Flush()
	}
	who := "this server's epoch"
	if id == "" {
		who = "this server's epoch (it has no failover id yet)"
	}
	fmt.Fprintf(stdout, "%d managed, %d at %s (%d), %d invalid", out.Managed, out.AtEpoch, who, st.Epoch, out.Invalid)
	if running {
		fmt.Fprintf(stdout, ", %d connected to the running server", out.Connected)
	}
	if out.Unsigned > 0 {
		fmt.Fprintf(stdout, ", %d without a valid failover_sig", out.Unsigned)
	}
	fmt.Fprintln(stdout)
	return exitOK
}

// liveAgent is the live view of one agent, from GET /agents.
type liveAgent struct {
	ID         string    `json:"id"`
	Connected  bool      `json:"connected"`
	FailoverID string    `json:"failover_id"`
	Epoch      uint64    `json:"epoch"`
	Accepted   uint64    `json:"accepted"`
	Rejected   uint64    `json:"rejected"`
	LastSeen   time.Time `json:"last_seen"`
}

// liveAgents asks the running server (if any) for its agent registry, keyed
// by the path each agent reports. ok is false when no server answers.
func liveAgents(admin string) (map[string]liveAgent, bool) {
	agents := registry(admin)
	if agents == nil {
		return nil, false
	}
	m := make(map[string]liveAgent, len(agents))
	for _, a := range agents {
		if a.Path != "" {
			m[a.Path] = a.liveAgent
		}
	}
	return m, true
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

const agentsRepointUsage = `
Usage: tandem agents repoint --config FILE --to HOST[:PORT] [--force]

Rewrites every managed address.yaml (the config's agents globs) so the agent
connects to HOST:PORT (port default 61620) and obeys this server: its
failover_id (DATA/failover_id) and epoch (DATA/state.json). Each file is
rewritten atomically; its other keys and comments are kept.

Without --force it is a compare-and-swap: only files with a LOWER
failover_epoch (or none) change; files at this epoch or above are left alone
and listed. With --force every file is rewritten, which may LOWER a file's
epoch: agents then ignore the server holding the higher epoch. Use --force
only when you are sure that server is gone for good.

Exit codes: 0 every file rewritten or already up to date, 1 a file could not
be rewritten or is invalid (listed), 2 bad usage, bad config or a missing or
corrupt failover_id / state.json (nothing written).
`

func runAgentsRepoint(args []string, stdout, stderr io.Writer) int {
	c := newOfflineCmd("agents repoint", agentsRepointUsage, stdout, stderr)
	to := c.String("to", "", "HOST[:PORT] the agents should connect to (normally this server's advertise); required")
	force := c.Bool("force", false, "rewrite every file, even one at this epoch or a higher one (may LOWER its epoch)")
	if code, ok := c.parse(args); !ok {
		return code
	}
	if *to == "" {
		return c.usageError("--to HOST[:PORT] is required")
	}
	host, port, err := config.ParsePrimaryLocation(*to)
	if err != nil {
		return c.usageError("--to %v", err)
	}
	target := joinHostPort(host, port)
	cfg, code, ok := c.loadConfig()
	if !ok {
		return code
	}
	id, st, code, ok := c.serverToken(cfg)
	if !ok {
		return code
	}
	if id == "" {
		return c.fail(exitUsage, "%s does not exist: this server has no failover id yet (start it once, or run tandem id --config %s)",
			filepath.Join(cfg.DataDir, failoverid.IDFile), *c.configPath)
	}
	if st.Epoch == 0 {
		return c.fail(exitUsage, "%s: epoch 0: this server has never run as primary, so agents have no epoch to obey it at; let it take over (or switchover) instead",
			filepath.Join(cfg.DataDir, failoverid.StateFile))
	}
	if ah, ap := cfg.AdvertiseHostPort(); ap != 0 && joinHostPort(ah, ap) != target {
		fmt.Fprintf(stdout, "note: %s is not this server's advertise address (%s); the agents will obey only a server with failover id %s at epoch %d\n",
			target, joinHostPort(ah, ap), id, st.Epoch)
	}
	paths, err := agentcfg.Expand(cfg.Agents)
	if err != nil {
		return c.fail(exitRuntime, "expand agents globs: %v", err)
	}
	sort.Strings(paths)
	if len(paths) == 0 {
		fmt.Fprintf(stdout, "no file matches the agents globs %q: nothing to do\n", cfg.Agents)
		return exitOK
	}
	u := agentcfg.Update{StompInterface: host, StompPort: port, FailoverID: id, Epoch: st.Epoch}
	// Signed like a server's own rewrite, when this user can read the group
	// key: a repointed file is then evidence like any other (without the
	// key it is written unsigned, and servers report it as not signed).
	if keys, err := cfg.GroupKeys(); err == nil && keys.Private != nil {
		signer := protocol.NewGroupSigner(protocol.NewDestinations(cfg.DestinationPrefix), keys)
		u.FailoverSig = signer.TokenSig(id, st.Epoch, host, port)
	} else if cfg.SigningKey != "" {
		fmt.Fprintf(stdout, "note: cannot read signing_key (%v): the files are written without failover_sig\n", err)
	}
	results := agentcfg.RewriteAll(paths, u, agentcfg.BatchOptions{Force: *force, MaxFileSize: cfg.MaxAgentFileSize})
	sort.Slice(results, func(i, j int) bool { return results[i].Path < results[j].Path })

	var rewritten, unchanged, invalid, failed, lowered int
	for _, r := range results {
		switch r.Outcome {
		case agentcfg.Rewritten:
			rewritten++
			if r.Before.HasEpoch && r.Before.FailoverEpoch > st.Epoch {
				lowered++
				fmt.Fprintf(stdout, "lowered    %s: epoch %d → %d (--force)\n", r.Path, r.Before.FailoverEpoch, st.Epoch)
			}
		case agentcfg.Unchanged:
			unchanged++
			b := r.Before
			switch {
			case b.HasEpoch && b.FailoverEpoch > st.Epoch:
				fmt.Fprintf(stdout, "unchanged  %s: its epoch %d is higher than this server's %d (points at %s; --force to override)\n",
					r.Path, b.FailoverEpoch, st.Epoch, joinHostPort(b.StompInterface, b.StompPort))
			case b.FailoverID == id && b.StompInterface == host && b.StompPort == port:
				fmt.Fprintf(stdout, "unchanged  %s: already points here at epoch %d\n", r.Path, b.FailoverEpoch)
			default:
				fmt.Fprintf(stdout, "unchanged  %s: already at epoch %d (points at %s, failover id %s; --force to override)\n",
					r.Path, b.FailoverEpoch, joinHostPort(b.StompInterface, b.StompPort), dash(b.FailoverID))
			}
		case agentcfg.Invalid:
			invalid++
			fmt.Fprintf(stdout, "invalid    %s: %s\n", r.Path, errText(r))
		default:
			failed++
			fmt.Fprintf(stdout, "error      %s: %s\n", r.Path, errText(r))
		}
	}
	fmt.Fprintf(stdout, "%d managed: %d rewritten to %s (failover id %s, epoch %d), %d unchanged, %d invalid, %d failed\n",
		len(results), rewritten, target, id, st.Epoch, unchanged, invalid, failed)
	if lowered > 0 {
		fmt.Fprintf(stdout, "WARNING: %d file(s) had a higher epoch and were lowered by --force\n", lowered)
	}
	if invalid+failed > 0 {
		return exitRuntime
	}
	return exitOK
}

func errText(r agentcfg.Result) string {
	if r.Err == nil {
		return r.Outcome.String()
	}
	return singleLine(strings.TrimPrefix(r.Err.Error(), r.Path+": "))
}

// remoteAgents merges the roster (DATA/roster.json) with the running
// server's registry: every agent that no managed file names.
func remoteAgents(cfg *config.Config, files []agentRow, running bool) []remoteRow {
	managed := map[string]bool{}
	for _, f := range files {
		if abs, err := filepath.Abs(f.Path); err == nil {
			managed[abs] = true
		}
	}
	rows := map[string]*remoteRow{}
	if ro, err := node.LoadRoster(cfg.DataDir); err == nil {
		for _, a := range ro.Agents {
			if !managed[a.Path] {
				rows[a.ID] = &remoteRow{ID: a.ID, Path: a.Path, BoundEpoch: a.Epoch, BoundID: a.FailoverID, LastSeen: a.LastSeen, FromRoster: true, Missing: running}
			}
		}
	}
	if running {
		for _, a := range registry(cfg.Admin) {
			if managed[a.Path] {
				continue
			}
			r := rows[a.ID]
			if r == nil {
				r = &remoteRow{ID: a.ID, Path: a.Path}
				rows[a.ID] = r
			}
			r.BoundEpoch, r.BoundID, r.LastSeen, r.FromRunning, r.Missing = a.Epoch, a.FailoverID, a.LastSeen, true, !a.Connected
		}
	}
	out := make([]remoteRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// registry is the running server's agent registry (nil when none answers).
func registry(admin string) []struct {
	liveAgent
	Path string `json:"path"`
} {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + admin + "/agents")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var out struct {
		Agents []struct {
			liveAgent
			Path string `json:"path"`
		} `json:"agents"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return nil
	}
	if out.Agents == nil {
		out.Agents = []struct {
			liveAgent
			Path string `json:"path"`
		}{} // a server that answers with no agent: running, empty
	}
	return out.Agents
}
