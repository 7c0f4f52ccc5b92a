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
	"github.com/tandem-ha/tandem/node"
)

func init() {
	register("status", "show a running server's role, epoch, primary/backup and agents", func(a []string) int { return runStatus(a, os.Stdout, os.Stderr) })
	register("switchover", "planned handover: the backup takes over now, this primary becomes its backup", func(a []string) int { return runSwitchover(a, os.Stdout, os.Stderr) })
	register("maintenance", "maintenance on|off: pause or resume automatic failover", func(a []string) int { return runMaintenance(a, os.Stdout, os.Stderr) })
}

const defaultAdmin = "127.0.0.1:61630"

// adminFlags adds --admin and --config to fs; resolve returns the admin
// address to talk to.
func adminFlags(fs *flag.FlagSet) (resolve func() (string, error)) {
	admin := fs.String("admin", "", "the server's admin address HOST:PORT (default "+defaultAdmin+")")
	cfgPath := fs.String("config", "", "read the admin address from this server config instead")
	return func() (string, error) {
		switch {
		case *admin != "" && *cfgPath != "":
			return "", errors.New("give --admin or --config, not both")
		case *admin != "":
			return *admin, nil
		case *cfgPath != "":
			cfg, err := config.Load(*cfgPath)
			if err != nil {
				return "", err
			}
			return cfg.Admin, nil
		}
		return defaultAdmin, nil
	}
}

var httpClient = &http.Client{Timeout: 15 * time.Second}

// call does one admin request and decodes the JSON answer into out.
func call(method, admin, path, body string, out any) (int, error) {
	req, err := http.NewRequest(method, "http://"+admin+path, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("no tandem server answers at %s (is it running? is --admin right?): %v", admin, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
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

func parseControl(name, usage string, args []string, stdout, stderr io.Writer, extra func(fs *flag.FlagSet)) (*flag.FlagSet, func() (string, error), int, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	out := helpOut(args, stdout, stderr)
	fs.SetOutput(out)
	resolve := adminFlags(fs)
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
and, when something needs doing, the runbook step.
`, args, stdout, stderr, func(fs *flag.FlagSet) { asJSON = fs.Bool("json", false, "print the status JSON object") })
	if !ok {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem status: unexpected argument", fs.Arg(0))
		return exitUsage
	}
	admin, err := resolve()
	if err != nil {
		fmt.Fprintln(stderr, "tandem status:", err)
		return exitUsage
	}
	var s node.Status
	var raw json.RawMessage
	if _, err := call(http.MethodGet, admin, "/status", "", &raw); err != nil {
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
		row("primary", "%s epoch %d, last heartbeat %s", name, p.Epoch, heard)
	}
	if s.Role == "primary" {
		if s.BackupConfigured && s.Backup != nil {
			row("backup", "%s (%s), replied %s ago", s.Backup.Node, s.Backup.Address, time.Duration(s.Backup.AgeMS)*time.Millisecond)
		} else {
			row("backup", "none replying: automatic failover is NOT enabled")
		}
	}
	if s.HeartbeatChannel.URL != "" {
		row("heartbeat channel", "%s (%s)", s.HeartbeatChannel.URL, map[bool]string{true: "connected", false: "DISCONNECTED"}[s.HeartbeatChannel.Connected])
	}
	if t := s.Takeover; t != nil {
		row("takeover", "%s to epoch %d, last step %s", t.Reason, t.Epoch, t.Step)
	}
	a := s.Agents
	row("agents", "%d managed, %d rewritten, %d failed, %d connected", a.Managed, a.Rewritten, a.Failed, a.Connected)
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
	fs, resolve, code, ok := parseControl("switchover", `Usage: tandem switchover [--admin HOST:PORT | --config FILE]

Run on (or against) the primary: the backup takes over at once with epoch+1,
rewrites every agent's address.yaml, and this primary becomes its backup by
itself (it writes its own primary_location). Fails when no backup replies.
`, args, stdout, stderr, nil)
	if !ok {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem switchover: unexpected argument", fs.Arg(0))
		return exitUsage
	}
	admin, err := resolve()
	if err != nil {
		fmt.Fprintln(stderr, "tandem switchover:", err)
		return exitUsage
	}
	var out map[string]string
	if _, err := call(http.MethodPost, admin, "/switchover", "", &out); err != nil {
		fmt.Fprintln(stderr, "tandem switchover:", err)
		return exitRuntime
	}
	fmt.Fprintln(stdout, out["result"])
	fmt.Fprintln(stdout, "watch it with: tandem status --admin", admin)
	return exitOK
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
	fs, resolve, code, ok := parseControl("maintenance", `Usage: tandem maintenance on|off [--admin HOST:PORT | --config FILE]

Pauses (on) or resumes (off) automatic failover. On the backup it stops the
failure detector; on the primary its heartbeats announce maintenance and the
backup pauses. The setting survives restarts. Leaving maintenance restarts
the silence window, so it never fails over at once.
`, args, stdout, stderr, nil)
	if !ok {
		return code
	}
	if state == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem maintenance: expected on or off (tandem maintenance on|off [--admin HOST:PORT | --config FILE])")
		return exitUsage
	}
	admin, err := resolve()
	if err != nil {
		fmt.Fprintln(stderr, "tandem maintenance:", err)
		return exitUsage
	}
	if _, err := call(http.MethodPost, admin, "/maintenance?state="+state, "", nil); err != nil {
		fmt.Fprintln(stderr, "tandem maintenance:", err)
		return exitRuntime
	}
	if state == "on" {
		fmt.Fprintln(stdout, "maintenance on: automatic failover paused")
	} else {
		fmt.Fprintln(stdout, "maintenance off: automatic failover resumed (the silence window starts now)")
	}
	return exitOK
}
