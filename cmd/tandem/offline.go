package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/version"
	"github.com/tandem-ha/tandem/node"
)

// offlineStatus is `tandem status --json` for a stopped server, read from
// its data dir: node.Status's keys (role "stopped") plus what only a
// stopped server has.
type offlineStatus struct {
	node.Status
	// LastRole is the role state.json last recorded ("" if the server
	// never ran).
	LastRole string `json:"last_role"`
	Running  bool   `json:"running"`
	DataDir  string `json:"data_dir"`
	// PrimaryLocation is DATA/primary_location (the server starts as its
	// backup), "" when absent.
	PrimaryLocation string `json:"primary_location"`
	// NextStart says what the next `tandem server` start does.
	NextStart string `json:"next_start"`
	// Peer is the other server as state.json last recorded it.
	Peer *node.PeerStatus `json:"peer"`
	// LastChange is the last role change of the event log, if any.
	LastChange *historyEntry `json:"last_change"`
}

// dataDirLocked reports whether a running server holds dir's lock. It
// never creates the lock file: `sudo tandem status` must not leave a
// root-owned .lock that the server's user cannot open.
func dataDirLocked(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, failoverid.LockFile)); err != nil {
		return false
	}
	return failoverid.Locked(dir)
}

// errBadDataDir marks an offline status error that is bad input (exit 2):
// a corrupt state.json or primary_location.
var errBadDataDir = errors.New("bad data-dir file")

// readOffline builds the status of a stopped server from cfg's data dir and
// event log. configPath is what the runbook lines name.
func readOffline(cfg *config.Config, configPath string) (offlineStatus, error) {
	o := offlineStatus{DataDir: cfg.DataDir}
	o.Status = node.Status{Node: cfg.Node, Role: "stopped", Listen: cfg.Listen, Warnings: []string{}, Version: version.Version}
	if host, port := cfg.AdvertiseHostPort(); port != 0 {
		o.Advertise = joinHostPort(host, port)
	} else {
		o.Advertise = cfg.Advertise
	}
	if _, err := os.Stat(cfg.DataDir); errors.Is(err, fs.ErrNotExist) {
		o.NextStart = "creates the data dir, a failover id and state.json, and runs as primary (no primary_location)"
		o.Warnings = append(o.Warnings, fmt.Sprintf("the data dir %s does not exist: this server never started with this config", cfg.DataDir))
		return o, nil
	}
	st, err := failoverid.LoadState(cfg.DataDir)
	if errors.Is(err, failoverid.ErrCorrupt) {
		return o, fmt.Errorf("%w: %v", errBadDataDir, err)
	} else if err != nil {
		return o, err
	}
	id, err := failoverid.LoadID(cfg.DataDir)
	switch {
	case err == nil:
		o.FailoverID = id
	case errors.Is(err, failoverid.ErrNoID):
	case errors.Is(err, failoverid.ErrCorruptID):
		return o, fmt.Errorf("%w: %v", errBadDataDir, err)
	default:
		return o, err
	}
	loc, isBackup, err := config.ReadPrimaryLocation(cfg.DataDir)
	if err != nil {
		return o, fmt.Errorf("%w: %v", errBadDataDir, err)
	}
	o.Epoch, o.Maintenance, o.LastRole, o.PrimaryLocation = st.Epoch, st.Maintenance, st.Role, loc

	peer := st.Peer
	if isBackup {
		p := &node.PrimaryStatus{Advertise: loc, LastHeartbeatAgeMS: -1, TakeoverInMS: -1, Heard: st.HeardPrimary == loc}
		if peer != nil && peer.Address == loc {
			p.Node, p.FailoverID, p.Epoch = peer.Node, peer.FailoverID, peer.Epoch
		}
		o.Primary = p
		if !p.Heard && st.Takeover == nil {
			o.Warnings = append(o.Warnings, fmt.Sprintf("this backup has never heard a valid heartbeat from the primary at %s: it will not take over automatically until it does (check primary_location, the group key and the network)", loc))
		}
	} else if peer != nil && peer.FailoverID != "" && st.Role == "primary" {
		o.Backup = &node.PeerStatus{Node: peer.Node, FailoverID: peer.FailoverID, Epoch: peer.Epoch, Address: peer.Address, AgeMS: -1}
	}
	if peer != nil && (peer.Node != "" || peer.FailoverID != "") {
		o.Peer = &node.PeerStatus{Node: peer.Node, FailoverID: peer.FailoverID, Epoch: peer.Epoch, Address: peer.Address}
	}

	last, refused := lastEvents(cfg.EventLogFile())
	if refused != nil {
		o.Warnings = append(o.Warnings, fmt.Sprintf("the last start was refused at %s: %s", localTime(refused.TMS), singleLine(refused.Detail)))
	}
	if last != nil {
		h := newHistoryEntry(*last)
		o.LastChange = &h
		o.Since = time.UnixMilli(last.TMS).UTC().Format(time.RFC3339)
		o.Why = last.Detail
	}

	if j := st.Takeover; j != nil {
		o.Takeover = &node.Takeover{Epoch: j.Epoch, Reason: j.Reason, Step: j.Step}
	}
	fenced := false
	if f := st.FencedBy; f != nil {
		fenced = f.Above(failoverid.Token{ID: o.FailoverID, Epoch: st.Epoch})
		by := &node.PeerStatus{FailoverID: f.ID, Epoch: f.Epoch}
		if peer != nil && peer.FailoverID == f.ID {
			by.Node, by.Address = peer.Node, peer.Address
		}
		if by.Node == "" && last != nil && last.Reason == "fence" {
			by.Node = last.To
		}
		o.FencedBy = by
		o.Runbook = fmt.Sprintf("this node was fenced by %s at epoch %d: make it a backup of the new primary, then start it: tandem rejoin --config %s --primary %s (docs/runbook.md, procedure 2)",
			nonEmpty(by.Node, f.ID), f.Epoch, configPath, nonEmpty(by.Address, "NEW_PRIMARY_HOST:PORT"))
	}

	switch j := st.Takeover; {
	case j != nil && failoverid.StepIndex(j.Step) < failoverid.StepIndex(failoverid.StepLocationDormant):
		o.NextStart = fmt.Sprintf("resumes the interrupted %s takeover to epoch %d after step %s", j.Reason, j.Epoch, j.Step)
		o.Warnings = append(o.Warnings, fmt.Sprintf("an interrupted %s takeover to epoch %d (last step %s): the next start resumes it; tandem rejoin abandons it instead", j.Reason, j.Epoch, j.Step))
	case j != nil:
		o.NextStart = fmt.Sprintf("finishes the %s takeover to epoch %d as primary (last step %s)", j.Reason, j.Epoch, j.Step)
	case isBackup:
		o.NextStart = "runs as a backup of " + loc + " (DATA/primary_location)"
	case fenced:
		o.NextStart = "refuses to act as primary and exits 3: this node is fenced"
	default:
		o.NextStart = "runs as primary (no primary_location), unless the agent files or its peer show a higher epoch (then it exits 3)"
	}
	if st.Maintenance {
		o.Warnings = append(o.Warnings, "maintenance mode is on in state.json: automatic failover stays paused after the start (tandem maintenance off to resume)")
	}
	if fenced {
		o.Warnings = append(o.Warnings, "fenced: "+o.Runbook)
	}
	return o, nil
}

