package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/internal/admintoken"
	"github.com/tandem-ha/tandem/node"
)

func init() {
	register("status", "show a server's role, epoch, primary/backups, priority and checks, agents and warnings (a stopped one's from its data dir)", func(a []string) int { return runStatus(a, os.Stdout, os.Stderr) })
	register("switchover", "planned handover: the best backup (or --to NODE) takes over now, this primary becomes its backup", func(a []string) int { return runSwitchover(a, os.Stdout, os.Stderr) })
	register("maintenance", "maintenance on|off: pause or resume automatic failover", func(a []string) int { return runMaintenance(a, os.Stdout, os.Stderr) })
}

const defaultAdmin = "127.0.0.1:61630"

// adminTarget is the server a control command talks to.
type adminTarget struct {
	addr string // HOST:PORT to dial
	// token is the admin token (mutating commands only), read from
	// tokenFile.
	token, tokenFile string
	// cfg and cfgPath are the --config server's (nil, "" with --admin).
	cfg     *config.Config
	cfgPath string
}

// adminFlags adds --admin and --config (and, for the commands that change
// something, --token-file) to fs; resolve returns the server to talk to.
// With withToken, resolve also reads the admin token: from --token-file, or
// DATA_DIR/admin.token of --config's data_dir. Its errors are bad usage
// (exit 2), each one line naming the file and the fix.
func adminFlags(flags *flag.FlagSet, withToken bool) (resolve func() (adminTarget, error)) {
	admin := flags.String("admin", "", "the server's admin address HOST:PORT (default "+defaultAdmin+")")
	cfgHelp := "read the admin address from this server config instead"
	if withToken {
		cfgHelp = "read the admin address, and the admin token DATA_DIR/" + admintoken.FileName + ", from this server config instead"
	}
	cfgPath := flags.String("config", "", cfgHelp)
	tokenFile := new(string)
	if withToken {
		flags.StringVar(tokenFile, "token-file", "", "the admin token file (the server's DATA_DIR/"+admintoken.FileName+"); needed with --admin, default with --config: from its data_dir")
	}
	return func() (adminTarget, error) {
		var t adminTarget
		var dataDir string
		switch {
		case *admin != "" && *cfgPath != "":
			return t, errors.New("give --admin or --config, not both")
		case *admin != "":
			addr, err := parseAdminFlag(*admin)
			if err != nil {
				return t, err
			}
			t.addr = addr
		case *cfgPath != "":
			cfg, err := config.Load(*cfgPath)
			if err != nil {
				return t, err
			}
			t.addr, dataDir = cfg.Admin, cfg.DataDir
			t.cfg, t.cfgPath = cfg, *cfgPath
		default:
			t.addr = defaultAdmin
		}
		t.addr = dialable(t.addr)
		if !withToken {
			return t, nil
		}
		switch {
		case *tokenFile != "":
			t.tokenFile = *tokenFile
		case dataDir != "":
			t.tokenFile = admintoken.Path(dataDir)
		default:
			return t, errors.New("this command needs the admin token: give --config FILE (the server's tandem.yaml; the token is DATA_DIR/" + admintoken.FileName + ") or --token-file FILE with --admin HOST:PORT")
		}
		tok, err := admintoken.Read(t.tokenFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return t, fmt.Errorf("no admin token at %s: the server creates it on its first start (is that the server's data_dir, and has the server started?); or give --token-file FILE", t.tokenFile)
		case errors.Is(err, fs.ErrPermission):
			return t, fmt.Errorf("cannot read the admin token %s: permission denied: run this as the user the server runs as (e.g. sudo -u tandem), or give --token-file FILE", t.tokenFile)
		case err != nil:
			var pe *os.PathError
			if errors.As(err, &pe) {
				return t, fmt.Errorf("cannot read the admin token %s: %v: give --config FILE or --token-file FILE", t.tokenFile, pe.Err)
			}
			return t, fmt.Errorf("%v", err) // names the file and the fix
		}
		t.token = tok
		return t, nil
	}
}

