package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// fileConfig is tandem.yaml as it is decoded: Config with YAML-friendly
// durations.
type fileConfig struct {
	Node              string     `yaml:"node"`
	DataDir           string     `yaml:"data_dir"`
	Listen            string     `yaml:"listen"`
	Advertise         string     `yaml:"advertise"`
	Admin             string     `yaml:"admin"`
	Heartbeat         fileHB     `yaml:"heartbeat"`
	HeartbeatBroker   string     `yaml:"heartbeat_broker"`
	Broker            BrokerAuth `yaml:"broker"`
	TLS               TLS        `yaml:"tls"`
	Secret            string     `yaml:"secret"`
	SecretFile        string     `yaml:"secret_file"`
	SigningKey        string     `yaml:"signing_key"`
	Insecure          bool       `yaml:"insecure"`
	MaxAgentFileSize  int64      `yaml:"max_agent_file_size"`
	EventLog          string     `yaml:"event_log"`
	EventLogMessages  bool       `yaml:"event_log_messages"`
	DestinationPrefix string     `yaml:"destination_prefix"`
	Agents            []string   `yaml:"agents"`
	Hooks             fileHooks  `yaml:"hooks"`
	Log               Log        `yaml:"log"`
	// Priority is a pointer so that an explicit 0 (never take over
	// automatically) differs from a key left out (DefaultPriority).
	Priority     *int        `yaml:"priority"`
	Checks       []fileCheck `yaml:"checks"`
	Health       string      `yaml:"health"`
	Service      Service     `yaml:"service"`
	Preempt      bool        `yaml:"preempt"`
	PreemptDelay Duration    `yaml:"preempt_delay"`
	Arbiter      fileArbiter `yaml:"arbiter"`
}

type fileArbiter struct {
	Etcd     fileEtcd `yaml:"etcd"`
	Failsafe bool     `yaml:"failsafe"`
}

type fileEtcd struct {
	Endpoints     []string `yaml:"endpoints"`
	Prefix        string   `yaml:"prefix"`
	TTL           Duration `yaml:"ttl"`
	RenewDeadline Duration `yaml:"renew_deadline"`
	CACert        string   `yaml:"cacert"`
	Cert          string   `yaml:"cert"`
	Key           string   `yaml:"key"`
	User          string   `yaml:"user"`
	Password      string   `yaml:"password"`
	PasswordFile  string   `yaml:"password_file"`
}

// fileCheck is one item of checks:. Pointers tell a key left out (its
// default applies) from an explicit value (validated, so interval: 0 is an
// error rather than the default).
type fileCheck struct {
	Name     string    `yaml:"name"`
	Command  string    `yaml:"command"`
	Interval *Duration `yaml:"interval"`
	Timeout  *Duration `yaml:"timeout"`
	Fall     *int      `yaml:"fall"`
	Rise     *int      `yaml:"rise"`
}

type fileHB struct {
	Period      Duration `yaml:"period"`
	ReplyPeriod Duration `yaml:"reply_period"`
	FailWindow  Duration `yaml:"fail_window"`
}

type fileHooks struct {
	BeforeTakeover string   `yaml:"before_takeover"`
	AfterTakeover  string   `yaml:"after_takeover"`
	OnFenced       string   `yaml:"on_fenced"`
	Timeout        Duration `yaml:"timeout"`
}

