// Package config reads and validates a tandem server's configuration
// (tandem.yaml) and the small files of its data directory that an operator
// edits by hand (primary_location).
//
// Load decodes strictly: an unknown (typo'd) key, a value of the wrong type
// or a broken relation between values is an error of one line that starts
// with the config file's path, names the key and, where it can, the line, and
// wraps ErrInvalid. Nothing is guessed and nothing is written.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/internal/redact"
	"github.com/tandem-ha/tandem/protocol"
)

// DefaultPort is the embedded broker's port, and the port of an advertise or
// primary_location address that names none (OpsCenter's agent port).
const DefaultPort = 61620

// Defaults of the server configuration (OpsCenter's timing).
const (
	DefaultListen            = "0.0.0.0:61620"
	DefaultAdmin             = "127.0.0.1:61630"
	DefaultPeriod            = 10 * time.Second
	DefaultReplyPeriod       = 300 * time.Second
	DefaultFailWindow        = 60 * time.Second
	DefaultHookTimeout       = 30 * time.Second
	DefaultDestinationPrefix = "/topic/tandem."
	// DefaultMaxAgentFileSize bounds what is read of an address.yaml.
	DefaultMaxAgentFileSize = 1 << 20
	// MinSecretLength is the shortest shared secret accepted.
	MinSecretLength = 16

	// DefaultPriority is priority: when the key is left out. MaxPriority
	// is the highest; 0 means "never takes over automatically".
	DefaultPriority = 100
	MaxPriority     = 255
	// Defaults of a checks: item.
	DefaultCheckInterval = 5 * time.Second
	DefaultCheckTimeout  = 2 * time.Second
	DefaultCheckFall     = 3
	DefaultCheckRise     = 2
	// MaxCheckCount bounds fall and rise.
	MaxCheckCount = 100
	// DefaultPreemptDelay is preempt_delay: when the key is left out.
	DefaultPreemptDelay = 5 * time.Minute
)

// The values of health: (how failed checks lower the effective priority).
const (
	HealthAll         = "all"         // every check must be up, else 0
	HealthOne         = "one"         // one check up is enough; 0 only when all are down
	HealthProgressive = "progressive" // priority × (1 - down/total), rounded down
)

// ServiceCheckName is the name of the health package's synthetic check that
// is down while the last service.start failed; a configured check may not
// use it.
const ServiceCheckName = "service"

var (
	// ErrInvalid is wrapped by every error about a bad configuration or a
	// bad hand-edited data file (primary_location).
	ErrInvalid = errors.New("config: invalid")
)

// Error is a configuration error: Path is the file (may be empty for a
// Config built in code), Key the dotted key ("heartbeat.fail_window", may be
// empty), Line the line in the file (0 if unknown). It wraps ErrInvalid.
type Error struct {
	Path string
	Key  string
	Line int
	Msg  string // the whole message after the path; it names the key itself
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(oneLine(e.Msg))
	if e.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

// Heartbeat is the heartbeat timing.
type Heartbeat struct {
	// Period is how often the primary heartbeats.
	Period time.Duration `yaml:"period"`
	// ReplyPeriod is how often the backup replies (it also replies at once
	// when it starts or changes state).
	ReplyPeriod time.Duration `yaml:"reply_period"`
	// FailWindow is the silence after which the backup takes over; at least
	// 2 × Period.
	FailWindow time.Duration `yaml:"fail_window"`
}

// BrokerAuth holds credentials for heartbeat_broker (or, with it empty, the
// embedded broker's authentication). All optional.
type BrokerAuth struct {
	Login    string `yaml:"login"`
	Passcode string `yaml:"passcode"`
	Vhost    string `yaml:"vhost"`
}

// TLS secures the embedded broker. With Cert and Key set, the broker serves
// TLS only and this server dials its peer's embedded broker over TLS too (a
// pair is configured alike). CA, if set, is the PEM bundle trusted when
// this server dials any broker over TLS (the peer's, or a stomp+ssl://
// heartbeat_broker); without it the system's roots are trusted.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	CA   string `yaml:"ca"`
}

// Enabled reports whether the embedded broker serves TLS.
func (t TLS) Enabled() bool { return t.Cert != "" }

// Hooks are shell commands (run with /bin/sh -c) around a takeover.
type Hooks struct {
	BeforeTakeover string        `yaml:"before_takeover"`
	AfterTakeover  string        `yaml:"after_takeover"`
	OnFenced       string        `yaml:"on_fenced"`
	Timeout        time.Duration `yaml:"timeout"`
}

