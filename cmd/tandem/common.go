package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/failoverid"
)

// offlineCmd is the flag handling shared by the commands that work on a
// stopped node's config and data dir (id, rejoin, agents list|repoint):
// --help prints the usage to stdout and exits 0; bad usage is one line on
// stderr and exit 2; a bad config is the config's one-line error and exit 2.
type offlineCmd struct {
	*flag.FlagSet
	name           string // as typed after "tandem", e.g. "agents repoint"
	usage          string
	stdout, stderr io.Writer
	configPath     *string
}

func newOfflineCmd(name, usage string, stdout, stderr io.Writer) *offlineCmd {
	c := &offlineCmd{
		FlagSet: flag.NewFlagSet(name, flag.ContinueOnError),
		name:    name, usage: usage, stdout: stdout, stderr: stderr,
	}
	c.configPath = c.String("config", "", "the server's config file (tandem.yaml); required")
	return c
}

// parse parses args; ok false means return code now.
func (c *offlineCmd) parse(args []string) (code int, ok bool) {
	c.SetOutput(io.Discard)
	if err := c.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.printUsage(c.stdout)
			return exitOK, false
		}
		return c.usageError("%v", err), false
	}
	if c.NArg() != 0 {
		return c.usageError("unexpected argument %q", c.Arg(0)), false
	}
	if *c.configPath == "" {
		return c.usageError("--config FILE is required"), false
	}
	return 0, true
}

func (c *offlineCmd) printUsage(w io.Writer) {
	fmt.Fprint(w, strings.TrimLeft(c.usage, "\n"))
	fmt.Fprint(w, "\nFlags:\n")
	c.SetOutput(w)
	c.PrintDefaults()
	c.SetOutput(io.Discard)
}

// usageError prints one line and returns exitUsage.
func (c *offlineCmd) usageError(format string, args ...interface{}) int {
	fmt.Fprintf(c.stderr, "tandem %s: %s (see tandem %s --help)\n", c.name, fmt.Sprintf(format, args...), c.name)
	return exitUsage
}

// fail prints "tandem NAME: message" on stderr and returns code.
func (c *offlineCmd) fail(code int, format string, args ...interface{}) int {
	fmt.Fprintf(c.stderr, "tandem %s: %s\n", c.name, singleLine(fmt.Sprintf(format, args...)))
	return code
}

// loadConfig loads --config; on error it prints the one-line error and
// returns exitUsage.
func (c *offlineCmd) loadConfig() (*config.Config, int, bool) {
	cfg, err := config.Load(*c.configPath)
	if err != nil {
		return nil, c.fail(exitUsage, "%v", err), false
	}
	return cfg, 0, true
}

// adminProbeTimeout bounds the "is the server running?" check.
const adminProbeTimeout = 500 * time.Millisecond

// serverRunning reports whether a tandem server answers HTTP GET /status on
// the config's admin address (any HTTP answer counts), and the URL asked.
// With admin port 0 (tests) there is nothing to ask and it reports false.
func serverRunning(cfg *config.Config) (bool, string) {
	host, port, err := net.SplitHostPort(cfg.Admin)
	if err != nil || port == "0" {
		return false, ""
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/status"
	client := &http.Client{Timeout: adminProbeTimeout}
	resp, err := client.Get(url)
	if err != nil {
		return false, url
	}
	resp.Body.Close()
	return true, url
}

// refuseIfRunning prints why and returns (exitRuntime, true) when the
// server is up.
func (c *offlineCmd) refuseIfRunning(cfg *config.Config) (int, bool) {
	if failoverid.Locked(cfg.DataDir) {
		return c.fail(exitRuntime, "a tandem server is running on %s (it holds %s): stop the server first", cfg.DataDir, failoverid.LockFile), true
	}
	if up, url := serverRunning(cfg); up {
		return c.fail(exitRuntime, "a tandem server is running (it answers %s): stop the server first", url), true
	}
	return 0, false
}

func singleLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.NewReplacer("\r\n", "; ", "\n", "; ", "\r", "; ").Replace(s)
}

// joinHostPort is net.JoinHostPort with an int port.
func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}
