package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agent"
	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/internal/jsonlines"
	"github.com/tandem-ha/tandem/internal/logging"
	"github.com/tandem-ha/tandem/protocol"
)

func init() {
	register("agent", "run the reference agent: follow an address.yaml, obey only the server it names", func(a []string) int { return runAgent(a, os.Stdout, os.Stderr) })
}

func runAgent(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("agent", flag.ContinueOnError)
	flags.SetOutput(helpOut(args, stdout, stderr))
	cfgPath := flags.String("config", "", "the agent's address.yaml (written only by a signed rebind and for failover_servers)")
	id := flags.String("id", "", "agent id in status reports (default: the address.yaml path)")
	fleet := flags.String("fleet", "", "run one agent per address.yaml found under this directory, in one process")
	period := flags.Duration("period", time.Second, "how often to report status")
	prefix := flags.String("destination-prefix", protocol.DefaultPrefix, "STOMP destination prefix (the servers' destination_prefix)")
	secretFile := flags.String("secret-file", "", "file holding the group's shared secret (this agent's status reports are then signed with it)")
	serverKey := flags.String("server-key", "", "the group's public key (`FILE`: signing.pub from tandem keygen): only commands a server signed with the group key are obeyed")
	login := flags.String("login", "", "STOMP login for the server's broker")
	passFile := flags.String("passcode-file", "", "file holding the STOMP passcode")
	caFile := flags.String("ca", "", "PEM `FILE` of the CAs to trust for use_ssl: 1 (default: the system's roots; the servers' tls.ca)")
	events := flags.String("events", "", "append every accepted/rejected command as a JSON line to this file")
	onRebind := flags.String("on-rebind", "", "shell `CMD` (sh -c) run after a signed rebind rewrote the address.yaml, e.g. \"systemctl restart datastax-agent\"")
	onRebindTimeout := flags.Duration("on-rebind-timeout", agent.DefaultOnRebindTimeout, "how long --on-rebind may run before it is killed")
	logFormat := flags.String("log-format", "text", "text or json")
	logLevel := flags.String("log-level", "info", "log level")
	flags.Usage = func() {
		fmt.Fprint(flags.Output(), `Usage: tandem agent --config ADDRESS_YAML --server-key FILE [--on-rebind CMD] [--id ID]
       tandem agent --fleet DIR --server-key FILE [--on-rebind CMD]

The reference managed agent. It connects to stomp_interface:stomp_port from
its address.yaml (TLS when use_ssl is 1), reports status every period, and
acts only on commands whose failover id and epoch equal the file's
failover_id and failover_epoch (it counts and reports the rest). It watches
the file and reconnects within a second of a rewrite; a malformed file is
logged and the last good configuration kept. --fleet runs one such agent
per address.yaml under DIR; the agents of one process share a connection
per server and, on Linux, one group commit (syncfs) of their own rewrites
(each still follows and checks its own file). A fleet's rewrites and
--on-rebind hooks run on at most 512 shared workers, and its agents'
period ticks are spread over the period; while rebinds wait for those
workers, the rewrites come first (an agent whose rebind waits skips up to
three ticks, the others tick every second period). A fleet runs Go's garbage
collector at GOGC=300 unless GOGC is set: more memory per agent, less CPU
in a takeover.

Agents on their own hosts: no server can write this file, so the agent
rewrites it itself. It keeps the group's other servers, which its primary's
pings name, in failover_servers ("HOST:PORT,HOST:PORT"; you may also write
it by hand) and holds a standby subscription at each. A new primary sends a
rebind there; the agent obeys it only if the group's key (--server-key)
signed it, its failover_sig covers its failover id, epoch and address, and
its token is newer than the file's. It then rewrites stomp_interface,
stomp_port, failover_id, failover_epoch and failover_sig with the servers'
compare-and-swap (the epoch never goes down; comments and every other key
are kept), runs --on-rebind, and reconnects. Without --server-key no rebind
is obeyed.

As a sidecar that keeps DataStax's own agent on the primary:

  tandem agent --config /var/lib/datastax-agent/conf/address.yaml \
    --server-key /etc/tandem/signing.pub \
    --on-rebind "systemctl restart datastax-agent"

--on-rebind runs with sh -c, at most --on-rebind-timeout, its output in the
log, with TANDEM_AGENT_ID, TANDEM_AGENT_CONFIG, TANDEM_FAILOVER_ID,
TANDEM_EPOCH and TANDEM_SERVER (host:port) in its environment.

Flags:
`)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if (*cfgPath == "") == (*fleet == "") || flags.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem agent: give exactly one of --config ADDRESS_YAML or --fleet DIR")
		return exitUsage
	}
	if *period <= 0 {
		fmt.Fprintln(stderr, "tandem agent: --period must be positive")
		return exitUsage
	}
	if *onRebindTimeout <= 0 {
		fmt.Fprintln(stderr, "tandem agent: --on-rebind-timeout must be positive")
		return exitUsage
	}
	log, err := logging.New(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "tandem agent:", err)
		return exitUsage
	}
	var key []byte
	if *secretFile != "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			fmt.Fprintln(stderr, "tandem agent: --secret-file:", err)
			return exitUsage
		}
		key = []byte(strings.TrimSpace(string(b)))
		if len(key) < config.MinSecretLength {
			fmt.Fprintf(stderr, "tandem agent: --secret-file %s: %d bytes; the servers' secret is at least %d\n", *secretFile, len(key), config.MinSecretLength)
			return exitUsage
		}
	}
	passcode := ""
	if *passFile != "" {
		b, err := os.ReadFile(*passFile)
		if err != nil {
			fmt.Fprintln(stderr, "tandem agent: --passcode-file:", err)
			return exitUsage
		}
		passcode = strings.TrimSpace(string(b))
	}
	var pub ed25519.PublicKey
	if *serverKey != "" {
		if pub, err = protocol.LoadPublicKey(*serverKey); err != nil {
			fmt.Fprintln(stderr, "tandem agent: --server-key:", err)
			return exitUsage
		}
	}
	var roots *x509.CertPool // nil: the system's
	if *caFile != "" {
		b, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintln(stderr, "tandem agent: --ca:", err)
			return exitUsage
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(b) {
			fmt.Fprintf(stderr, "tandem agent: --ca %s: no PEM certificate found\n", *caFile)
			return exitUsage
		}
	}
	var paths []string
	if *fleet != "" {
		err := filepath.WalkDir(*fleet, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && d.Name() == "address.yaml" {
				paths = append(paths, p)
			}
			return nil
		})
		if err != nil || len(paths) == 0 {
			fmt.Fprintf(stderr, "tandem agent: --fleet %s: no address.yaml files found (%v)\n", *fleet, err)
			return exitUsage
		}
	} else {
		// With no good configuration yet there is nothing to keep running
		// with: a missing or invalid file at start is a usage error (later
		// the agent keeps its last good configuration through bad edits).
		if _, err := agentcfg.ReadFile(*cfgPath); err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, *cfgPath) {
				msg = *cfgPath + ": " + msg
			}
			fmt.Fprintf(stderr, "tandem agent: %s\n", singleLine(msg))
			return exitUsage
		}
		paths = []string{*cfgPath}
	}
	var onEvent func(agent.Event)
	if *events != "" {
		f, err := os.OpenFile(*events, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(stderr, "tandem agent: --events:", err)
			return exitUsage
		}
		defer f.Close()
		// Buffered, flushed every 10 ms: a fleet of 10,000 agents reports
		// 100,000 events a second, which must not each be a write(2) under
		// one lock.
		ev := jsonlines.New(f, 10*time.Millisecond)
		defer ev.Close()
		onEvent = func(e agent.Event) {
			t := time.Now().UnixMilli()
			ev.Append(func(b []byte) []byte { return e.AppendJSON(b, t) })
		}
	}
	dial := func(ctx context.Context, addr agentcfg.Address) (broker.Bus, error) {
		scheme := "stomp://"
		var tc *tls.Config
		if addr.UseSSL {
			scheme = "stomp+ssl://"
			tc = &tls.Config{ServerName: addr.StompInterface, RootCAs: roots, MinVersion: tls.VersionTLS12}
		}
		link, err := broker.Dial(ctx, broker.LinkConfig{
			URL:   scheme + net.JoinHostPort(addr.StompInterface, strconv.Itoa(addr.StompPort)),
			Login: *login, Passcode: passcode, TLS: tc,
			HeartBeat: *period, BackoffMin: 500 * time.Millisecond, Log: log.WithField("agent_link", addr.StompInterface),
		})
		if err != nil {
			return nil, err // not a nil *Link inside a non-nil Bus
		}
		return link, nil
	}
	// The agents of this process share one link per server (the pool gives
	// each agent its own small command buffer): a takeover moves a fleet
	// with one connect, and a dead server is retried once, not per agent.
	pool := agent.NewPool(dial, agent.DefaultPoolBuffer)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// One inotify instance for every agent of this process (the kernel's
	// default limit is 128 instances per user).
	mux, err := agentcfg.NewWatchMux()
	if err != nil {
		fmt.Fprintln(stderr, "tandem agent:", err)
		return exitRuntime
	}
	defer mux.Close()
	dest := protocol.NewDestinations(*prefix)
	signer := protocol.NewGroupSigner(dest, protocol.Keys{Secret: key, Public: pub})
	if len(paths) > 1 {
		// A fleet's fan-out that fell behind (a takeover keeps a big
		// fleet busy) skips a ping that a later verified ping of the same
		// server follows. A lone agent decides on every command it
		// receives (a replayed one is counted as such).
		pool.SkipSuperseded(agent.PingSupersedes(signer, dest.AgentCommand))
		fleetGC(log)
	}
	// A fleet's agents rewrite their files together after a rebind: one
	// group commit serves them (a lone agent fsyncs its own file). It
	// needs syncfs(2): Linux only.
	var flusher *agentcfg.Flusher
	if len(paths) > 1 && runtime.GOOS == "linux" {
		flusher = agentcfg.NewFlusher(fleetWriters())
		defer flusher.Close()
	}
	// A fleet's file work runs on a bounded set of goroutines, and its
	// agents' periodic ticks are spread over the period: a broadcast
	// rebind, or every agent ticking at once, would otherwise make
	// thousands of goroutines runnable together and delay the links'
	// readers and fan-outs behind them (agent.Workers).
	var workers *agent.Workers
	if len(paths) > 1 {
		workers = agent.NewWorkers(agentcfg.MaxRewritesUnderWay)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(paths))
	for i, p := range paths {
		aid := *id
		if aid == "" || len(paths) > 1 {
			aid = p
			if *fleet != "" {
				if rel, err := filepath.Rel(*fleet, filepath.Dir(p)); err == nil {
					aid = rel
				}
			}
		}
		a := agent.New(agent.Config{Path: p, ID: aid, Period: *period, Dest: dest, Signer: signer, Dial: pool.Dial, Log: log, OnEvent: onEvent, Watch: mux.Watch,
			OnRebind: *onRebind, OnRebindTimeout: *onRebindTimeout, Flusher: flusher, Workers: workers, TickPhase: fleetPhase(i, len(paths), *period), PingGap: fleetPingGap(len(paths), *period)})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx); err != nil {
				errs <- err
			}
		}()
	}
	switch {
	case pub == nil && key == nil:
		log.Warn("no --server-key: this agent obeys any message that names its token, signed by a server or not, and no rebind at all (insecure; give it the group's signing.pub)")
	case pub == nil:
		log.Warn("no --server-key: commands are checked with the shared secret only, so a group whose servers sign with signing_key is not obeyed at all, and no rebind is (give this agent the group's signing.pub)")
	}
	log.WithField("agents", len(paths)).Info("agents running")
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		fmt.Fprintln(stderr, "tandem agent:", err)
		return exitRuntime
	}
	return exitOK
}