// Log configures logging.
type Log struct {
	Format string `yaml:"format"` // text | json
	Level  string `yaml:"level"`  // a logrus level: trace debug info warn error fatal panic
}

// Check is one item of checks: a probe that runs every Interval and must
// finish within Timeout. Command is a shell command (run with /bin/sh -c,
// exit status 0 is success), or "http:URL", "http://..." or "https://..."
// (an HTTP GET that must answer 2xx), or "tcp:HOST:PORT" (a TCP connect).
// Fall consecutive failures take it down, Rise consecutive successes bring
// it back up.
type Check struct {
	Name     string
	Command  string
	Interval time.Duration
	Timeout  time.Duration
	Fall     int
	Rise     int
}

// The kinds of a Check's Command (see Check.Probe).
const (
	CheckShell = "shell"
	CheckHTTP  = "http"
	CheckTCP   = "tcp"
)

// Probe splits Command into its kind (CheckShell, CheckHTTP or CheckTCP)
// and target: the shell command, the URL ("http:host:port/x" means
// http://host:port/x; "http:http://..." and "http:https://..." are the URL
// after "http:") or HOST:PORT. It does not validate (Validate does).
func (c Check) Probe() (kind, target string) {
	cmd := strings.TrimSpace(c.Command)
	switch {
	case strings.HasPrefix(cmd, "http://"), strings.HasPrefix(cmd, "https://"):
		return CheckHTTP, cmd
	case strings.HasPrefix(cmd, "http:"):
		rest := strings.TrimSpace(cmd[len("http:"):])
		if !strings.HasPrefix(rest, "http://") && !strings.HasPrefix(rest, "https://") {
			rest = "http://" + rest
		}
		return CheckHTTP, rest
	case strings.HasPrefix(cmd, "tcp:"):
		return CheckTCP, strings.TrimSpace(cmd[len("tcp:"):])
	}
	return CheckShell, c.Command
}

// Service holds the commands (run with /bin/sh -c) that start the managed
// service when this node becomes primary and stop it when it stops being
// primary. Both optional.
type Service struct {
	Start string `yaml:"start"`
	Stop  string `yaml:"stop"`
}

// Arbiter defaults.
const (
	DefaultArbiterTTL    = 30 * time.Second
	DefaultArbiterPrefix = "/tandem"
)

// Arbiter (key "arbiter") makes the group's primary role a lease in etcd:
// a server acts as primary only while it holds the group's election.
type Arbiter struct {
	Etcd Etcd `yaml:"etcd"`
	// Failsafe (key "arbiter.failsafe", default false): a primary that
	// cannot renew its lease keeps acting while every backup it knew when
	// the lease was lost still answers its heartbeats (Patroni's
	// failsafe_mode); off, it stops acting at renew_deadline.
	Failsafe bool `yaml:"failsafe"`
}

// Enabled reports whether an arbiter is configured.
func (a Arbiter) Enabled() bool { return len(a.Etcd.Endpoints) > 0 }

// Etcd is the arbiter's etcd cluster (key "arbiter.etcd"). The TLS and
// auth keys are etcdctl's: cacert, cert, key, user, password.
type Etcd struct {
	Endpoints []string `yaml:"endpoints"`
	// Prefix is the group's key prefix (default DefaultArbiterPrefix).
	Prefix string `yaml:"prefix"`
	// TTL is the lease's time to live, whole seconds (default
	// DefaultArbiterTTL); RenewDeadline (default TTL/3) how long a primary
	// acts after its last successful renewal was sent:
	// renew_deadline + 2 × heartbeat.period must not exceed ttl.
	TTL           time.Duration `yaml:"ttl"`
	RenewDeadline time.Duration `yaml:"renew_deadline"`
	CACert        string        `yaml:"cacert"`
	Cert          string        `yaml:"cert"`
	Key           string        `yaml:"key"`
	User          string        `yaml:"user"`
	Password      string        `yaml:"password"`
	// PasswordFile holds the password (one line), instead of password.
	PasswordFile string `yaml:"password_file"`
}