func toFile(c *Config) fileConfig {
	prio := c.Priority
	var checks []fileCheck
	for _, k := range c.Checks {
		iv, to, fall, rise := Duration(k.Interval), Duration(k.Timeout), k.Fall, k.Rise
		checks = append(checks, fileCheck{Name: k.Name, Command: k.Command, Interval: &iv, Timeout: &to, Fall: &fall, Rise: &rise})
	}
	return fileConfig{
		Node: c.Node, DataDir: c.DataDir, Listen: c.Listen, Advertise: c.Advertise, Admin: c.Admin,
		Heartbeat:       fileHB{Duration(c.Heartbeat.Period), Duration(c.Heartbeat.ReplyPeriod), Duration(c.Heartbeat.FailWindow)},
		HeartbeatBroker: c.HeartbeatBroker, Broker: c.Broker, TLS: c.TLS, Secret: c.SharedSecret, SecretFile: c.SecretFile, EventLog: c.EventLog,
		SigningKey: c.SigningKey, Insecure: c.Insecure, MaxAgentFileSize: c.MaxAgentFileSize, EventLogMessages: c.EventLogMessages,
		DestinationPrefix: c.DestinationPrefix, Agents: append([]string(nil), c.Agents...),
		Hooks:    fileHooks{c.Hooks.BeforeTakeover, c.Hooks.AfterTakeover, c.Hooks.OnFenced, Duration(c.Hooks.Timeout)},
		Log:      c.Log,
		Priority: &prio, Checks: checks, Health: c.Health, Service: c.Service,
		Preempt: c.Preempt, PreemptDelay: Duration(c.PreemptDelay),
		Arbiter: fileArbiter{Failsafe: c.Arbiter.Failsafe, Etcd: fileEtcd{
			Endpoints: append([]string(nil), c.Arbiter.Etcd.Endpoints...), Prefix: c.Arbiter.Etcd.Prefix,
			TTL: Duration(c.Arbiter.Etcd.TTL), RenewDeadline: Duration(c.Arbiter.Etcd.RenewDeadline),
			CACert: c.Arbiter.Etcd.CACert, Cert: c.Arbiter.Etcd.Cert, Key: c.Arbiter.Etcd.Key,
			User: c.Arbiter.Etcd.User, Password: c.Arbiter.Etcd.Password, PasswordFile: c.Arbiter.Etcd.PasswordFile,
		}},
	}
}

func (f fileConfig) config() *Config {
	prio := DefaultPriority
	if f.Priority != nil {
		prio = *f.Priority
	}
	var checks []Check
	for _, k := range f.Checks {
		c := Check{Name: k.Name, Command: k.Command, Interval: DefaultCheckInterval, Timeout: DefaultCheckTimeout,
			Fall: DefaultCheckFall, Rise: DefaultCheckRise}
		if k.Interval != nil {
			c.Interval = k.Interval.Std()
		}
		if k.Timeout != nil {
			c.Timeout = k.Timeout.Std()
		}
		if k.Fall != nil {
			c.Fall = *k.Fall
		}
		if k.Rise != nil {
			c.Rise = *k.Rise
		}
		checks = append(checks, c)
	}
	return &Config{
		Node: f.Node, DataDir: f.DataDir, Listen: f.Listen, Advertise: f.Advertise, Admin: f.Admin,
		Heartbeat:       Heartbeat{f.Heartbeat.Period.Std(), f.Heartbeat.ReplyPeriod.Std(), f.Heartbeat.FailWindow.Std()},
		HeartbeatBroker: f.HeartbeatBroker, Broker: f.Broker, TLS: f.TLS, SharedSecret: f.Secret, SecretFile: f.SecretFile, EventLog: f.EventLog,
		SigningKey: f.SigningKey, Insecure: f.Insecure, MaxAgentFileSize: f.MaxAgentFileSize, EventLogMessages: f.EventLogMessages,
		DestinationPrefix: f.DestinationPrefix, Agents: f.Agents,
		Hooks:    Hooks{f.Hooks.BeforeTakeover, f.Hooks.AfterTakeover, f.Hooks.OnFenced, f.Hooks.Timeout.Std()},
		Log:      f.Log,
		Priority: prio, Checks: checks, Health: f.Health, Service: f.Service,
		Preempt: f.Preempt, PreemptDelay: f.PreemptDelay.Std(),
		Arbiter: Arbiter{Failsafe: f.Arbiter.Failsafe, Etcd: Etcd{
			Endpoints: append([]string(nil), f.Arbiter.Etcd.Endpoints...), Prefix: f.Arbiter.Etcd.Prefix,
			TTL: f.Arbiter.Etcd.TTL.Std(), RenewDeadline: f.Arbiter.Etcd.RenewDeadline.Std(),
			CACert: f.Arbiter.Etcd.CACert, Cert: f.Arbiter.Etcd.Cert, Key: f.Arbiter.Etcd.Key,
			User: f.Arbiter.Etcd.User, Password: f.Arbiter.Etcd.Password, PasswordFile: f.Arbiter.Etcd.PasswordFile,
		}},
	}
}