// fleetPingGap is the ping gap of a fleet of n agents (a lone agent: 0,
// it checks every command).
func fleetPingGap(n int, period time.Duration) time.Duration {
	if n <= 1 {
		return 0
	}
	return agent.FleetPingGap(period)
}

// fleetPhase is the delay of agent i's first periodic tick in a fleet of
// n: the fleet's ticks spread evenly over the period (a lone agent: 0).
func fleetPhase(i, n int, period time.Duration) time.Duration {
	if n <= 1 {
		return 0
	}
	return time.Duration(int64(period) * int64(i) / int64(n))
}

// fleetWriters bounds a fleet's rewrites doing their CPU work at once: a
// few per core (BenchmarkConcurrentCAS: 2 to 4 in all on 2 cores beat both
// 1 per agent and 16).
func fleetWriters() int { return 2 * runtime.GOMAXPROCS(0) }

// fleetGCPercent is a fleet's garbage collector target (GOGC) unless the
// environment sets one. A fleet's heap is mostly its agents' long-lived
// state, which every collection marks again, and a takeover makes it
// allocate fast for a second or two: at the default 100 the collector took
// about a tenth of a 10,000-agent fleet's CPU during a rebind. 300 spends
// memory (about 60 KB an agent becomes about 90) to bind the fleet sooner
// (BenchmarkRemoteAgentsFollow).
const fleetGCPercent = 300

// fleetGC sets fleetGCPercent, unless GOGC is set.
func fleetGC(log logrus.FieldLogger) {
	if _, set := os.LookupEnv("GOGC"); set {
		return
	}
	debug.SetGCPercent(fleetGCPercent)
	log.WithField("gogc", fleetGCPercent).Debug("fleet: garbage collector target raised (set GOGC to choose another)")
}