// Config is a server's tandem.yaml.
type Config struct {
	// Node names this server in messages and logs (default: the host name).
	Node string
	// DataDir holds failover_id, state.json, primary_location. A relative
	// data_dir is resolved against the config file's directory.
	DataDir string
	// Listen is the embedded broker's host:port (agents and the backup).
	Listen string
	// Advertise is the host:port agents are told to use when this node is
	// active. Without a port DefaultPort is meant (see AdvertiseHostPort).
	// Port 0 (tests only) means "the port Listen actually bound".
	Advertise string
	// Admin is the admin HTTP API's host:port (status, metrics, control).
	Admin string
	// Heartbeat timing.
	Heartbeat Heartbeat
	// HeartbeatBroker is empty (the primary's embedded broker carries the
	// heartbeat channel) or stomp://HOST:PORT / stomp+ssl://HOST:PORT.
	HeartbeatBroker string
	// Broker holds STOMP credentials.
	Broker BrokerAuth
	// TLS secures the embedded broker and says which CA to trust.
	TLS TLS
	// SharedSecret (key "secret") signs every message with HMAC-SHA256;
	// SecretFile (key "secret_file") is the alternative. Use Secret().
	SharedSecret string
	SecretFile   string
	// SigningKey (key "signing_key") is the group's Ed25519 private key
	// (tandem keygen), relative to the config file: every server message is
	// signed with it. A server needs it, or Insecure.
	SigningKey string
	// Insecure (key "insecure") runs a server without a group key: anyone
	// who reaches the broker can speak for a server. Labs only; status says
	// so in a WARNING.
	Insecure bool
	// MaxAgentFileSize (key "max_agent_file_size", bytes) bounds what is
	// read of an agent's address.yaml before parsing.
	MaxAgentFileSize int64
	// EventLogMessages (key "event_log_messages") adds a line for every
	// heartbeat and agent command sent to the event log (the fault suite's
	// invariant checker reads them); off, the log holds role changes,
	// fences, takeovers and maintenance only.
	EventLogMessages bool
	// EventLog (key "event_log"), when set, is a file the server appends
	// JSON lines to: every heartbeat and command it sends with its epoch,
	// role changes, fences and takeover steps (for audits and the
	// fault-injection suite's invariant checker).
	EventLog string
	// DestinationPrefix prefixes the STOMP destinations (heartbeat, ...).
	DestinationPrefix string
	// Agents are globs of managed address.yaml files (relative ones resolved
	// against the config file's directory).
	Agents []string
	// Hooks around takeover.
	Hooks Hooks
	// Log settings.
	Log Log

	// Priority (key "priority", 0..255, default DefaultPriority) ranks the
	// backups of one group: the eligible one with the highest effective
	// priority takes over. 0: never takes over automatically.
	Priority int
	// Checks (key "checks") are the health checks that make the priority
	// effective (package health).
	Checks []Check
	// Health (key "health": HealthAll, HealthOne or HealthProgressive,
	// default all) is how failed checks lower the effective priority.
	Health string
	// Service (key "service") starts and stops the managed service with
	// the primary role.
	Service Service
	// Preempt (key "preempt", default false: no failback): a healthier,
	// higher-priority server that has been up PreemptDelay asks the
	// primary for a switchover.
	Preempt bool
	// PreemptDelay (key "preempt_delay", default DefaultPreemptDelay, >= 0).
	PreemptDelay time.Duration

	// Arbiter (key "arbiter"): the group's election in etcd.
	Arbiter Arbiter

	// Path is the file this Config was loaded from ("" if built in code).
	Path string
	// lines maps dotted keys to their line in Path, for error messages.
	lines map[string]int
}

// DefaultConfig returns the defaults. DataDir and Advertise have none and
// must be set; Node defaults to the host name.
func DefaultConfig() *Config {
	host, _ := os.Hostname()
	return &Config{
		Node:   host,
		Listen: DefaultListen,
		Admin:  DefaultAdmin,
		Heartbeat: Heartbeat{
			Period:      DefaultPeriod,
			ReplyPeriod: DefaultReplyPeriod,
			FailWindow:  DefaultFailWindow,
		},
		DestinationPrefix: DefaultDestinationPrefix,
		MaxAgentFileSize:  DefaultMaxAgentFileSize,
		Hooks:             Hooks{Timeout: DefaultHookTimeout},
		Log:               Log{Format: "text", Level: "info"},
		Priority:          DefaultPriority,
		Health:            HealthAll,
		PreemptDelay:      DefaultPreemptDelay,
	}
}