// statusOffline answers `tandem status --config FILE` when the admin API
// does not: from the data dir when no server holds it, else the error.
func statusOffline(t adminTarget, asJSON bool, stdout, stderr io.Writer, callErr error) int {
	cfg := t.cfg
	if dataDirLocked(cfg.DataDir) {
		fmt.Fprintf(stderr, "tandem status: a server runs on %s (it holds %s) but its admin API does not answer: %v\n", cfg.DataDir, failoverid.LockFile, callErr)
		return exitRuntime
	}
	o, err := readOffline(cfg, t.cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "tandem status:", singleLine(strings.TrimPrefix(err.Error(), errBadDataDir.Error()+": ")))
		if errors.Is(err, errBadDataDir) {
			return exitUsage
		}
		return exitRuntime
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(o)
		return exitOK
	}
	printOffline(stdout, o, t.addr)
	return exitOK
}

func printOffline(w io.Writer, o offlineStatus, admin string) {
	fmt.Fprintf(w, "server %s is STOPPED (no server holds %s; nothing answers at %s)\n", o.Node, o.DataDir, admin)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, f string, a ...any) { fmt.Fprintf(tw, "%s\t"+f+"\n", append([]any{k}, a...)...) }
	row("node", "%s", o.Node)
	if o.LastRole != "" {
		row("role", "STOPPED (last role: %s)", o.LastRole)
	} else {
		row("role", "STOPPED (never ran)")
	}
	row("epoch", "%d", o.Epoch)
	row("failover id", "%s", nonEmpty(o.FailoverID, "(none yet: created at the first start)"))
	row("advertise", "%s", o.Advertise)
	row("maintenance", "%s", map[bool]string{true: "ON (automatic failover paused)", false: "off"}[o.Maintenance])
	if o.PrimaryLocation != "" {
		heard := "never heard"
		if o.Primary != nil && o.Primary.Heard {
			heard = "heard before"
		}
		name := ""
		if o.Primary != nil && o.Primary.Node != "" {
			name = fmt.Sprintf(" (%s, epoch %d)", o.Primary.Node, o.Primary.Epoch)
		}
		row("primary_location", "%s: a backup of %s%s, %s", o.PrimaryLocation, o.PrimaryLocation, name, heard)
	} else {
		row("primary_location", "none")
	}
	if p := o.Peer; p != nil {
		row("peer", "%s (%s) epoch %d, as last heard (state.json)", nonEmpty(p.Node, p.FailoverID), nonEmpty(p.Address, "?"), p.Epoch)
	}
	if f := o.FencedBy; f != nil {
		who := f.FailoverID
		if f.Node != "" {
			who = f.Node + " (" + f.FailoverID + ")"
		}
		row("fenced by", "%s at epoch %d", who, f.Epoch)
	}
	if t := o.Takeover; t != nil {
		row("takeover", "interrupted %s to epoch %d, last step %s", t.Reason, t.Epoch, t.Step)
	}
	if l := o.LastChange; l != nil {
		why := ""
		if l.Detail != "" {
			why = ": " + l.Detail
		}
		row("last role change", "%s %s (%s, epoch %d)%s", localTime(l.TMS), nonEmpty(l.Role, "?"), nonEmpty(l.Reason, "?"), l.Epoch, why)
	}
	row("next start", "%s", o.NextStart)
	for _, m := range o.Warnings {
		row("WARNING", "%s", m)
	}
	if o.Runbook != "" {
		row("next step", "%s", o.Runbook)
	}
	tw.Flush()
}
