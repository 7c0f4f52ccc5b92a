package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/fsutil"
)

func init() {
	register("rejoin", "make a stopped node (fenced, or an old primary) a backup of the given primary", cmdRejoin)
}

func cmdRejoin(args []string) int { return runRejoin(args, os.Stdout, os.Stderr) }

const rejoinUsage = `
Usage: tandem rejoin --config FILE --primary HOST[:PORT]

Makes a stopped node a backup of the primary at HOST[:PORT] (port default
61620; IPv6 as [::1]:61620) - the runbook step for a fenced server or an old
primary after a failover. It:
  1. writes DATA/primary_location (atomically) naming the primary,
  2. removes DATA/primary_location.dormant, if any,
  3. clears the fenced mark and any interrupted takeover in DATA/state.json
     and sets its role to backup. The epoch is kept: it never goes down.
Then start the server; it runs as a backup and heartbeats with the primary.

The server must be stopped (the command asks the admin address first).
It also connects to HOST:PORT (TCP, 2 s) and prints a WARNING when nothing
answers there; it rejoins anyway (the primary may be down for maintenance).

Exit codes: 0 ok, 1 runtime failure or the server is running, 2 bad usage,
bad config, bad --primary or a corrupt state.json (nothing is written).
`

// primaryProbeTimeout bounds rejoin's TCP connect to --primary.
var primaryProbeTimeout = 2 * time.Second

// probePrimary connects to the primary's broker at hostport (TCP only,
// nothing sent) and closes the connection. Loopback addresses are dialed
// as given: a pair on one host (the demo, tests) works the same.
func probePrimary(hostport string) error {
	conn, err := net.DialTimeout("tcp", hostport, primaryProbeTimeout)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Err != nil {
			return op.Err
		}
		return err
	}
	return conn.Close()
}

func runRejoin(args []string, stdout, stderr io.Writer) int {
	c := newOfflineCmd("rejoin", rejoinUsage, stdout, stderr)
	primary := c.String("primary", "", "the primary's HOST[:PORT] (its advertise address); required")
	if code, ok := c.parse(args); !ok {
		return code
	}
	if *primary == "" {
		return c.usageError("--primary HOST[:PORT] is required")
	}
	loc, err := config.NormalizePrimaryLocation(*primary)
	if err != nil {
		return c.usageError("--primary %v", err)
	}
	cfg, code, ok := c.loadConfig()
	if !ok {
		return code
	}
	if host, port := cfg.AdvertiseHostPort(); port != 0 && joinHostPort(host, port) == loc {
		return c.fail(exitUsage, "--primary %s is this node's own advertise address: give the other server's", loc)
	}
	st, err := failoverid.LoadState(cfg.DataDir)
	if errors.Is(err, failoverid.ErrCorrupt) {
		return c.fail(exitUsage, "%v", err)
	} else if err != nil {
		return c.fail(exitRuntime, "%v", err)
	}
	if code, refused := c.refuseIfRunning(cfg); refused {
		return code
	}
	// Does the named primary answer? Only a warning: it may be down for
	// maintenance, and the backup waits for its heartbeats anyway.
	var warnings []string
	if err := probePrimary(loc); err != nil {
		warnings = append(warnings, fmt.Sprintf("nothing answers at %s (%v): is the primary's server running, and is --primary its advertise address? Rejoined anyway: once started, this backup waits for its heartbeats and never takes over from a primary it has not heard", loc, err))
	}

	// primary_location first: a crash before state.json is saved leaves a
	// node that starts as a backup (and rejoin can simply be run again),
	// never one that starts as an unfenced primary.
	locPath := filepath.Join(cfg.DataDir, config.PrimaryLocationFile)
	if err := config.WritePrimaryLocation(cfg.DataDir, loc); err != nil {
		return c.fail(exitRuntime, "write %s: %v", locPath, err)
	}
	var done []string
	done = append(done, fmt.Sprintf("wrote %s: %s", locPath, loc))
	dormant := filepath.Join(cfg.DataDir, config.PrimaryLocationDormantFile)
	switch err := os.Remove(dormant); {
	case err == nil:
		if err := fsutil.SyncDir(cfg.DataDir); err != nil {
			return c.fail(exitRuntime, "sync %s: %v", cfg.DataDir, err)
		}
		done = append(done, "removed "+dormant)
	case !errors.Is(err, fs.ErrNotExist):
		return c.fail(exitRuntime, "remove %s: %v", dormant, err)
	}

	next := st
	if st.FencedBy != nil {
		done = append(done, fmt.Sprintf("cleared the fenced mark (fenced by %s)", st.FencedBy))
		next.FencedBy = nil
	}
	if j := st.Takeover; j != nil {
		done = append(done, fmt.Sprintf("abandoned the interrupted %s takeover to epoch %d (last step %s)", j.Reason, j.Epoch, j.Step))
		next.Takeover = nil
		if failoverid.StepIndex(j.Step) >= failoverid.StepIndex(failoverid.StepAgentsRewritten) {
			warnings = append(warnings, fmt.Sprintf("that takeover may have repointed agents to epoch %d: the primary must run at a higher epoch, or it is fenced when it sees them (check: tandem agents list --config %s)", j.Epoch, *c.configPath))
		}
	}
	next.Role = "backup"
	if err := failoverid.SaveState(cfg.DataDir, next); err != nil {
		return c.fail(exitRuntime, "write %s: %v", filepath.Join(cfg.DataDir, failoverid.StateFile), err)
	}
	done = append(done, fmt.Sprintf("set role backup in %s; epoch stays %d", filepath.Join(cfg.DataDir, failoverid.StateFile), st.Epoch))

	fmt.Fprintf(stdout, "rejoin: %s is now a backup of %s\n", cfg.Node, loc)
	for _, d := range done {
		fmt.Fprintf(stdout, "  %s\n", d)
	}
	for _, w := range warnings {
		fmt.Fprintf(stdout, "WARNING: %s\n", w)
	}
	fmt.Fprintf(stdout, "next: start the server: tandem server --config %s\n", *c.configPath)
	return exitOK
}
