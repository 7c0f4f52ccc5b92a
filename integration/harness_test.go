package integration

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/internal/testports"
	"github.com/tandem-ha/tandem/protocol"
)

// tandemBin is built once for the whole package by TestMain, or is
// $TANDEM_BIN when set (to run the suite against another build, for
// example an older commit's, to see a test fail there).
var tandemBin string

func TestMain(m *testing.M) {
	if bin := os.Getenv("TANDEM_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "TANDEM_BIN:", err)
			os.Exit(1)
		}
		tandemBin = abs
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tandem-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tandemBin = filepath.Join(dir, "tandem")
	// Tests run the race-enabled binary; benchmarks measure the real one.
	flag.Parse()
	args := []string{"build", "-race", "-o", tandemBin, "github.com/tandem-ha/tandem/cmd/tandem"}
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		args = []string{"build", "-o", tandemBin, "github.com/tandem-ha/tandem/cmd/tandem"}
	}
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building tandem:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a loopback TCP port reserved for this test process and
// outside the kernel's ephemeral range (see internal/testports).
func freePort(t testing.TB) int {
	t.Helper()
	return testports.Port(t)
}

// proc is a tandem process the test started.
type proc struct {
	t     testing.TB
	name  string
	cmd   *exec.Cmd
	log   string
	done  chan struct{}
	mu    sync.Mutex
	exit  int
	ended bool
}

// start runs `tandem args...`, logging to a file in dir; cleanup kills it by PID.
func start(t testing.TB, dir, name string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if len(args) > 0 && args[0] == "agent" && !slices.Contains(args, "--server-key") {
		// Agents verify the servers' group key (groupKey), like a real
		// deployment; a test that wants otherwise passes its own flag.
		if pub := filepath.Join(dir, "keys", "signing.pub"); fileExists(pub) {
			args = append(args, "--server-key", pub)
		}
	}
	cmd := exec.Command(tandemBin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	p := &proc{t: t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.ended = true
		p.exit = 0
		if ee, ok := err.(*exec.ExitError); ok {
			p.exit = ee.ExitCode()
		} else if err != nil {
			p.exit = -1
		}
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- %s log (last 6000 bytes) ----\n%s", name, tail(b, 6000))
		}
	})
	return p
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := syscall.Kill(p.pid(), sig); err != nil {
		p.t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

// kill -9s the process (after SIGCONT, in case it is stopped) and waits.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(p.pid(), syscall.SIGCONT)
	syscall.Kill(p.pid(), syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Errorf("%s (pid %d) did not die", p.name, p.pid())
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() int {
	p.t.Helper()
	syscall.Kill(p.pid(), syscall.SIGTERM)
	return p.wait(10 * time.Second)
}

// wait waits for the process to end and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("%s still running after %s", p.name, d)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// eventually polls cond every 10ms until it is true or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return pollUntil(t, d, 10*time.Millisecond, what, cond)
}

// pollUntil is eventually with a chosen poll interval.
func pollUntil(t testing.TB, d, every time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(every)
	}
	return time.Since(start)
}

// status is the subset of the status JSON the tests read.
type status struct {
	Node             string `json:"node"`
	Role             string `json:"role"`
	FailoverID       string `json:"failover_id"`
	Epoch            uint64 `json:"epoch"`
	Maintenance      bool   `json:"maintenance"`
	BackupConfigured bool   `json:"backup_configured"`
	Primary          *struct {
		Node               string `json:"node"`
		FailoverID         string `json:"failover_id"`
		Epoch              uint64 `json:"epoch"`
		LastHeartbeatAgeMS int64  `json:"last_heartbeat_age_ms"`
	} `json:"primary"`
	Agents struct {
		Managed, Rewritten, Failed, Connected, Remote, Bound int
	} `json:"agents"`
	Takeover         *struct{ Step string } `json:"takeover"`
	Runbook          string                 `json:"runbook"`
	HeartbeatChannel struct {
		URL       string `json:"url"`
		Connected bool   `json:"connected"`
	} `json:"heartbeat_channel"`
}

var client = &http.Client{Timeout: 2 * time.Second}

func getStatus(admin string) (status, error) {
	var s status
	resp, err := client.Get("http://" + admin + "/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}

// post does an authorized POST to s's admin API, as the CLI does: the
// server's admin token, no body.
func post(t testing.TB, s *server, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+s.admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken(t, s))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// server is one configured tandem server in a test cluster.
type server struct {
	name, dir, cfgPath string
	brokerPort         int
	admin              string
	p                  *proc
}

func (s *server) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.brokerPort) }

