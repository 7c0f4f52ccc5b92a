package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/internal/logging"
	"github.com/tandem-ha/tandem/node"
)

func init() {
	register("server", "run a server (role from the data dir: primary, or backup when primary_location exists)", cmdServer)
}

func cmdServer(args []string) int { return runServer(args, os.Stdout, os.Stderr) }

func runServer(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(helpOut(args, stdout, stderr))
	cfgPath := fs.String("config", "", "server config file (tandem.yaml); required")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tandem server --config FILE

Runs one tandem server until SIGTERM or SIGINT. The role comes from the data
dir: with a primary_location file the server is a backup of that primary and
takes over after heartbeat.fail_window of silence; without it the server is
the primary. A server that would start as primary but finds a higher epoch
(in state.json, in a managed address.yaml, or on its peer's heartbeat
channel) refuses and exits 3; make it a backup with 'tandem rejoin'.

Exit codes: 0 stopped cleanly, 1 runtime failure, 2 bad config or data-dir
file (one line naming the file), or another server that started earlier uses
this failover_id (a cloned VM: run 'tandem id --regenerate' on the clone),
3 refused: a higher epoch exists.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *cfgPath == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem server: --config FILE is required (and takes no arguments)")
		return exitUsage
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "tandem server:", err)
		return exitUsage
	}
	log, err := logging.New(stderr, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		fmt.Fprintf(stderr, "tandem server: %s: %v\n", *cfgPath, err)
		return exitUsage
	}
	n, err := node.New(cfg, log, node.Options{})
	if err != nil {
		fmt.Fprintln(stderr, "tandem server:", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch err := n.Run(ctx); {
	case err == nil:
		return exitOK
	case errors.Is(err, node.ErrFenced):
		fmt.Fprintln(stderr, "tandem server:", err)
		return exitFenced
	case errors.Is(err, node.ErrBadInput), errors.Is(err, node.ErrDuplicateID):
		fmt.Fprintln(stderr, "tandem server:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "tandem server:", err)
		return exitRuntime
	}
}