// parseAdminFlag accepts --admin as HOST:PORT, and also as the URL an
// operator may paste (http://HOST:PORT, with or without a trailing slash
// or /status): without this, "http://127.0.0.1:61630" became a DNS lookup
// of the host "http". https:// is refused: the admin API speaks plain HTTP.
func parseAdminFlag(s string) (string, error) {
	in := s
	s = strings.TrimSpace(s)
	lower := strings.ToLower(s)
	switch {
	case strings.HasPrefix(lower, "https://"):
		return "", fmt.Errorf("--admin %s: the admin API speaks plain HTTP, not HTTPS: give --admin HOST:PORT (e.g. %s)", in, defaultAdmin)
	case strings.HasPrefix(lower, "http://"):
		s = s[len("http://"):]
		if i := strings.IndexByte(s, '/'); i >= 0 {
			switch strings.TrimRight(s[i:], "/") {
			case "", "/status":
			default:
				return "", fmt.Errorf("--admin %s: expected HOST:PORT (e.g. %s), not a URL with the path %s", in, defaultAdmin, s[i:])
			}
			s = s[:i]
		}
	case strings.Contains(s, "://"):
		return "", fmt.Errorf("--admin %s: expected HOST:PORT (e.g. %s)", in, defaultAdmin)
	default:
		s = strings.TrimRight(s, "/")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("--admin %s: expected HOST:PORT (e.g. %s; IPv6 as [::1]:61630)", in, defaultAdmin)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("--admin %s: the port must be a number 1-65535", in)
	}
	if strings.ContainsAny(host, "/ \t") {
		return "", fmt.Errorf("--admin %s: expected HOST:PORT (e.g. %s)", in, defaultAdmin)
	}
	return net.JoinHostPort(host, port), nil
}

// dialable turns a listen address with an empty or unspecified host
// (":61630", "0.0.0.0:61630", "[::]:61630") into its loopback address.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

var httpClient = &http.Client{Timeout: 15 * time.Second}

// call does one admin request and decodes the JSON answer into out. With a
// token it sends "Authorization: Bearer TOKEN"; a body goes as
// application/json.
func call(method string, t adminTarget, path, body string, out any) (int, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+t.addr+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "application/json")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("no tandem server answers at %s (is it running? is --admin right?): %v", t.addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusUnauthorized && t.token != "" {
		return resp.StatusCode, fmt.Errorf("the server at %s refused the admin token in %s: it is not that server's token (do --admin/--config and --token-file name the same server?)", t.addr, t.tokenFile)
	}
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return resp.StatusCode, errors.New(e.Error)
		}
		return resp.StatusCode, fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s: unexpected answer: %v", path, err)
		}
	}
	return resp.StatusCode, nil
}

// callExit is the exit code for a failed call: a refused token is bad
// input (2), anything else a runtime failure (1).
func callExit(code int) int {
	if code == http.StatusUnauthorized {
		return exitUsage
	}
	return exitRuntime
}

func parseControl(name, usage string, args []string, stdout, stderr io.Writer, withToken bool, extra func(fs *flag.FlagSet)) (*flag.FlagSet, func() (adminTarget, error), int, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	out := helpOut(args, stdout, stderr)
	fs.SetOutput(out)
	resolve := adminFlags(fs, withToken)
	if extra != nil {
		extra(fs)
	}
	fs.Usage = func() {
		fmt.Fprint(out, usage+"\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, exitOK, false
		}
		return nil, nil, exitUsage, false
	}
	return fs, resolve, 0, true
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	var asJSON *bool
	fs, resolve, code, ok := parseControl("status", `Usage: tandem status [--admin HOST:PORT | --config FILE] [--json]

Shows a running server's role, epoch, the primary it watches (backup) or
whether a backup is configured (primary), maintenance mode, agents, warnings
and, when something needs doing, the runbook step. In a group it also shows
this server's priority and effective priority, each health check (up or
DOWN, since when, its last output), the group's backups (on a primary those
replying to it, best first; on a backup the others it knows of) and, on a
backup, its rank in the election (0: it takes over first) and whether it is
eligible for automatic takeover (and why not). With an arbiter (arbiter.etcd)
an "arbiter" line shows the election's holder, whether this server holds
the term and its lease, the etcd endpoints reachable, the renewals, and
failsafe. tandem members shows the whole group as a table.

With --config, when the server does not answer and no server holds its data
dir, it shows the stopped server from its data dir instead: "server NODE is
STOPPED", the last role and epoch (state.json), fenced_by and the rejoin
step, an interrupted takeover, primary_location, maintenance, the last role
change (event log) and what the next start does. --json then prints the
status object with "role": "stopped", "last_role" and "running": false.
`, args, stdout, stderr, false, func(fs *flag.FlagSet) { asJSON = fs.Bool("json", false, "print the status JSON object") })
	if !ok {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem status: unexpected argument", fs.Arg(0))
		return exitUsage
	}
	target, err := resolve()
	if err != nil {
		fmt.Fprintln(stderr, "tandem status:", err)
		return exitUsage
	}
	var s node.Status
	var raw json.RawMessage
	if code, err := call(http.MethodGet, target, "/status", "", &raw); err != nil {
		if code == 0 && target.cfg != nil {
			// Nothing answers: a stopped server's status is in its data dir.
			return statusOffline(target, *asJSON, stdout, stderr, err)
		}
		fmt.Fprintln(stderr, "tandem status:", err)
		return exitRuntime
	}
	if *asJSON {
		var v any
		json.Unmarshal(raw, &v)
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(v)
		return exitOK
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		fmt.Fprintln(stderr, "tandem status: unexpected answer:", err)
		return exitRuntime
	}
	printStatus(stdout, s)
	return exitOK
}