// cluster is a test deployment: servers and agent files in one temp dir.
type cluster struct {
	t       testing.TB
	dir     string
	agents  string // glob of the managed address.yaml files
	timing  string
	extra   string // appended to every server's tandem.yaml
	servers map[string]*server
}

const fastTiming = "{period: 100ms, reply_period: 1s, fail_window: 500ms}"

func newCluster(t testing.TB) *cluster {
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, agents: filepath.Join(dir, "agents", "*", "conf", "address.yaml"),
		timing: fastTiming, servers: map[string]*server{}}
	groupKey(t, dir)
	// Registered first, so it runs last: after every process is stopped.
	t.Cleanup(func() { checkServerInvariants(t, c.serverEvents()) })
	return c
}

// groupKey writes the cluster's group key pair into DIR/keys: servers sign
// with signing.key, agents started with start() verify with signing.pub.
func groupKey(t testing.TB, dir string) {
	t.Helper()
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := protocol.EncodePrivateKey(priv)
	pb, _ := protocol.EncodePublicKey(pub)
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "signing.key"), kb, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "signing.pub"), pb, 0o644); err != nil {
		t.Fatal(err)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// groupSigner signs as a server of the cluster in dir (its group key).
func groupSigner(t testing.TB, dir string, dest protocol.Destinations) *protocol.Signer {
	t.Helper()
	priv, err := protocol.LoadPrivateKey(filepath.Join(dir, "keys", "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	return protocol.NewGroupSigner(dest, protocol.Keys{Secret: []byte(testSecret), Private: priv})
}

// echoReplies follows the backups' replies on bus and returns what a live
// primary's heartbeat echoes: the latest nonce of each backup.
func echoReplies(t testing.TB, bus broker.Bus, dest protocol.Destinations) func() []string {
	t.Helper()
	sub, err := bus.Subscribe(dest.Reply)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	latest := map[string]string{}
	go func() {
		for m := range sub.C() {
			if env, err := protocol.Decode(m.Headers); err == nil && env.Nonce != "" {
				mu.Lock()
				latest[env.FailoverID] = env.Nonce
				mu.Unlock()
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, n := range latest {
			out = append(out, n)
		}
		return out
	}
}

// serverEvents is the event log every server of the cluster appends to.
func (c *cluster) serverEvents() string { return filepath.Join(c.dir, "server-events.jsonl") }

// serverEvent is one line of a server's event_log.
type serverEvent struct {
	TMS        int64  `json:"t_ms"`
	Node       string `json:"node"`
	Kind       string `json:"kind"`
	FailoverID string `json:"failover_id"`
	Epoch      uint64 `json:"epoch"`
	Seq        uint64 `json:"seq"`
	Role       string `json:"role"`
	Detail     string `json:"detail"`
}

// checkServerInvariants reads the servers' event log and reports:
// I4 — two servers heartbeating as primary for the same epoch;
// I5 — a heartbeat or command sent by a server after it was fenced (until it
// is restarted: a "role" event of "starting" is not logged, so a restart is
// seen as its next role event).
//
// A missing or unreadable log is a failure, not a pass: every server of a
// cluster appends to it (event_log in serverConfig), so a test that started
// none has nothing to check and a test whose servers never logged is broken.
func checkServerInvariants(t testing.TB, path string) {
	t.Helper()
	if t.Skipped() {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("I4/I5 unchecked: the servers' event log %s: %v", path, err)
		return
	}
	for _, v := range serverViolations(string(b)) {
		t.Error(v)
	}
}

func serverViolations(text string) []string {
	var out []string
	errorf := func(f string, a ...any) { out = append(out, fmt.Sprintf(f, a...)) }
	owner := map[uint64]string{} // epoch -> failover id heartbeating at it
	fencedAt := map[string]int64{}
	for i, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line == "" {
			continue
		}
		var e serverEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			errorf("server event log line %d is not JSON: %q", i+1, line)
			continue
		}
		switch e.Kind {
		case "heartbeat", "command":
			if e.Kind == "heartbeat" {
				if o, ok := owner[e.Epoch]; ok && o != e.FailoverID {
					errorf("I4 violated: %s and %s (node %s) both heartbeat as primary at epoch %d", o, e.FailoverID, e.Node, e.Epoch)
				}
				owner[e.Epoch] = e.FailoverID
			}
			if at, ok := fencedAt[e.Node]; ok {
				errorf("I5 violated: node %s sent a %s at epoch %d, %d ms after it was fenced", e.Node, e.Kind, e.Epoch, e.TMS-at)
			}
		case "fenced":
			fencedAt[e.Node] = e.TMS
		case "role":
			if e.Role != "fenced" {
				delete(fencedAt, e.Node) // restarted and rejoined
			}
		}
	}
	return out
}

// serverConfig is the tandem.yaml of s: loopback, the cluster's timing,
// agents and event log, agents told to use advertise, plus extra lines.
func (c *cluster) serverConfig(s *server, advertise, extra string) string {
	return fmt.Sprintf(`node: %s
data_dir: %s
listen: %s
advertise: %s
admin: %s
heartbeat: %s
agents: [%q]
event_log: %q
event_log_messages: true
signing_key: %q
log: {format: text, level: debug}
%s`, s.name, filepath.Join(s.dir, "data"), s.addr(), advertise, s.admin, c.timing, c.agents, c.serverEvents(), filepath.Join(c.dir, "keys", "signing.key"), extra)
}

// addServer writes a config for a server; primaryOf names the server it backs up.
func (c *cluster) addServer(name string, primaryOf *server) *server {
	c.t.Helper()
	s := &server{name: name, dir: filepath.Join(c.dir, name), brokerPort: freePort(c.t)}
	s.admin = fmt.Sprintf("127.0.0.1:%d", freePort(c.t))
	s.cfgPath = filepath.Join(c.dir, name+".yaml")
	if err := os.MkdirAll(filepath.Join(s.dir, "data"), 0o700); err != nil {
		c.t.Fatal(err)
	}
	cfg := c.serverConfig(s, s.addr(), c.extra)
	if err := os.WriteFile(s.cfgPath, []byte(cfg), 0o644); err != nil {
		c.t.Fatal(err)
	}
	if primaryOf != nil {
		if err := os.WriteFile(filepath.Join(s.dir, "data", "primary_location"), []byte(primaryOf.addr()+"\n"), 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
	c.servers[name] = s
	return s
}

func (c *cluster) start(s *server) *proc {
	s.p = start(c.t, c.dir, s.name, "server", "--config", s.cfgPath)
	return s.p
}

// waitRole waits until s reports role (and returns its status).
func (c *cluster) waitRole(s *server, role string, d time.Duration) status {
	c.t.Helper()
	var st status
	eventually(c.t, d, s.name+" role "+role, func() bool {
		var err error
		st, err = getStatus(s.admin)
		return err == nil && st.Role == role
	})
	return st
}

// agentFile is the address.yaml template the tests manage: comments and
// keys tandem must keep byte for byte.
const agentFile = `# DataStax agent address file
stomp_interface: %s   # the OpsCenter server
stomp_port: %d
use_ssl: 0
# keep this
local_interface: 10.1.2.%d
jmx_port: 7199
`

// writeAgents creates n agent files pointing at srv.
func (c *cluster) writeAgents(n int, srv *server) []string {
	c.t.Helper()
	var paths []string
	for i := 0; i < n; i++ {
		d := filepath.Join(c.dir, "agents", fmt.Sprintf("a%05d", i), "conf")
		if err := os.MkdirAll(d, 0o755); err != nil {
			c.t.Fatal(err)
		}
		p := filepath.Join(d, "address.yaml")
		if err := os.WriteFile(p, []byte(fmt.Sprintf(agentFile, "127.0.0.1", srv.brokerPort, i%250)), 0o644); err != nil {
			c.t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// fileFacts reads stomp_port, failover_epoch and failover_id of an agent
// file the simple way, independently of agentcfg, and returns its text.
func fileFacts(t testing.TB, path string) (port string, epoch string, id string, text string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text = string(b)
	port, epoch, id = textFacts(text)
	return
}

// textFacts extracts stomp_port, failover_epoch and failover_id from an
// agent file's text (top-level keys, comments stripped).
func textFacts(text string) (port, epoch, id string) {
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(strings.SplitN(v, "#", 2)[0])
		switch strings.TrimSpace(k) {
		case "stomp_port":
			port = v
		case "failover_epoch":
			epoch = v
		case "failover_id":
			id = strings.Trim(v, `"'`)
		}
	}
	return
}

// checkAgentFile asserts I3 for one file: every original line is still there.
func checkAgentFileIntact(t testing.TB, path string, i int) {
	t.Helper()
	_, _, _, text := fileFacts(t, path)
	for _, want := range []string{"# DataStax agent address file", "use_ssl: 0", "# keep this",
		fmt.Sprintf("local_interface: 10.1.2.%d", i%250), "jmx_port: 7199", "# the OpsCenter server"} {
		if !strings.Contains(text, want) {
			t.Fatalf("%s lost %q (I3):\n%s", path, want, text)
		}
	}
}
