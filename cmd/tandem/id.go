package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tandem-ha/tandem/failoverid"
)

func init() {
	register("id", "show or regenerate this server's failover id", cmdID)
}

func cmdID(args []string) int { return runID(args, os.Stdout, os.Stderr) }

const idUsage = `
Usage: tandem id --config FILE [--regenerate]

Prints this server's failover id (DATA/failover_id, a UUID) on stdout. If the
server has never started and the file does not exist yet, it is created the
way a first start would create it (a note goes to stderr).

--regenerate gives the server a new failover id, e.g. after cloning a VM or a
data dir: two servers must never share one. The server must be stopped.
Agents' address.yaml files still name the old id at the same epoch, so they
will ignore this server until repointed:
tandem agents repoint --config FILE --to ADVERTISE --force

Exit codes: 0 ok, 1 runtime failure or the server is running,
2 bad usage, bad config or a corrupt failover_id (the error names the file).
`

func runID(args []string, stdout, stderr io.Writer) int {
	c := newOfflineCmd("id", idUsage, stdout, stderr)
	regenerate := c.Bool("regenerate", false, "replace the failover id with a new one (server stopped; cloned VM/data dir)")
	if code, ok := c.parse(args); !ok {
		return code
	}
	cfg, code, ok := c.loadConfig()
	if !ok {
		return code
	}
	path := filepath.Join(cfg.DataDir, failoverid.IDFile)

	if !*regenerate {
		id, created, err := failoverid.LoadOrCreateID(cfg.DataDir)
		switch {
		case errors.Is(err, failoverid.ErrCorruptID):
			return c.fail(exitUsage, "%v", err)
		case err != nil:
			return c.fail(exitRuntime, "%s: %v", path, err)
		}
		if created {
			fmt.Fprintf(stderr, "tandem id: created %s (first use)\n", path)
		}
		fmt.Fprintln(stdout, id)
		return exitOK
	}

	if code, refused := c.refuseIfRunning(cfg); refused {
		return code
	}
	old, err := failoverid.LoadID(cfg.DataDir)
	switch {
	case errors.Is(err, failoverid.ErrNoID):
		old = "(none)"
	case errors.Is(err, failoverid.ErrCorruptID):
		old = "(corrupt)"
	case err != nil:
		return c.fail(exitRuntime, "%s: %v", path, err)
	}
	id, err := failoverid.RegenerateID(cfg.DataDir)
	if err != nil {
		return c.fail(exitRuntime, "%s: %v", path, err)
	}
	fmt.Fprintf(stdout, "regenerated %s: %s → %s\n", path, old, id)
	if len(cfg.Agents) > 0 {
		host, port := cfg.AdvertiseHostPort()
		fmt.Fprintf(stdout, "agents still name the old id; once this server is the one they should obey, repoint them:\n  tandem agents repoint --config %s --to %s --force\n",
			*c.configPath, joinHostPort(host, port))
	}
	return exitOK
}
