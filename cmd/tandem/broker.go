package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/internal/logging"
)

func init() {
	register("broker", "run a standalone embedded broker", cmdBroker)
}

func cmdBroker(args []string) int { return runBroker(args, os.Stdout, os.Stderr) }

// runBroker is cmdBroker with its output streams.
func runBroker(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("broker", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	listen := flags.String("listen", "127.0.0.1:61620", "`HOST:PORT` to listen on (port 0 picks a free port)")
	maxFrame := flags.Int("max-frame", broker.DefaultMaxFrameSize, "largest frame a client may send, in `bytes`")
	maxConns := flags.Int("max-conns", broker.DefaultMaxConns, "most concurrent connections")
	login := flags.String("login", "", "require this STOMP login (with --passcode-file)")
	passFile := flags.String("passcode-file", "", "`FILE` holding the STOMP passcode (first line); required with --login")
	certFile := flags.String("tls-cert", "", "PEM certificate `FILE`: serve TLS only (with --tls-key)")
	keyFile := flags.String("tls-key", "", "PEM private key `FILE` for --tls-cert")
	logFormat := flags.String("log-format", "text", "log format: text or json")
	logLevel := flags.String("log-level", "info", "log level: debug, info, warn, error")
	usage := func(w io.Writer) {
		fmt.Fprint(w, `Usage: tandem broker [--listen HOST:PORT] [flags]

Runs tandem's embedded STOMP broker on its own, e.g. as the external
heartbeat_broker of a pair, until SIGTERM or SIGINT. Every destination is a
topic; clients that stop reading are disconnected, oversized frames refused.
It logs the bound address once listening.

Flags:
`)
		flags.SetOutput(w)
		flags.PrintDefaults()
		flags.SetOutput(io.Discard)
	}
	fail := func(code int, format string, a ...interface{}) int {
		fmt.Fprintf(stderr, "tandem broker: %s\n", fmt.Sprintf(format, a...))
		return code
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return exitOK
		}
		return fail(exitUsage, "%v (see tandem broker --help)", err)
	}
	if flags.NArg() != 0 {
		return fail(exitUsage, "unexpected argument %q (see tandem broker --help)", flags.Arg(0))
	}
	if (*certFile == "") != (*keyFile == "") {
		return fail(exitUsage, "--tls-cert and --tls-key go together")
	}
	if (*login == "") != (*passFile == "") {
		return fail(exitUsage, "--login and --passcode-file go together")
	}
	log, err := logging.New(stderr, *logFormat, *logLevel)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	cfg := broker.ServerConfig{Listen: *listen, MaxFrameSize: *maxFrame, MaxConns: *maxConns, Login: *login, Log: log}
	if *passFile != "" {
		b, err := os.ReadFile(*passFile)
		if err != nil {
			return fail(exitUsage, "--passcode-file: %v", err)
		}
		first, _, _ := strings.Cut(string(b), "\n")
		cfg.Passcode = strings.TrimRight(first, "\r")
		if cfg.Passcode == "" {
			return fail(exitUsage, "--passcode-file %s: empty passcode", *passFile)
		}
	}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			return fail(exitUsage, "--tls-cert/--tls-key: %v", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv, err := broker.StartServer(cfg)
	if err != nil {
		if errors.Is(err, broker.ErrInvalidConfig) {
			return fail(exitUsage, "%v", err)
		}
		return fail(exitRuntime, "%v", err)
	}
	<-ctx.Done()
	log.WithField("addr", srv.Addr()).Info("signal received, stopping broker")
	if err := srv.Close(); err != nil {
		return fail(exitRuntime, "close: %v", err)
	}
	st := srv.Stats()
	log.WithFields(map[string]interface{}{
		"connections_total": st.TotalConnections, "messages": st.Messages, "slow_clients": st.SlowClients,
		"auth_failures": st.AuthFailures, "oversized_frames": st.OversizedFrames, "refused_conns": st.RefusedConns,
	}).Info("broker stopped")
	return exitOK
}