// Load reads, strictly decodes and validates the config file at path.
// Keys left out, or given with no value, take their defaults. A relative
// data_dir, secret_file or agents glob is resolved against the directory of
// path. Every error is one line starting with path and wraps ErrInvalid.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &Error{Path: path, Msg: "cannot read the config file: " + err.Error()}
	}
	return Parse(path, b)
}

// Parse is Load for content already read; path names it in errors and
// anchors relative paths.
func Parse(path string, data []byte) (*Config, error) {
	fail := func(key string, line int, format string, args ...interface{}) error {
		return &Error{Path: path, Key: key, Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	err := dec.Decode(&doc)
	if err != nil && err != io.EOF {
		return nil, yamlError(path, err)
	}
	if err == nil {
		var extra yaml.Node
		if err := dec.Decode(&extra); err != io.EOF {
			line := 0
			if err == nil {
				line = extra.Line
			}
			return nil, fail("", line, "expected one YAML document, found more (a second --- ?)")
		}
	}
	w := walker{path: path, lines: map[string]int{}}
	raw := toFile(DefaultConfig())
	var root *yaml.Node
	if len(doc.Content) > 0 {
		root = doc.Content[0]
		if root.Kind == yaml.AliasNode {
			root = root.Alias
		}
	}
	if root != nil && !(root.Kind == yaml.ScalarNode && root.Tag == "!!null") {
		if err := w.walk(root, reflect.TypeOf(fileConfig{}), ""); err != nil {
			return nil, err
		}
		if err := root.Decode(&raw); err != nil {
			return nil, yamlError(path, err)
		}
		// Belt and braces: the walker is the strict check with good
		// messages, yaml.v3's own KnownFields decode must agree with it.
		var probe fileConfig
		strict := yaml.NewDecoder(bytes.NewReader(data))
		strict.KnownFields(true)
		if err := strict.Decode(&probe); err != nil && err != io.EOF {
			return nil, yamlError(path, err)
		}
	}
	c := raw.config()
	c.Path = path
	c.lines = w.lines
	def := DefaultConfig()
	for _, d := range []struct {
		v   *string
		def string
	}{
		{&c.Node, def.Node}, {&c.Listen, def.Listen}, {&c.Admin, def.Admin},
		{&c.DestinationPrefix, def.DestinationPrefix}, {&c.Log.Format, def.Log.Format}, {&c.Log.Level, def.Log.Level},
		{&c.Health, def.Health},
	} {
		if *d.v == "" {
			*d.v = d.def
		}
	}
	c.Log.Format = strings.ToLower(c.Log.Format)
	c.Log.Level = strings.ToLower(c.Log.Level)
	c.Health = strings.ToLower(c.Health)
	base := "."
	if abs, err := filepath.Abs(path); err == nil {
		base = filepath.Dir(abs)
	}
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	c.DataDir = resolve(c.DataDir)
	c.SecretFile = resolve(c.SecretFile)
	c.SigningKey = resolve(c.SigningKey)
	c.EventLog = resolve(c.EventLog)
	c.TLS.Cert, c.TLS.Key, c.TLS.CA = resolve(c.TLS.Cert), resolve(c.TLS.Key), resolve(c.TLS.CA)
	if e := &c.Arbiter.Etcd; c.Arbiter.Enabled() {
		if e.Prefix == "" {
			e.Prefix = DefaultArbiterPrefix
		}
		if e.TTL == 0 {
			e.TTL = DefaultArbiterTTL
		}
		if e.RenewDeadline == 0 {
			e.RenewDeadline = e.TTL / 3
		}
		e.CACert, e.Cert, e.Key, e.PasswordFile = resolve(e.CACert), resolve(e.Cert), resolve(e.Key), resolve(e.PasswordFile)
	}
	for i := range c.Agents {
		c.Agents[i] = resolve(c.Agents[i])
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if _, err := c.Secret(); err != nil {
		return nil, err
	}
	// The TLS files are read by the server only (ServerTLS, ClientTLS):
	// the CLI's other commands load this file too, often as a user who may
	// not read a 0600 private key.
	return c, nil
}

var lineRE = regexp.MustCompile(`^line (\d+): `)

// yamlError turns a yaml.v3 error (possibly several lines) into one *Error.
func yamlError(path string, err error) error {
	var te *yaml.TypeError
	var msgs []string
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	line := 0
	for i, m := range msgs {
		m = strings.TrimSpace(strings.TrimPrefix(m, "yaml: "))
		if sub := lineRE.FindStringSubmatch(m); sub != nil {
			if line == 0 {
				line, _ = strconv.Atoi(sub[1])
			}
			if i == 0 {
				m = m[len(sub[0]):]
			}
		}
		m = strings.Replace(m, "in type config.fileConfig", "", 1)
		msgs[i] = m
	}
	return &Error{Path: path, Line: line, Msg: "invalid YAML: " + strings.Join(msgs, "; ")}
}

// walker checks a YAML tree against fileConfig before decoding it, so that
// an unknown key or a wrong type is reported with its dotted key and line.
// It also removes keys given with no value (they keep their defaults).
type walker struct {
	path  string
	lines map[string]int
}

var durationType = reflect.TypeOf(Duration(0))

func (w *walker) fail(key string, n *yaml.Node, format string, args ...interface{}) error {
	return &Error{Path: w.path, Key: key, Line: n.Line, Msg: key + ": " + fmt.Sprintf(format, args...)}
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, key string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch {
	case t.Kind() == reflect.Pointer:
		return w.walk(n, t.Elem(), key)
	case t == durationType:
		if n.Kind != yaml.ScalarNode {
			return w.fail(key, n, "expected a duration like 10s or 500ms, or whole seconds like 10, got a %s", kindName(n))
		}
		if _, err := ParseDuration(n.Value); err != nil {
			return w.fail(key, n, "%v", err)
		}
	case t.Kind() == reflect.String:
		if n.Kind != yaml.ScalarNode {
			return w.fail(key, n, "expected a string, got a %s", kindName(n))
		}
	case t.Kind() == reflect.Bool:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!bool" && n.Tag != "") {
			return w.fail(key, n, "expected true or false, got %q", n.Value)
		}
		if _, err := strconv.ParseBool(n.Value); err != nil {
			return w.fail(key, n, "expected true or false, got %q", n.Value)
		}
	case t.Kind() == reflect.Int64:
		if n.Kind != yaml.ScalarNode {
			return w.fail(key, n, "expected a whole number of bytes, got a %s", kindName(n))
		}
		if _, err := strconv.ParseInt(n.Value, 10, 64); err != nil {
			return w.fail(key, n, "expected a whole number of bytes like 1048576, got %q", n.Value)
		}
	case t.Kind() == reflect.Int:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "") {
			return w.fail(key, n, "expected a whole number, got %s", scalarOrKind(n))
		}
		if _, err := strconv.Atoi(n.Value); err != nil {
			return w.fail(key, n, "expected a whole number like 100, got %q", n.Value)
		}
	case t.Kind() == reflect.Slice && (t.Elem().Kind() == reflect.String || t.Elem().Kind() == reflect.Struct):
		if n.Kind != yaml.SequenceNode {
			if t.Elem().Kind() == reflect.Struct {
				return w.fail(key, n, "expected a list of mappings (- name: ...), got a %s", kindName(n))
			}
			return w.fail(key, n, "expected a list like [\"/path/*/address.yaml\"], got a %s", kindName(n))
		}
		for i, item := range n.Content {
			k := fmt.Sprintf("%s[%d]", key, i)
			w.lines[k] = item.Line
			if err := w.walk(item, t.Elem(), k); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if key == "" {
				return &Error{Path: w.path, Line: n.Line, Msg: fmt.Sprintf("expected a mapping of keys (node:, data_dir:, ...), got a %s", kindName(n))}
			}
			return w.fail(key, n, "expected a mapping, got a %s", kindName(n))
		}
		fields := yamlFields(t)
		kept := n.Content[:0:0]
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn, vn := n.Content[i], n.Content[i+1]
			full := join(key, kn.Value)
			if kn.Kind != yaml.ScalarNode {
				return &Error{Path: w.path, Line: kn.Line, Msg: fmt.Sprintf("%s: a key must be a plain name, got a %s", orTop(key), kindName(kn))}
			}
			ft, ok := fields[kn.Value]
			if !ok {
				msg := full + ": unknown key"
				if s := suggest(full); s != "" {
					msg += " (did you mean " + s + "?)"
				}
				return &Error{Path: w.path, Key: full, Line: kn.Line, Msg: msg}
			}
			if seen[kn.Value] {
				return &Error{Path: w.path, Key: full, Line: kn.Line, Msg: full + ": given twice"}
			}
			seen[kn.Value] = true
			w.lines[full] = kn.Line
			v := vn
			if v.Kind == yaml.AliasNode {
				v = v.Alias
			}
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				continue // no value: keep the default
			}
			if err := w.walk(vn, ft, full); err != nil {
				return err
			}
			kept = append(kept, kn, vn)
		}
		n.Content = kept
	default:
		return w.fail(key, n, "internal: unsupported type %s", t)
	}
	return nil
}