func printStatus(w io.Writer, s node.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, f string, a ...any) { fmt.Fprintf(tw, "%s\t"+f+"\n", append([]any{k}, a...)...) }
	row("node", "%s", s.Node)
	row("role", "%s", strings.ToUpper(s.Role))
	row("epoch", "%d", s.Epoch)
	row("failover id", "%s", s.FailoverID)
	row("advertise", "%s", s.Advertise)
	onoff := map[bool]string{true: "ON (automatic failover paused)", false: "off"}
	row("maintenance", "%s", onoff[s.Maintenance])
	if p := s.Primary; p != nil {
		heard := "never"
		if p.LastHeartbeatAgeMS >= 0 {
			heard = fmt.Sprintf("%s ago", (time.Duration(p.LastHeartbeatAgeMS) * time.Millisecond).String())
		}
		name := p.Node
		if name == "" {
			name = "(not heard yet)"
		}
		prio := ""
		if p.Heard || p.LastHeartbeatAgeMS >= 0 {
			prio = fmt.Sprintf(", priority %d (effective %d)", p.Priority, p.EffectivePriority)
		}
		row("primary", "%s epoch %d, last heartbeat %s%s", name, p.Epoch, heard, prio)
	}
	if s.Health != "" { // a server that has groups (priorities, checks)
		row("priority", "%d, effective %d (health: %s)%s", s.Priority, s.EffectivePriority, s.Health,
			map[bool]string{true: "; 0: never takes over automatically", false: ""}[s.Priority == 0])
		if len(s.Checks) == 0 {
			row("checks", "none")
		}
		for _, c := range s.Checks {
			state := "up"
			if !c.Up {
				state = "DOWN"
			}
			line := c.Name + " " + state
			if c.Since != "" {
				line += " since " + c.Since
			}
			if c.Output != "" {
				line += ": " + singleLine(c.Output)
			}
			row("check", "%s", line)
		}
	}
	if s.Rank != nil {
		if *s.Rank == 0 {
			row("rank", "0 (takes over first)")
		} else {
			row("rank", "%d (%d eligible backup(s) outrank it and take over first)", *s.Rank, *s.Rank)
		}
	}
	if s.Role == "backup" && s.Health != "" {
		if s.Ineligible != "" {
			row("eligible", "NO: %s", ineligibleWhy(s.Ineligible))
		} else {
			row("eligible", "yes")
		}
	}
	if s.Role == "primary" {
		// The backup that replied last (the pair's line), then the group.
		if s.BackupConfigured && s.Backup != nil {
			row("backup", "%s (%s), replied %s ago", s.Backup.Node, s.Backup.Address, time.Duration(s.Backup.AgeMS)*time.Millisecond)
		} else {
			row("backup", "none replying: automatic failover is NOT enabled")
		}
	}
	// The group's backups: on a primary those replying (best first), on
	// a backup the others it knows of.
	label := "backups"
	if s.Role != "primary" {
		label = "other backups"
	}
	for i, b := range s.Backups {
		line := fmt.Sprintf("%s (%s), priority %d (effective %d), heard %s ago", nonEmpty(b.Node, b.FailoverID), nonEmpty(b.Address, "-"),
			b.Priority, b.EffectivePriority, fmtMS(b.LastReplyAgeMS))
		if b.Maintenance {
			line += ", maintenance ON"
		}
		if i == 0 && s.Role == "primary" && b.Priority > 0 && b.EffectivePriority > 0 && !b.Maintenance {
			line += ": takes over first"
		}
		row(label, "%s", line)
		label = ""
	}
	if s.HeartbeatChannel.URL != "" {
		row("heartbeat channel", "%s (%s)", s.HeartbeatChannel.URL, map[bool]string{true: "connected", false: "DISCONNECTED"}[s.HeartbeatChannel.Connected])
	}
	if s.Arbiter != nil {
		row("arbiter", "%s", arbiterLine(s.Arbiter))
	}
	if t := s.Takeover; t != nil {
		row("takeover", "%s to epoch %d, last step %s", t.Reason, t.Epoch, t.Step)
	}
	a := s.Agents
	row("agents", "%d managed, %d rewritten, %d failed, %d connected", a.Managed, a.Rewritten, a.Failed, a.Connected)
	if p := a.Rewriting; p != nil {
		row("rewriting", "%d of %d agent files done", p.Done, p.Total)
	}
	if a.Remote > 0 {
		row("remote agents", "%d in the roster, %d bound to this server", a.Remote, a.Bound)
	}
	for _, f := range a.FailedFiles {
		row("  failed", "%s: %s", f.Path, f.Error)
	}
	for _, wmsg := range s.Warnings {
		row("WARNING", "%s", wmsg)
	}
	if s.Runbook != "" {
		row("next step", "%s", s.Runbook)
	}
	tw.Flush()
}