// TestConfig is a fast, loopback-only profile for other packages' tests:
// period 100ms, reply_period 1s, fail_window 500ms, every port 0 (the
// caller's listener picks one; Advertise port 0 means "the bound port").
func TestConfig(dataDir string) *Config {
	c := DefaultConfig()
	c.Node = "test"
	c.DataDir = dataDir
	c.Listen = "127.0.0.1:0"
	c.Advertise = "127.0.0.1:0"
	c.Admin = "127.0.0.1:0"
	c.Heartbeat = Heartbeat{Period: 100 * time.Millisecond, ReplyPeriod: time.Second, FailWindow: 500 * time.Millisecond}
	c.Hooks.Timeout = 5 * time.Second
	c.Insecure = true // in-process tests; process-level ones use a group key
	return c
}

// Validate checks every value and the relations between them. The error
// names the key (and, for a loaded Config, the file and line) and wraps
// ErrInvalid.
func (c *Config) Validate() error {
	fail := func(key, format string, args ...interface{}) error {
		return &Error{Path: c.Path, Key: key, Line: c.lines[key], Msg: fmt.Sprintf(format, args...)}
	}
	if c.Node == "" {
		return fail("node", "node is required (default: the host name, which is unknown here)")
	}
	if strings.IndexFunc(c.Node, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return fail("node", "node %q must not contain spaces or control characters", c.Node)
	}
	if c.DataDir == "" {
		return fail("data_dir", "data_dir is required")
	}
	if _, _, err := splitHostPort(c.Listen, false, -1); err != nil {
		return fail("listen", "listen: %v", err)
	}
	if c.Advertise == "" {
		return fail("advertise", "advertise is required: the HOST[:PORT] agents connect to when this node is active")
	}
	if host, _, err := splitHostPort(c.Advertise, true, DefaultPort); err != nil {
		return fail("advertise", "advertise: %v", err)
	} else if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fail("advertise", "advertise: %s is not an address agents can connect to; give this node's reachable host or IP", host)
	}
	if _, _, err := splitHostPort(c.Admin, false, -1); err != nil {
		return fail("admin", "admin: %v", err)
	}
	h := c.Heartbeat
	if h.Period <= 0 {
		return fail("heartbeat.period", "heartbeat.period (%s) must be positive", h.Period)
	}
	if h.ReplyPeriod <= 0 {
		return fail("heartbeat.reply_period", "heartbeat.reply_period (%s) must be positive", h.ReplyPeriod)
	}
	if h.FailWindow < 2*h.Period {
		return fail("heartbeat.fail_window", "heartbeat.fail_window (%s) must be at least 2 × heartbeat.period (%s)", h.FailWindow, h.Period)
	}
	if c.HeartbeatBroker != "" {
		if _, _, err := parseBrokerURL(c.HeartbeatBroker); err != nil {
			return fail("heartbeat_broker", "heartbeat_broker: %v", err)
		}
	}
	if c.TLS.Cert != "" && c.TLS.Key == "" {
		return fail("tls.key", "tls.cert is set but tls.key is empty: give both to serve TLS")
	}
	if c.TLS.Key != "" && c.TLS.Cert == "" {
		return fail("tls.cert", "tls.key is set but tls.cert is empty: give both to serve TLS")
	}
	if c.Broker.Passcode != "" && c.Broker.Login == "" {
		return fail("broker.passcode", "broker.passcode is set but broker.login is empty")
	}
	if c.SharedSecret != "" && c.SecretFile != "" {
		return fail("secret_file", "secret and secret_file are both set; use one")
	}
	if c.SharedSecret != "" && len(c.SharedSecret) < MinSecretLength {
		return fail("secret", "secret is %d bytes; use at least %d (for example: head -c 32 /dev/urandom | base64)", len(c.SharedSecret), MinSecretLength)
	}
	if c.SigningKey != "" && c.Insecure {
		return fail("insecure", "insecure: true and signing_key are both set; drop insecure to sign with the group key")
	}
	if c.MaxAgentFileSize < 1024 || c.MaxAgentFileSize > 64<<20 {
		return fail("max_agent_file_size", "max_agent_file_size %d must be between 1024 and %d bytes (default %d)", c.MaxAgentFileSize, 64<<20, DefaultMaxAgentFileSize)
	}
	if c.DestinationPrefix == "" || !strings.HasPrefix(c.DestinationPrefix, "/") ||
		strings.IndexFunc(c.DestinationPrefix, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return fail("destination_prefix", "destination_prefix %q must start with / and contain no spaces (default %s)", c.DestinationPrefix, DefaultDestinationPrefix)
	}
	for i, g := range c.Agents {
		key := fmt.Sprintf("agents[%d]", i)
		if g == "" {
			return fail(key, "%s is empty; give a glob like /var/lib/agents/*/conf/address.yaml", key)
		}
		if _, err := filepath.Match(g, ""); err != nil {
			return fail(key, "%s: %q is not a valid glob: %v", key, g, err)
		}
	}
	if c.Hooks.Timeout <= 0 {
		return fail("hooks.timeout", "hooks.timeout (%s) must be positive", c.Hooks.Timeout)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fail("log.format", "log.format %q must be text or json", c.Log.Format)
	}
	if _, err := logrus.ParseLevel(c.Log.Level); err != nil {
		return fail("log.level", "log.level %q must be one of trace, debug, info, warn, error, fatal, panic", c.Log.Level)
	}
	if c.Priority < 0 || c.Priority > MaxPriority {
		return fail("priority", "priority %d must be between 0 and %d (default %d; 0: never takes over automatically)", c.Priority, MaxPriority, DefaultPriority)
	}
	switch c.Health {
	case HealthAll, HealthOne, HealthProgressive:
	default:
		return fail("health", "health %q must be all, one or progressive (default all)", c.Health)
	}
	if c.PreemptDelay < 0 {
		return fail("preempt_delay", "preempt_delay (%s) must not be negative", c.PreemptDelay)
	}
	if err := c.validateArbiter(fail); err != nil {
		return err
	}
	seen := map[string]int{}
	for i, k := range c.Checks {
		item := fmt.Sprintf("checks[%d]", i)
		failc := func(field, format string, args ...interface{}) error {
			key := item + "." + field
			line, ok := c.lines[key]
			if !ok {
				line = c.lines[item] // a key left out: the item's line
			}
			return &Error{Path: c.Path, Key: key, Line: line, Msg: key + ": " + fmt.Sprintf(format, args...)}
		}
		if k.Name == "" {
			return failc("name", "is required (a name of letters, digits, _ . or -)")
		}
		if !checkNameRE.MatchString(k.Name) {
			return failc("name", "%q must be 1 to 64 letters, digits, _ . or -", k.Name)
		}
		if k.Name == ServiceCheckName {
			return failc("name", "%q is reserved (the service check: down while service.start failed)", k.Name)
		}
		if j, dup := seen[k.Name]; dup {
			return failc("name", "%q is also the name of checks[%d]; names must be unique", k.Name, j)
		}
		seen[k.Name] = i
		if strings.TrimSpace(k.Command) == "" {
			return failc("command", "is required: a shell command, http:URL or tcp:HOST:PORT")
		}
		switch kind, target := k.Probe(); kind {
		case CheckHTTP:
			u, err := url.Parse(target)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return failc("command", "%q is not an http: check: expected http://HOST[:PORT]/PATH or https://...", RedactURL(k.Command))
			}
		case CheckTCP:
			host, port, err := splitHostPort(target, false, -1)
			if err != nil {
				return failc("command", "tcp: check: %v", err)
			}
			if host == "" || port == 0 {
				return failc("command", "%q is not a tcp: check: expected tcp:HOST:PORT with a host and a port 1-65535", k.Command)
			}
		}
		if k.Interval <= 0 {
			return failc("interval", "(%s) must be positive (default %s)", k.Interval, DefaultCheckInterval)
		}
		if k.Timeout <= 0 || k.Timeout > k.Interval {
			return failc("timeout", "(%s) must be positive and at most %s.interval (%s)", k.Timeout, item, k.Interval)
		}
		if k.Fall < 1 || k.Fall > MaxCheckCount {
			return failc("fall", "%d must be between 1 and %d (default %d)", k.Fall, MaxCheckCount, DefaultCheckFall)
		}
		if k.Rise < 1 || k.Rise > MaxCheckCount {
			return failc("rise", "%d must be between 1 and %d (default %d)", k.Rise, MaxCheckCount, DefaultCheckRise)
		}
	}
	return nil
}

var checkNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// AdvertiseHostPort splits Advertise, applying DefaultPort when it names no
// port. Call it on a validated Config (it returns port 0 for a bad one).
func (c *Config) AdvertiseHostPort() (host string, port int) {
	host, port, err := splitHostPort(c.Advertise, true, DefaultPort)
	if err != nil {
		return c.Advertise, 0
	}
	return host, port
}

// HeartbeatBrokerAddr returns the external heartbeat broker's host:port and
// whether it uses TLS; external is false when the embedded broker is used.
func (c *Config) HeartbeatBrokerAddr() (addr string, useTLS, external bool, err error) {
	if c.HeartbeatBroker == "" {
		return "", false, false, nil
	}
	addr, useTLS, err = parseBrokerURL(c.HeartbeatBroker)
	if err != nil {
		return "", false, false, &Error{Path: c.Path, Key: "heartbeat_broker", Line: c.lines["heartbeat_broker"], Msg: "heartbeat_broker: " + err.Error()}
	}
	return addr, useTLS, true, nil
}

// ServerTLS is the embedded broker's TLS configuration, nil without
// tls.cert. Unreadable or mismatched files are an error naming the key.
func (c *Config) ServerTLS() (*tls.Config, error) {
	if !c.TLS.Enabled() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLS.Cert, c.TLS.Key)
	if err != nil {
		return nil, &Error{Path: c.Path, Key: "tls.cert", Line: c.lines["tls.cert"],
			Msg: fmt.Sprintf("tls.cert %s / tls.key %s: %v", c.TLS.Cert, c.TLS.Key, err)}
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// ClientTLS is the TLS configuration for dialing a broker over TLS: the
// tls.ca bundle as roots, or nil (the system's roots) without tls.ca.
func (c *Config) ClientTLS() (*tls.Config, error) {
	if c.TLS.CA == "" {
		return nil, nil
	}
	fail := func(format string, args ...any) error {
		return &Error{Path: c.Path, Key: "tls.ca", Line: c.lines["tls.ca"], Msg: fmt.Sprintf(format, args...)}
	}
	b, err := os.ReadFile(c.TLS.CA)
	if err != nil {
		return nil, fail("tls.ca: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fail("tls.ca %s: no PEM certificate found", c.TLS.CA)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// ArbiterTLS is the TLS configuration for the arbiter's etcd (nil: plain
// http endpoints and no cacert): arbiter.etcd.cacert verifies the members,
// cert and key are this server's client certificate.
func (c *Config) ArbiterTLS() (*tls.Config, error) {
	e := c.Arbiter.Etcd
	if e.CACert == "" && e.Cert == "" {
		for _, ep := range e.Endpoints {
			if strings.HasPrefix(ep, "https://") {
				return &tls.Config{MinVersion: tls.VersionTLS12}, nil // system roots
			}
		}
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if e.CACert != "" {
		b, err := os.ReadFile(e.CACert)
		if err != nil {
			return nil, &Error{Path: c.Path, Key: "arbiter.etcd.cacert", Line: c.lines["arbiter.etcd.cacert"], Msg: fmt.Sprintf("arbiter.etcd.cacert: %v", err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, &Error{Path: c.Path, Key: "arbiter.etcd.cacert", Line: c.lines["arbiter.etcd.cacert"], Msg: fmt.Sprintf("arbiter.etcd.cacert %s: no PEM certificate found", e.CACert)}
		}
		tc.RootCAs = pool
	}
	if e.Cert != "" {
		pair, err := tls.LoadX509KeyPair(e.Cert, e.Key)
		if err != nil {
			return nil, &Error{Path: c.Path, Key: "arbiter.etcd.cert", Line: c.lines["arbiter.etcd.cert"], Msg: fmt.Sprintf("arbiter.etcd.cert/key: %v", err)}
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// ArbiterPassword is the etcd password: arbiter.etcd.password, or the one
// line of arbiter.etcd.password_file ("" without either).
func (c *Config) ArbiterPassword() (string, error) {
	e := c.Arbiter.Etcd
	if e.PasswordFile == "" {
		return e.Password, nil
	}
	const key = "arbiter.etcd.password_file"
	b, err := os.ReadFile(e.PasswordFile)
	if err != nil {
		return "", &Error{Path: c.Path, Key: key, Line: c.lines[key], Msg: key + ": " + err.Error()}
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", &Error{Path: c.Path, Key: key, Line: c.lines[key], Msg: fmt.Sprintf("%s: %s is empty", key, e.PasswordFile)}
	}
	return s, nil
}

// EventLogFile is the event log's path: event_log, or DATA/events.jsonl
// when it is not set (tandem history reads it).
func (c *Config) EventLogFile() string {
	if c.EventLog != "" {
		return c.EventLog
	}
	return filepath.Join(c.DataDir, "events.jsonl")
}

// GroupKeys are the keys a server signs and verifies with: the group key
// from signing_key and the shared secret. A server with neither
// signing_key nor insecure: true is refused (secure by default). Only the
// server calls it: the other commands may run as a user who cannot read the
// 0600 key.
func (c *Config) GroupKeys() (protocol.Keys, error) {
	secret, err := c.Secret()
	if err != nil {
		return protocol.Keys{}, err
	}
	k := protocol.Keys{Secret: secret}
	if c.SigningKey == "" {
		if !c.Insecure {
			return k, &Error{Path: c.Path, Key: "signing_key", Line: c.lines["signing_key"],
				Msg: "signing_key is not set: create the group key with `tandem keygen --out DIR`, copy DIR/signing.key to every server and set signing_key: DIR/signing.key (or insecure: true for a lab)"}
		}
		return k, nil
	}
	priv, err := protocol.LoadPrivateKey(c.SigningKey)
	if err != nil {
		return k, &Error{Path: c.Path, Key: "signing_key", Line: c.lines["signing_key"], Msg: "signing_key: " + err.Error()}
	}
	k.Private = priv
	return k, nil
}

// Secret returns the shared HMAC secret: secret, or the content of
// secret_file with surrounding white space removed, or nil when neither is
// set (messages are then unsigned). An unreadable or empty secret_file is
// an error naming it.
func (c *Config) Secret() ([]byte, error) {
	if c.SharedSecret != "" {
		return []byte(c.SharedSecret), nil
	}
	if c.SecretFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.SecretFile)
	if err != nil {
		return nil, &Error{Path: c.Path, Key: "secret_file", Line: c.lines["secret_file"], Msg: "secret_file: " + err.Error()}
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil, &Error{Path: c.Path, Key: "secret_file", Line: c.lines["secret_file"], Msg: fmt.Sprintf("secret_file: %s is empty", c.SecretFile)}
	}
	if len(s) < MinSecretLength {
		return nil, &Error{Path: c.Path, Key: "secret_file", Line: c.lines["secret_file"],
			Msg: fmt.Sprintf("secret_file: %s holds %d bytes; use at least %d (for example: head -c 32 /dev/urandom | base64)", c.SecretFile, len(s), MinSecretLength)}
	}
	return []byte(s), nil
}

// splitHostPort parses HOST:PORT (or, with portOptional, HOST alone, which
// gets defPort). An empty host is allowed only when the port is given and
// !portOptional (a listen address such as ":61620"). Ports are 0..65535.
func splitHostPort(s string, portOptional bool, defPort int) (string, int, error) {
	if s == "" {
		return "", 0, errors.New("empty address: expected HOST:PORT")
	}
	if strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return "", 0, fmt.Errorf("%q contains spaces or control characters", s)
	}
	form := "HOST:PORT"
	if portOptional {
		form = fmt.Sprintf("HOST or HOST:PORT (port default %d)", defPort)
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		if !portOptional {
			return "", 0, &formError{s, form}
		}
		h := s
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			h = h[1 : len(h)-1]
		}
		if strings.Contains(h, ":") && net.ParseIP(h) == nil {
			return "", 0, &formError{s, form}
		}
		if strings.ContainsAny(h, "[]") {
			return "", 0, &formError{s, form}
		}
		host, portStr = h, strconv.Itoa(defPort)
	}
	if host == "" && portOptional {
		return "", 0, fmt.Errorf("%q has no host: expected %s", s, form)
	}
	if strings.ContainsAny(host, "[]/@?#") {
		return "", 0, &formError{s, form}
	}
	if !isDigits(portStr) {
		return "", 0, fmt.Errorf("%q: port %q is not a number 0-65535", s, portStr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port > 65535 {
		return "", 0, fmt.Errorf("%q: port %q is not a number 0-65535", s, portStr)
	}
	return host, port, nil
}

// formError is an address that does not have the expected form at all.
type formError struct{ s, form string }

func (e *formError) Error() string { return fmt.Sprintf("%q is not %s", e.s, e.form) }

// parseBrokerURL parses stomp://HOST:PORT or stomp+ssl://HOST:PORT.
func parseBrokerURL(raw string) (addr string, useTLS bool, err error) {
	const want = "expected stomp://HOST:PORT or stomp+ssl://HOST:PORT"
	s := RedactURL(raw) // what error messages show
	u, err := url.Parse(raw)
	if err != nil {
		return "", false, fmt.Errorf("%q is not a URL: %s", s, want)
	}
	switch u.Scheme {
	case "stomp":
	case "stomp+ssl":
		useTLS = true
	default:
		return "", false, fmt.Errorf("%q: scheme %q is not supported: %s", s, u.Scheme, want)
	}
	if u.User != nil {
		return "", false, fmt.Errorf("%q: put credentials in broker.login and broker.passcode, not in the URL", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", false, fmt.Errorf("%q: unexpected path or query: %s", s, want)
	}
	host, port, err := splitHostPort(u.Host, false, -1)
	if err != nil || host == "" || port == 0 {
		return "", false, fmt.Errorf("%q: %s", s, want)
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), useTLS, nil
}

// RedactURL is raw with any password in it replaced by xxxxx, for error
// messages and logs (a credential never reaches a log through a URL).
func RedactURL(raw string) string { return redact.URL(raw) }

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	f := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range f {
		f[i] = strings.TrimSpace(f[i])
	}
	return strings.Join(f, "; ")
}

// validateArbiter checks arbiter.etcd: endpoints are URLs, the TTL whole
// seconds, and the renew deadline leaves a primary time to stop acting
// before its lease can expire (renew_deadline + 2 × heartbeat.period <= ttl).
func (c *Config) validateArbiter(fail func(key, format string, args ...interface{}) error) error {
	a := c.Arbiter
	e := a.Etcd
	if !a.Enabled() {
		if e.Prefix != "" || e.TTL != 0 || e.RenewDeadline != 0 || e.CACert != "" || e.Cert != "" || e.User != "" || a.Failsafe {
			return fail("arbiter.etcd.endpoints", "arbiter.etcd.endpoints is empty but other arbiter keys are set: list the etcd members (http://HOST:2379) or drop the arbiter section")
		}
		return nil
	}
	for i, ep := range e.Endpoints {
		key := fmt.Sprintf("arbiter.etcd.endpoints[%d]", i)
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return fail(key, "%s %q: expected http://HOST:PORT or https://HOST:PORT (credentials go in arbiter.etcd.user and password)", key, RedactURL(ep))
		}
	}
	if e.Prefix == "" || !strings.HasPrefix(e.Prefix, "/") || strings.IndexFunc(e.Prefix, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return fail("arbiter.etcd.prefix", "arbiter.etcd.prefix %q must start with / and contain no spaces (default %s)", e.Prefix, DefaultArbiterPrefix)
	}
	if e.TTL < 2*time.Second || e.TTL%time.Second != 0 {
		return fail("arbiter.etcd.ttl", "arbiter.etcd.ttl (%s) must be a whole number of seconds, at least 2s (etcd leases count seconds; default %s)", e.TTL, DefaultArbiterTTL)
	}
	if e.RenewDeadline <= 0 {
		return fail("arbiter.etcd.renew_deadline", "arbiter.etcd.renew_deadline (%s) must be positive (default ttl/3)", e.RenewDeadline)
	}
	if e.RenewDeadline+2*c.Heartbeat.Period > e.TTL {
		return fail("arbiter.etcd.renew_deadline", "arbiter.etcd.renew_deadline (%s) + 2 × heartbeat.period (%s) must be at most arbiter.etcd.ttl (%s): a primary must stop acting before its lease can expire; lower renew_deadline or heartbeat.period, or raise ttl",
			e.RenewDeadline, c.Heartbeat.Period, e.TTL)
	}
	if (e.Cert == "") != (e.Key == "") {
		return fail("arbiter.etcd.cert", "arbiter.etcd.cert and arbiter.etcd.key go together (a client certificate and its key)")
	}
	if e.Password != "" && e.PasswordFile != "" {
		return fail("arbiter.etcd.password_file", "arbiter.etcd.password and password_file are both set; use one")
	}
	if (e.Password != "" || e.PasswordFile != "") && e.User == "" {
		return fail("arbiter.etcd.user", "arbiter.etcd.password is set but arbiter.etcd.user is empty")
	}
	return nil
}
