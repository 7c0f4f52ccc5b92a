package config

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestGroupDefaults(t *testing.T) {
	c, err := Load(writeConfig(t, minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.Priority != 100 || c.Health != HealthAll || c.Preempt ||
		c.PreemptDelay != 5*time.Minute || len(c.Checks) != 0 || c.Service != (Service{}) {
		t.Fatalf("group defaults not applied: priority %d health %q preempt %v delay %s checks %v service %+v",
			c.Priority, c.Health, c.Preempt, c.PreemptDelay, c.Checks, c.Service)
	}
	d := DefaultConfig()
	if d.Priority != 100 || d.Health != HealthAll || d.PreemptDelay != DefaultPreemptDelay {
		t.Fatalf("DefaultConfig %+v", d)
	}
	// A key with no value keeps its default.
	c, err = Load(writeConfig(t, minimal+"priority:\nhealth:\npreempt_delay:\nchecks:\n  - name: a\n    command: true\n    interval:\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Priority != 100 || c.Health != HealthAll || c.PreemptDelay != DefaultPreemptDelay || c.Checks[0].Interval != DefaultCheckInterval {
		t.Fatalf("empty values: %+v", c)
	}
}

func TestGroupKeys(t *testing.T) {
	c, err := Load(writeConfig(t, minimal+`
priority: 0
checks:
  - name: opscenterd
    command: "curl -fsS http://127.0.0.1:8888/"
    interval: 10s
    timeout: 3s
    fall: 5
    rise: 1
  - {name: web, command: "http:127.0.0.1:8888/health"}
  - {name: web2, command: "https://example.com/x", timeout: 5s}
  - {name: port.db_1, command: "tcp:[::1]:9042"}
health: Progressive
service:
  start: systemctl start opscenterd
  stop: systemctl stop opscenterd
preempt: true
preempt_delay: 90
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Priority != 0 {
		t.Fatalf("explicit priority 0 became %d", c.Priority)
	}
	want := []Check{
		{"opscenterd", "curl -fsS http://127.0.0.1:8888/", 10 * time.Second, 3 * time.Second, 5, 1},
		{"web", "http:127.0.0.1:8888/health", 5 * time.Second, 2 * time.Second, 3, 2},
		{"web2", "https://example.com/x", 5 * time.Second, 5 * time.Second, 3, 2},
		{"port.db_1", "tcp:[::1]:9042", 5 * time.Second, 2 * time.Second, 3, 2},
	}
	if !reflect.DeepEqual(c.Checks, want) {
		t.Fatalf("checks\n got %+v\nwant %+v", c.Checks, want)
	}
	if c.Health != HealthProgressive || !c.Preempt || c.PreemptDelay != 90*time.Second ||
		c.Service != (Service{Start: "systemctl start opscenterd", Stop: "systemctl stop opscenterd"}) {
		t.Fatalf("decoded %+v", c)
	}
	for i, w := range []struct{ kind, target string }{
		{CheckShell, "curl -fsS http://127.0.0.1:8888/"}, {CheckHTTP, "http://127.0.0.1:8888/health"},
		{CheckHTTP, "https://example.com/x"}, {CheckTCP, "[::1]:9042"},
	} {
		if k, tg := c.Checks[i].Probe(); k != w.kind || tg != w.target {
			t.Errorf("checks[%d].Probe() = %q %q, want %q %q", i, k, tg, w.kind, w.target)
		}
	}
	if k, tg := (Check{Command: "http:http://h:1/"}).Probe(); k != CheckHTTP || tg != "http://h:1/" {
		t.Errorf("http:http:// = %q %q", k, tg)
	}
	c, err = Load(writeConfig(t, minimal+"priority: 255\nhealth: one\n"))
	if err != nil || c.Priority != 255 || c.Health != HealthOne {
		t.Fatalf("%v %+v", err, c)
	}
}

func TestGroupInvalid(t *testing.T) {
	chk := func(extra string) string {
		return minimal + "checks:\n  - {name: a, command: \"true\"}\n  - {name: b, command: \"true\"" + extra + "}\n"
	}
	cases := []struct {
		name, content string
		key           string
		wants         []string
	}{
		{"priority negative", minimal + "priority: -1\n", "priority", []string{"priority -1 must be between 0 and 255", "(line 4)"}},
		{"priority big", minimal + "priority: 256\n", "priority", []string{"priority 256 must be between 0 and 255"}},
		{"priority string", minimal + "priority: high\n", "priority", []string{`priority: expected a whole number, got "high"`}},
		{"priority quoted", minimal + "priority: \"5\"\n", "priority", []string{"priority: expected a whole number"}},
		{"priority float", minimal + "priority: 1.5\n", "priority", []string{"priority: expected a whole number"}},
		{"health", minimal + "health: most\n", "health", []string{`health "most" must be all, one or progressive`, "(line 4)"}},
		{"preempt not bool", minimal + "preempt: maybe\n", "preempt", []string{"preempt: expected true or false"}},
		{"preempt_delay negative", minimal + "preempt_delay: -1s\n", "preempt_delay", []string{"preempt_delay", "negative"}},
		{"service unknown key", minimal + "service: {start: a, restart: b}\n", "service.restart", []string{"service.restart: unknown key"}},
		{"service list", minimal + "service: [a]\n", "service", []string{"service: expected a mapping"}},
		{"checks scalar", minimal + "checks: x\n", "checks", []string{"checks: expected a list of mappings"}},
		{"checks item scalar", minimal + "checks: [x]\n", "checks[0]", []string{"checks[0]: expected a mapping"}},
		{"check unknown key", chk(", intervl: 1s"), "checks[1].intervl", []string{"checks[1].intervl: unknown key (did you mean checks[1].interval?)", "(line 6)"}},
		{"check no name", minimal + "checks:\n  - command: \"true\"\n", "checks[0].name", []string{"checks[0].name: is required", "(line 5)"}},
		{"check bad name", minimal + "checks:\n  - {name: 'a b', command: x}\n", "checks[0].name", []string{`checks[0].name: "a b" must be 1 to 64`}},
		{"check long name", minimal + "checks:\n  - {name: " + string(make65()) + ", command: x}\n", "checks[0].name", []string{"checks[0].name:", "1 to 64"}},
		{"check reserved name", minimal + "checks:\n  - {name: service, command: x}\n", "checks[0].name", []string{`checks[0].name: "service" is reserved`}},
		{"check duplicate", minimal + "checks:\n  - {name: a, command: x}\n  - {name: a, command: y}\n", "checks[1].name", []string{`checks[1].name: "a" is also the name of checks[0]`, "(line 6)"}},
		{"check no command", minimal + "checks:\n  - {name: a}\n", "checks[0].command", []string{"checks[0].command: is required"}},
		{"check blank command", minimal + "checks:\n  - {name: a, command: '  '}\n", "checks[0].command", []string{"checks[0].command: is required"}},
		{"check http no host", minimal + "checks:\n  - {name: a, command: 'http:'}\n", "checks[0].command", []string{"checks[0].command:", "is not an http: check"}},
		{"check http bad", minimal + "checks:\n  - {name: a, command: 'http://%zz'}\n", "checks[0].command", []string{"checks[0].command:", "is not an http: check"}},
		{"check tcp no port", minimal + "checks:\n  - {name: a, command: 'tcp:localhost'}\n", "checks[0].command", []string{"checks[0].command: tcp: check:", "is not HOST:PORT"}},
		{"check tcp port 0", minimal + "checks:\n  - {name: a, command: 'tcp:h:0'}\n", "checks[0].command", []string{"checks[0].command:", "port 1-65535"}},
		{"check tcp no host", minimal + "checks:\n  - {name: a, command: 'tcp::80'}\n", "checks[0].command", []string{"checks[0].command:", "with a host"}},
		{"check interval zero", chk(", interval: 0"), "checks[1].interval", []string{"checks[1].interval: (0s) must be positive", "(line 6)"}},
		{"check interval bad", chk(", interval: soon"), "checks[1].interval", []string{"checks[1].interval: invalid duration"}},
		{"check timeout zero", chk(", timeout: 0s"), "checks[1].timeout", []string{"checks[1].timeout: (0s) must be positive and at most checks[1].interval (5s)"}},
		{"check timeout over interval", chk(", interval: 1s, timeout: 2s"), "checks[1].timeout", []string{"checks[1].timeout: (2s) must be positive and at most checks[1].interval (1s)"}},
		{"check default timeout over interval", chk(", interval: 1s"), "checks[1].timeout", []string{"checks[1].timeout: (2s)", "(line 6)"}},
		{"check fall zero", chk(", fall: 0"), "checks[1].fall", []string{"checks[1].fall: 0 must be between 1 and 100"}},
		{"check fall big", chk(", fall: 101"), "checks[1].fall", []string{"checks[1].fall: 101 must be between 1 and 100"}},
		{"check rise zero", chk(", rise: 0"), "checks[1].rise", []string{"checks[1].rise: 0 must be between 1 and 100"}},
		{"check rise big", chk(", rise: 1000"), "checks[1].rise", []string{"checks[1].rise: 1000 must be between 1 and 100"}},
		{"check rise text", chk(", rise: two"), "checks[1].rise", []string{`checks[1].rise: expected a whole number, got "two"`}},
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
			if ce.Key != tc.key {
				t.Fatalf("error key %q, want %q (%v)", ce.Key, tc.key, err)
			}
		})
	}
}

func make65() []byte {
	b := make([]byte, 65)
	for i := range b {
		b[i] = 'x'
	}
	return b
}

func TestValidateInCode(t *testing.T) {
	c := TestConfig(t.TempDir())
	c.Checks = []Check{{Name: "a", Command: "true", Interval: time.Second, Timeout: time.Second, Fall: 1, Rise: 1}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Checks[0].Timeout = 0
	err := c.Validate()
	checkErr(t, err, "", "checks[0].timeout: (0s) must be positive")
}

// TestFileRoundTrip: toFile and config() are inverses, and a Config
// marshalled through fileConfig parses back to itself.
func TestFileRoundTrip(t *testing.T) {
	c, err := Load(writeConfig(t, minimal+`
priority: 0
checks:
  - {name: a, command: "true", interval: 1s, timeout: 500ms, fall: 4, rise: 7}
  - {name: b, command: "tcp:h:1"}
health: one
service: {start: go, stop: halt}
preempt: true
preempt_delay: 0s
hooks: {before_takeover: "echo x", timeout: 3s}
agents: ["/a/*.yaml"]
`))
	if err != nil {
		t.Fatal(err)
	}
	back := toFile(c).config()
	back.Path, back.lines = c.Path, c.lines
	if !reflect.DeepEqual(back, c) {
		t.Fatalf("toFile/config\n got %+v\nwant %+v", back, c)
	}
	out, err := yaml.Marshal(toFile(c))
	if err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, string(out))
	again, err := Load(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	again.Path, again.lines = c.Path, c.lines
	if !reflect.DeepEqual(again, c) {
		t.Fatalf("marshal/parse\n got %+v\nwant %+v\n%s", again, c, out)
	}
}
