package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testtls"
)

const minimal = "node: opsc-a\ndata_dir: /var/lib/tandem\nadvertise: 10.0.0.1\n"

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tandem.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadFullExample(t *testing.T) {
	path := writeConfig(t, `
node: opsc-a
data_dir: /var/lib/tandem
listen: 0.0.0.0:61620          # embedded broker for agents and the backup
advertise: 10.0.0.1:61620
admin: 127.0.0.1:61630
heartbeat: {period: 10s, reply_period: 300s, fail_window: 60s}
heartbeat_broker: "stomp+ssl://mq.example.com:61614"
broker: {login: "tandem", passcode: "pw", vhost: "/"}
secret: "s3cret-s3cret-s3cret"
secret_file: ""
destination_prefix: /topic/tandem.
agents: ["/var/lib/agents/*/conf/address.yaml", "/srv/a[0-9]/address.yaml"]
hooks: {before_takeover: "echo before", after_takeover: "", on_fenced: "logger fenced", timeout: 45}
log: {format: json, level: DEBUG}
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Heartbeat{Period: 10 * time.Second, ReplyPeriod: 300 * time.Second, FailWindow: time.Minute}
	if c.Heartbeat != want {
		t.Fatalf("heartbeat %+v", c.Heartbeat)
	}
	if c.Node != "opsc-a" || c.DataDir != "/var/lib/tandem" || c.Listen != "0.0.0.0:61620" || c.Admin != "127.0.0.1:61630" ||
		c.Hooks.Timeout != 45*time.Second || c.Hooks.BeforeTakeover != "echo before" || c.Hooks.OnFenced != "logger fenced" ||
		c.Log.Format != "json" || c.Log.Level != "debug" || len(c.Agents) != 2 || c.Broker.Login != "tandem" || c.Path != path {
		t.Fatalf("decoded %+v", c)
	}
	addr, tls, ext, err := c.HeartbeatBrokerAddr()
	if err != nil || addr != "mq.example.com:61614" || !tls || !ext {
		t.Fatalf("heartbeat broker %q %v %v %v", addr, tls, ext, err)
	}
	if h, p := c.AdvertiseHostPort(); h != "10.0.0.1" || p != 61620 {
		t.Fatalf("advertise %s %d", h, p)
	}
	s, err := c.Secret()
	if err != nil || string(s) != "s3cret-s3cret-s3cret" {
		t.Fatalf("secret %q %v", s, err)
	}
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(writeConfig(t, minimal))
	if err != nil {
		t.Fatal(err)
	}
	d := DefaultConfig()
	if c.Heartbeat != d.Heartbeat || c.Listen != DefaultListen || c.Admin != DefaultAdmin || c.Hooks.Timeout != 30*time.Second ||
		c.DestinationPrefix != "/topic/tandem." || c.Log.Format != "text" || c.Log.Level != "info" || c.HeartbeatBroker != "" || len(c.Agents) != 0 {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if _, _, ext, err := c.HeartbeatBrokerAddr(); ext || err != nil {
		t.Fatal("empty heartbeat_broker is the embedded one")
	}
	if s, err := c.Secret(); s != nil || err != nil {
		t.Fatalf("no secret: %q %v", s, err)
	}
	if h, p := c.AdvertiseHostPort(); h != "10.0.0.1" || p != 61620 {
		t.Fatalf("advertise default port: %s %d", h, p)
	}
}

func TestNodeDefaultsToHostname(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		t.Fatalf("no host name here: %v", err)
	}
	for _, content := range []string{"data_dir: /d\nadvertise: h\n", "node: \"\"\ndata_dir: /d\nadvertise: h\n", "node:\ndata_dir: /d\nadvertise: h\n"} {
		c, err := Load(writeConfig(t, content))
		if err != nil || c.Node != host {
			t.Fatalf("%q: node %q err %v, want %q", content, c.Node, err, host)
		}
	}
}

func TestEmptyValuesKeepDefaults(t *testing.T) {
	c, err := Load(writeConfig(t, minimal+"heartbeat:\nhooks:\n  timeout:\nlisten: ''\nlog: {level: ''}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Heartbeat != DefaultConfig().Heartbeat || c.Hooks.Timeout != DefaultHookTimeout || c.Listen != DefaultListen || c.Log.Level != "info" {
		t.Fatalf("%+v", c)
	}
}

func TestDurations(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"10", 10 * time.Second, ""},
		{"0", 0, ""},
		{"'10'", 10 * time.Second, ""},
		{"500ms", 500 * time.Millisecond, ""},
		{"1m30s", 90 * time.Second, ""},
		{"300s", 5 * time.Minute, ""},
		{"-5s", 0, "negative"},
		{"-5", 0, "invalid duration"},
		{"1.5", 0, "invalid duration"},
		{"ten", 0, "invalid duration"},
		{"10 s", 0, "invalid duration"},
		{"99999999999999999999", 0, "too large"},
		{"[1]", 0, "got a list"},
		{"{a: 1}", 0, "got a mapping"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			path := writeConfig(t, minimal+"heartbeat:\n  reply_period: "+tc.in+"\n")
			c, err := Load(path)
			if tc.err == "" {
				if tc.want == 0 {
					// 0 parses but is not a valid reply_period.
					if err == nil || !strings.Contains(err.Error(), "heartbeat.reply_period (0s) must be positive") {
						t.Fatalf("want positive error, got %v", err)
					}
					return
				}
				if err != nil || c.Heartbeat.ReplyPeriod != tc.want {
					t.Fatalf("got %v, %v; want %v", c, err, tc.want)
				}
				return
			}
			checkErr(t, err, path, "heartbeat.reply_period", tc.err)
			if !strings.Contains(err.Error(), "(line 5)") {
				t.Fatalf("error should give the line: %v", err)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	if d, err := ParseDuration(" 60 "); err != nil || d != time.Minute {
		t.Fatal(d, err)
	}
	if _, err := ParseDuration(""); err == nil {
		t.Fatal("empty must fail")
	}
}

func checkErr(t *testing.T, err error, path string, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error containing %q", wants)
	}
	msg := err.Error()
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("error does not wrap ErrInvalid: %v", err)
	}
	if strings.ContainsAny(msg, "\r\n") {
		t.Fatalf("error is not one line: %q", msg)
	}
	if path != "" && !strings.HasPrefix(msg, path+": ") {
		t.Fatalf("error does not start with the path %s: %q", path, msg)
	}
	for _, w := range wants {
		if !strings.Contains(msg, w) {
			t.Fatalf("error %q does not contain %q", msg, w)
		}
	}
}

func TestInvalidConfigs(t *testing.T) {
	cases := []struct {
		name    string
		content string
		wants   []string
	}{
		{"typo top", minimal + "advertize: x\n", []string{"advertize: unknown key (did you mean advertise?)", "(line 4)"}},
		{"typo nested", minimal + "heartbeat:\n  period: 1s\n  fail_windw: 5s\n", []string{"heartbeat.fail_windw: unknown key (did you mean heartbeat.fail_window?)", "(line 6)"}},
		{"key at wrong level", minimal + "period: 10s\n", []string{"period: unknown key (did you mean heartbeat.period?)"}},
		{"unknown nothing close", minimal + "zzzzzzzzzz: 1\n", []string{"zzzzzzzzzz: unknown key", "(line 4)"}},
		{"duplicate key", minimal + "listen: a:1\nlisten: b:2\n", []string{"listen: given twice", "(line 5)"}},
		{"fail window relation", minimal + "heartbeat: {period: 10s, fail_window: 1s}\n", []string{"heartbeat.fail_window (1s) must be at least 2 × heartbeat.period (10s)", "(line 4)"}},
		{"fail window just under", minimal + "heartbeat: {period: 100ms, fail_window: 199ms}\n", []string{"heartbeat.fail_window (199ms) must be at least 2 × heartbeat.period (100ms)"}},
		{"period zero", minimal + "heartbeat: {period: 0}\n", []string{"heartbeat.period (0s) must be positive"}},
		{"no data_dir", "node: a\nadvertise: h\n", []string{"data_dir is required"}},
		{"no advertise", "node: a\ndata_dir: /d\n", []string{"advertise is required"}},
		{"advertise unspecified", "data_dir: /d\nadvertise: 0.0.0.0:61620\n", []string{"advertise: 0.0.0.0 is not an address"}},
		{"advertise bad port", "data_dir: /d\nadvertise: h:99999\n", []string{"advertise:", "not a number 0-65535"}},
		{"advertise junk port", "data_dir: /d\nadvertise: h:x\n", []string{"advertise:", `port "x"`}},
		{"listen no port", minimal + "listen: 0.0.0.0\n", []string{"listen:", "is not HOST:PORT"}},
		{"listen spaces", minimal + "listen: 'a b:1'\n", []string{"listen:", "spaces"}},
		{"admin bad", minimal + "admin: localhost\n", []string{"admin:", "is not HOST:PORT"}},
		{"node spaces", "data_dir: /d\nadvertise: h\nnode: 'a b'\n", []string{"node \"a b\" must not contain spaces"}},
		{"broker scheme", minimal + "heartbeat_broker: tcp://h:61613\n", []string{"heartbeat_broker:", `scheme "tcp"`}},
		{"broker no port", minimal + "heartbeat_broker: stomp://h\n", []string{"heartbeat_broker:", "expected stomp://HOST:PORT"}},
		{"broker creds in url", minimal + "heartbeat_broker: stomp://u:p@h:1\n", []string{"heartbeat_broker:", "broker.login"}},
		{"broker path", minimal + "heartbeat_broker: stomp://h:1/x\n", []string{"heartbeat_broker:", "path"}},
		{"passcode without login", minimal + "broker: {passcode: x}\n", []string{"broker.passcode is set but broker.login is empty"}},
		{"secret both", minimal + "secret: a\nsecret_file: /x\n", []string{"secret and secret_file are both set"}},
		{"secret file missing", minimal + "secret_file: nope.txt\n", []string{"secret_file:", "no such file"}},
		{"bad glob", minimal + "agents: [\"/a/*/x.yaml\", \"/b/[x.yaml\"]\n", []string{"agents[1]:", "not a valid glob", "(line 4)"}},
		{"empty glob", minimal + "agents: ['']\n", []string{"agents[0] is empty"}},
		{"agents scalar", minimal + "agents: /a/*.yaml\n", []string{"agents: expected a list", "(line 4)"}},
		{"agents mapping item", minimal + "agents:\n  - {a: 1}\n", []string{"agents[0]: expected a string, got a mapping"}},
		{"hooks timeout zero", minimal + "hooks: {timeout: 0s}\n", []string{"hooks.timeout (0s) must be positive"}},
		{"hooks as list", minimal + "hooks: [a]\n", []string{"hooks: expected a mapping, got a list"}},
		{"log format", minimal + "log: {format: xml}\n", []string{`log.format "xml" must be text or json`}},
		{"log level", minimal + "log: {level: loud}\n", []string{`log.level "loud" must be one of`}},
		{"destination prefix", minimal + "destination_prefix: topic.\n", []string{"destination_prefix \"topic.\" must start with /"}},
		{"string as mapping", minimal + "admin: {a: 1}\n", []string{"admin: expected a string, got a mapping"}},
		{"top is list", "- a\n- b\n", []string{"expected a mapping of keys"}},
		{"top is scalar", "hello\n", []string{"expected a mapping of keys"}},
		{"yaml syntax", "node: a\n  data_dir: [\n", []string{"invalid YAML", "(line"}},
		{"tab indent", "node: a\n\tdata_dir: x\n", []string{"invalid YAML"}},
		{"two documents", minimal + "---\nnode: b\n", []string{"expected one YAML document"}},
		{"empty file", "", []string{"data_dir is required"}},
		{"comments only", "# nothing\n", []string{"data_dir is required"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.content)
			c, err := Load(path)
			if err == nil {
				t.Fatalf("want an error, got %+v", c)
			}
			checkErr(t, err, path, tc.wants...)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("not a *config.Error: %T", err)
			}
		})
	}
}

func TestMissingConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.yaml")
	_, err := Load(path)
	checkErr(t, err, path, "cannot read the config file", "no such file")
}

func TestErrorNamesKeyField(t *testing.T) {
	_, err := Load(writeConfig(t, minimal+"heartbeat: {period: 10s, fail_window: 1s}\n"))
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != "heartbeat.fail_window" || ce.Line != 4 {
		t.Fatalf("%#v", err)
	}
}

func TestRelativePathsResolveAgainstConfigDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), []byte("  abc-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "tandem.yaml")
	os.WriteFile(path, []byte("data_dir: data\nadvertise: h\nsecret_file: secret.txt\nagents: [\"agents/*/address.yaml\", \"/abs/*.yaml\", \"../up/*.yaml\"]\n"), 0o644)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != filepath.Join(dir, "data") || c.SecretFile != filepath.Join(dir, "secret.txt") ||
		c.Agents[0] != filepath.Join(dir, "agents/*/address.yaml") || c.Agents[1] != "/abs/*.yaml" || c.Agents[2] != filepath.Join(filepath.Dir(dir), "up/*.yaml") {
		t.Fatalf("%+v", c)
	}
	s, err := c.Secret()
	if err != nil || string(s) != "abc-secret-0123456789" {
		t.Fatalf("secret %q %v", s, err)
	}

	// A relative config path is anchored too.
	wd, _ := os.Getwd()
	t.Cleanup(func() { os.Chdir(wd) })
	if err := os.Chdir(filepath.Dir(dir)); err != nil {
		t.Fatal(err)
	}
	c, err = Load(filepath.Join(filepath.Base(dir), "tandem.yaml"))
	if err != nil || c.DataDir != filepath.Join(dir, "data") {
		t.Fatalf("relative config path: %v %v", c, err)
	}
}

func TestEmptySecretFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "s"), []byte("\n"), 0o600)
	path := filepath.Join(dir, "tandem.yaml")
	os.WriteFile(path, []byte(minimal+"secret_file: s\n"), 0o644)
	_, err := Load(path)
	checkErr(t, err, path, "secret_file:", "is empty", "(line 4)")
}

func TestAnchorsAndAliases(t *testing.T) {
	c, err := Load(writeConfig(t, minimal+"hooks: {timeout: &t 12s}\nheartbeat: {period: *t, fail_window: 60}\n"))
	if err != nil || c.Heartbeat.Period != 12*time.Second || c.Hooks.Timeout != 12*time.Second {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestTestConfigValidates(t *testing.T) {
	c := TestConfig(t.TempDir())
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Heartbeat.Period != 100*time.Millisecond || c.Heartbeat.FailWindow != 500*time.Millisecond || c.Heartbeat.ReplyPeriod != time.Second {
		t.Fatalf("%+v", c.Heartbeat)
	}
	if h, p := c.AdvertiseHostPort(); h != "127.0.0.1" || p != 0 {
		t.Fatalf("%s %d", h, p)
	}
	c.Heartbeat.FailWindow = 150 * time.Millisecond
	err := c.Validate()
	checkErr(t, err, "", "heartbeat.fail_window (150ms) must be at least 2 × heartbeat.period (100ms)")
	if strings.Contains(err.Error(), "line") {
		t.Fatalf("a Config built in code has no lines: %v", err)
	}
}

func TestDefaultConfigNeedsDataDirAndAdvertise(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "data_dir") {
		t.Fatalf("%v", err)
	}
	c.DataDir = "/d"
	c.Advertise = "[::1]:7000"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if h, p := c.AdvertiseHostPort(); h != "::1" || p != 7000 {
		t.Fatalf("%s %d", h, p)
	}
	c.Advertise = "[::1]"
	if h, p := c.AdvertiseHostPort(); h != "::1" || p != DefaultPort {
		t.Fatalf("%s %d", h, p)
	}
}

func TestSuggest(t *testing.T) {
	for in, want := range map[string]string{
		"heartbeat.perod":   "heartbeat.period",
		"hooks.on_fence":    "hooks.on_fenced",
		"data-dir":          "data_dir",
		"Node":              "node",
		"log.levle":         "log.level",
		"timeout":           "hooks.timeout",
		"completely_random": "",
	} {
		if got := suggest(in); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key, ca := testtls.New(t).Files(t, dir)
	// Relative paths resolve against the config file's directory.
	cfgPath := filepath.Join(dir, "tandem.yaml")
	body := minimal + "tls: {cert: server.pem, key: server-key.pem, ca: ca.pem}\n"
	if err := os.WriteFile(cfgPath, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.Cert != cert || c.TLS.Key != key || c.TLS.CA != ca || !c.TLS.Enabled() {
		t.Fatalf("tls = %+v", c.TLS)
	}
	srv, err := c.ServerTLS()
	if err != nil || srv == nil || len(srv.Certificates) != 1 {
		t.Fatalf("ServerTLS: %v %v", srv, err)
	}
	cli, err := c.ClientTLS()
	if err != nil || cli == nil || cli.RootCAs == nil {
		t.Fatalf("ClientTLS: %v %v", cli, err)
	}

	// Without tls: no server TLS, system roots.
	c, err = Load(writeConfig(t, minimal))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := c.ServerTLS(); s != nil {
		t.Fatal("ServerTLS without tls.cert")
	}
	if cl, _ := c.ClientTLS(); cl != nil {
		t.Fatal("ClientTLS without tls.ca")
	}

	for _, tc := range []struct{ body, want string }{
		{"tls: {cert: " + cert + "}\n", "tls.key"},
		{"tls: {key: " + key + "}\n", "tls.cert"},
		{"tls: {cert: a, key: b, crt: c}\n", "crt"},
	} {
		_, err := Load(writeConfig(t, minimal+tc.body))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want one line mentioning %q", tc.body, err, tc.want)
		}
	}
	// The files themselves are read only by ServerTLS and ClientTLS (the
	// server), so that other commands can load a config whose key they may
	// not read.
	for _, tc := range []struct {
		body, want string
		client     bool
	}{
		{"tls: {cert: " + filepath.Join(dir, "missing.pem") + ", key: " + key + "}\n", "tls.cert", false},
		{"tls: {cert: " + ca + ", key: " + key + "}\n", "tls.cert", false}, // key does not match
		{"tls: {ca: " + key + "}\n", "no PEM certificate", true},
		{"tls: {ca: " + filepath.Join(dir, "nope.pem") + "}\n", "tls.ca", true},
	} {
		c, err := Load(writeConfig(t, minimal+tc.body))
		if err != nil {
			t.Errorf("%q: Load: %v", tc.body, err)
			continue
		}
		if tc.client {
			_, err = c.ClientTLS()
		} else {
			_, err = c.ServerTLS()
		}
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want one line mentioning %q", tc.body, err, tc.want)
		}
	}
}

func TestArbiterConfig(t *testing.T) {
	c, err := Load(writeConfig(t, minimal+"heartbeat: {period: 1s, fail_window: 10s}\narbiter:\n  etcd:\n    endpoints: [\"http://10.0.0.5:2379\", \"https://10.0.0.6:2379\"]\n    ttl: 10s\n    cacert: ca.pem\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Arbiter.Etcd
	if !c.Arbiter.Enabled() || e.Prefix != DefaultArbiterPrefix || e.TTL != 10*time.Second || e.RenewDeadline != 10*time.Second/3 || !filepath.IsAbs(e.CACert) || c.Arbiter.Failsafe {
		t.Fatalf("arbiter %+v", c.Arbiter)
	}
	if c, err := Load(writeConfig(t, minimal)); err != nil || c.Arbiter.Enabled() {
		t.Fatalf("no arbiter section: %+v %v", c.Arbiter, err)
	}
	bad := []struct{ content, want string }{
		// The contract's example ttl with the default 10 s period: named both ways.
		{"arbiter: {etcd: {endpoints: [\"http://h:2379\"], ttl: 10s}}\n", "arbiter.etcd.renew_deadline (3.333333333s) + 2 × heartbeat.period (10s) must be at most arbiter.etcd.ttl (10s)"},
		{"heartbeat: {period: 1s, fail_window: 10s}\narbiter: {etcd: {endpoints: [\"http://h:2379\"], ttl: 10s, renew_deadline: 9s}}\n", "arbiter.etcd.renew_deadline (9s) + 2 × heartbeat.period (1s) must be at most arbiter.etcd.ttl (10s)"},
		{"arbiter: {etcd: {endpoints: [\"h:2379\"]}}\n", `arbiter.etcd.endpoints[0] "h:2379": expected http://HOST:PORT`},
		{"arbiter: {etcd: {endpoints: [\"http://u:secret@h:2379\"]}}\n", "credentials go in arbiter.etcd.user"},
		{"arbiter: {etcd: {endpoints: [\"http://h:2379\"], ttl: 1500ms}}\n", "arbiter.etcd.ttl (1.5s) must be a whole number of seconds"},
		{"arbiter: {etcd: {endpoints: [\"http://h:2379\"], prefix: tandem}}\n", `arbiter.etcd.prefix "tandem" must start with /`},
		{"arbiter: {etcd: {ttl: 30s}}\n", "arbiter.etcd.endpoints is empty but other arbiter keys are set"},
		{"arbiter: {etcd: {endpoints: [\"http://h:2379\"], cert: c.pem}}\n", "arbiter.etcd.cert and arbiter.etcd.key go together"},
		{"arbiter: {etcd: {endpoints: [\"http://h:2379\"], password: x}}\n", "arbiter.etcd.password is set but arbiter.etcd.user is empty"},
		{"arbiter: {etcd: {endpoints: [\"http://h:2379\"], ttl_: 3s}}\n", "arbiter.etcd.ttl_: unknown key (did you mean arbiter.etcd.ttl?)"},
	}
	for _, b := range bad {
		path := writeConfig(t, minimal+b.content)
		_, err := Load(path)
		checkErr(t, err, path, b.want)
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("error shows the endpoint's password: %v", err)
		}
	}
}

func TestArbiterPassword(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "etcd.pass")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := minimal + "heartbeat: {period: 1s, fail_window: 10s}\narbiter: {etcd: {endpoints: [\"http://h:2379\"], ttl: 10s, user: tandem, "
	c, err := Load(writeConfig(t, base+"password_file: "+pw+"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.ArbiterPassword(); err != nil || got != "s3cret" {
		t.Fatalf("password_file: %q %v", got, err)
	}
	c, _ = Load(writeConfig(t, base+"password: inline}}\n"))
	if got, err := c.ArbiterPassword(); err != nil || got != "inline" {
		t.Fatalf("password: %q %v", got, err)
	}
	// A missing or empty file is one error naming the key and the file.
	for _, f := range []string{filepath.Join(dir, "absent"), filepath.Join(dir, "empty")} {
		if strings.HasSuffix(f, "empty") {
			if err := os.WriteFile(f, []byte("\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		path := writeConfig(t, base+"password_file: "+f+"}}\n")
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.ArbiterPassword()
		checkErr(t, err, path, "arbiter.etcd.password_file", f)
	}
}