func runSwitchover(args []string, stdout, stderr io.Writer) int {
	var to *string
	fs, resolve, code, ok := parseControl("switchover", `Usage: tandem switchover [--to NODE] --config FILE
       tandem switchover [--to NODE] --admin HOST:PORT --token-file FILE

Run on (or against) the primary: a backup takes over at once with epoch+1,
rewrites every agent's address.yaml, and this primary becomes its backup by
itself (it writes its own primary_location); the other backups of the group
follow the new primary by themselves. Without --to the best backup takes
over (the first of tandem members); --to NODE names the one that must (its
node name or failover id), even one with priority 0. Fails when no backup
replies, when none replying is named NODE, or when NODE's health checks are
down (effective priority 0: it would refuse the handover).

It sends the server's admin token (DATA_DIR/admin.token, which the server
creates on its first start, mode 0600): with --config it reads the token
from the config's data_dir; with --admin give --token-file. Run it as the
user the server runs as (or root), who can read that file.
`, args, stdout, stderr, true, func(fs *flag.FlagSet) {
		to = fs.String("to", "", "the backup that takes over (node name or failover id; default: the best backup)")
	})
	if !ok {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem switchover: unexpected argument", fs.Arg(0))
		return exitUsage
	}
	*to = strings.TrimSpace(*to)
	target, err := resolve()
	if err != nil {
		fmt.Fprintln(stderr, "tandem switchover:", err)
		return exitUsage
	}
	path := "/switchover"
	if *to != "" {
		if why := unhealthyTarget(target, *to); why != "" {
			fmt.Fprintf(stderr, "tandem switchover --to %s: %s\n", *to, why)
			return exitRuntime
		}
		path += "?to=" + url.QueryEscape(*to)
	}
	var out map[string]string
	if code, err := call(http.MethodPost, target, path, "", &out); err != nil {
		msg := singleLine(err.Error())
		if i := strings.Index(msg, "no live backup is named"); i > 0 {
			// The server wraps this in "no backup has replied; nothing to
			// hand over to", which is not so when others reply.
			msg = msg[i:]
		}
		switch {
		case code == http.StatusConflict && *to != "":
			fmt.Fprintf(stderr, "tandem switchover --to %s: the server at %s refused: %s\n", *to, target.addr, msg)
		case code == http.StatusConflict:
			fmt.Fprintf(stderr, "tandem switchover: the server at %s refused: %s\n", target.addr, msg)
		default:
			fmt.Fprintln(stderr, "tandem switchover:", msg)
		}
		return callExit(code)
	}
	fmt.Fprintln(stdout, out["result"])
	fmt.Fprintln(stdout, "watch it with: tandem status --admin", target.addr)
	return exitOK
}