func scalarOrKind(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return strconv.Quote(n.Value)
	}
	return "a " + kindName(n)
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

func orTop(key string) string {
	if key == "" {
		return "top level"
	}
	return key
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		m[name] = f.Type
	}
	return m
}

// knownKeys lists every dotted key of tandem.yaml.
func knownKeys() []string {
	var out []string
	var rec func(t reflect.Type, prefix string)
	rec = func(t reflect.Type, prefix string) {
		for name, ft := range yamlFields(t) {
			full := join(prefix, name)
			out = append(out, full)
			if ft.Kind() == reflect.Struct && ft != durationType {
				rec(ft, full)
			}
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				rec(ft.Elem(), full+"[]")
			}
		}
	}
	rec(reflect.TypeOf(fileConfig{}), "")
	sort.Strings(out)
	return out
}

var indexRE = regexp.MustCompile(`\[\d+\]`)

// suggest returns the known key closest to an unknown one, or "". A list
// item's index (checks[2].intervl) is kept in the suggestion
// (checks[2].interval).
func suggest(unknown string) string {
	if idx := indexRE.FindString(unknown); idx != "" {
		s := suggest(indexRE.ReplaceAllString(unknown, "[]"))
		return strings.Replace(s, "[]", idx, 1)
	}
	leaf := unknown[strings.LastIndex(unknown, ".")+1:]
	best, bestD := "", 1<<30
	inList := strings.Contains(unknown, "[]")
	for _, k := range knownKeys() {
		if strings.Contains(k, "[]") != inList {
			continue // a list item's key for a list item's typo only
		}
		d := editDistance(strings.ToLower(unknown), k)
		kleaf := k[strings.LastIndex(k, ".")+1:]
		if d > 2 && d > len(k)/4 {
			if strings.EqualFold(kleaf, leaf) || editDistance(strings.ToLower(leaf), kleaf) <= 1 && len(kleaf) > 3 {
				d = 100 // same key at another level: a weak but useful hint
			} else {
				continue
			}
		}
		if d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