// unhealthyTarget says why the backup to (a node name or failover id of the
// primary's status "backups") would refuse the handover: its health checks
// are down (effective priority 0, priority above 0). The primary accepts
// such a request and waits for a takeover that never comes; "" when the
// backup looks able, or the status cannot tell.
func unhealthyTarget(t adminTarget, to string) string {
	var s node.Status
	if _, err := call(http.MethodGet, t, "/status", "", &s); err != nil || s.Role != "primary" {
		return ""
	}
	for _, b := range s.Backups {
		if (b.Node == to || b.FailoverID == to) && b.Priority > 0 && b.EffectivePriority == 0 {
			return fmt.Sprintf("%s reports effective priority 0 (its health checks are down): it would refuse the handover and %s would stay primary; fix its checks first (tandem status on %s shows them)", to, nonEmpty(s.Node, "this server"), to)
		}
	}
	return ""
}

func runMaintenance(args []string, stdout, stderr io.Writer) int {
	// The contract puts on|off first (tandem maintenance on --admin …), and
	// Go's flag parsing stops at the first argument that is not a flag: take
	// the state out wherever it stands.
	state := ""
	rest := make([]string, 0, len(args))
	for i, a := range args {
		if state == "" && (a == "on" || a == "off") && (i == 0 || !strings.HasPrefix(args[i-1], "-") || strings.Contains(args[i-1], "=")) {
			state = a
			continue
		}
		rest = append(rest, a)
	}
	args = rest
	fs, resolve, code, ok := parseControl("maintenance", `Usage: tandem maintenance on|off --config FILE
       tandem maintenance on|off --admin HOST:PORT --token-file FILE

Pauses (on) or resumes (off) automatic failover. On the backup it stops the
failure detector; on the primary its heartbeats announce maintenance and the
backup pauses. The setting survives restarts. Leaving maintenance restarts
the silence window, so it never fails over at once.

It sends the server's admin token (DATA_DIR/admin.token, which the server
creates on its first start, mode 0600): with --config it reads the token
from the config's data_dir; with --admin give --token-file. Run it as the
user the server runs as (or root), who can read that file.
`, args, stdout, stderr, true, nil)
	if !ok {
		return code
	}
	if state == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem maintenance: expected on or off (tandem maintenance on|off --config FILE, or --admin HOST:PORT --token-file FILE)")
		return exitUsage
	}
	target, err := resolve()
	if err != nil {
		fmt.Fprintln(stderr, "tandem maintenance:", err)
		return exitUsage
	}
	if code, err := call(http.MethodPost, target, "/maintenance?state="+state, "", nil); err != nil {
		fmt.Fprintln(stderr, "tandem maintenance:", err)
		return callExit(code)
	}
	if state == "on" {
		fmt.Fprintln(stdout, "maintenance on: automatic failover paused")
	} else {
		fmt.Fprintln(stdout, "maintenance off: automatic failover resumed (the silence window starts now)")
	}
	return exitOK
}

// arbiterLine is the arbiter in one line: the election's holder, this
// node's term and lease, the endpoints reachable, failsafe.
func arbiterLine(a *node.ArbiterStatus) string {
	up := 0
	for _, e := range a.Endpoints {
		if e.Reachable {
			up++
		}
	}
	line := fmt.Sprintf("etcd %s, election held by %s", a.Prefix, nonEmpty(a.Holder, "nobody"))
	if a.HoldsTerm {
		line += "; this node holds the term"
		if a.LeaseTTLLeftMS >= 0 {
			line += fmt.Sprintf(" (lease %s left)", (time.Duration(a.LeaseTTLLeftMS) * time.Millisecond).String())
		}
	}
	line += fmt.Sprintf("; %d/%d endpoints reachable; renewals %d ok, %d failed (last %.1f ms)", up, len(a.Endpoints), a.RenewsOK, a.RenewsFailed, a.RenewLatencyMS)
	if a.Failsafe {
		line += "; FAILSAFE: acting on the backups' word"
	} else if a.FailsafeOn {
		line += "; failsafe on"
	}
	return line
}
