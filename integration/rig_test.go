package integration

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// A rig is a primary/backup pair with agents in which every link runs
// through a proxy the test controls:
//
//	backup ──to[primary]──► primary's broker   (primary_location; embedded heartbeat channel)
//	agents ──ag[server]───► server's broker     (each server advertises its own agents proxy)
//	server ──hb[server]───► external broker     (heartbeat_broker, when one is used)
//
// so a test can cut backup↔primary only, primary↔agents only, or everything.

const testSecret = "fault-suite-shared-secret-0123456789"

type rigOpts struct {
	timing string // heartbeat: {...}; default fastTiming (embedded) or extTiming
	hooks  string // hooks: {...}
	agents int    // agent files and agent processes (default 3)
	signed bool   // configure the shared secret (servers and agents)
	// remote: the agents' files are in no server's agents glob (agents on
	// their own hosts): they name only where to connect, and the agents
	// rewrite them on the servers' signed rebinds.
	remote bool
	// serverExtra, when set, adds lines to one server's tandem.yaml
	// (groups: priority, checks, service).
	serverExtra func(name string) string
}

// extTiming is a little wider than fastTiming: an external broker adds a
// hop (and ActiveMQ/RabbitMQ share 2 cores with race-built tandems).
const extTiming = "{period: 200ms, reply_period: 1s, fail_window: 1s}"

type rig struct {
	t      testing.TB
	c      *cluster
	kind   string     // embedded | activemq | rabbitmq
	ext    *extBroker // nil for embedded
	opts   rigOpts
	secret string // path of the secret file (for agents)

	to, ag, hb map[string]*proxy // per server name
	a, b       *server
	files      []string
	evPath     string
	agents     []*proc
	samp       *epochSampler
}

// settledRig is the common start of a fault scenario: a rig with the pair
// up, the agents running, and every agent on a at epoch 1.
func settledRig(t testing.TB, kind string, ext *extBroker, o rigOpts) *rig {
	t.Helper()
	r := newRig(t, kind, ext, o)
	r.pairUp()
	r.startAgents()
	r.settled(r.a, 1, 20*time.Second)
	if o.remote {
		// The standby links are up: every agent names the backup (its
		// agents' address) as its failover server.
		want := fmt.Sprintf("127.0.0.1:%d", r.ag["b"].port())
		eventually(t, 20*time.Second, "every agent knows the backup as its failover server", func() bool {
			for _, f := range r.files {
				b, err := os.ReadFile(f)
				if err != nil || !strings.Contains(string(b), want) {
					return false
				}
			}
			return true
		})
	}
	return r
}

func newRig(t testing.TB, kind string, ext *extBroker, o rigOpts) *rig {
	t.Helper()
	if o.agents == 0 {
		o.agents = 3
	}
	if o.timing == "" {
		o.timing = fastTiming
		if ext != nil {
			o.timing = extTiming
		}
	}
	c := newCluster(t)
	c.timing = o.timing
	r := &rig{t: t, c: c, kind: kind, ext: ext, opts: o,
		to: map[string]*proxy{}, ag: map[string]*proxy{}, hb: map[string]*proxy{},
		evPath: filepath.Join(c.dir, "events.jsonl")}
	if o.signed {
		r.secret = filepath.Join(c.dir, "secret")
		mustOK(t, os.WriteFile(r.secret, []byte(testSecret+"\n"), 0o600))
	}
	return r
}

// addServer writes a server config whose advertise is its agents proxy and
// whose heartbeat_broker (if any) is reached through its own proxy;
// primaryOf (may be nil) is reached through its to-proxy.
func (r *rig) addServer(name string, primaryOf *server) *server {
	r.t.Helper()
	c := r.c
	s := &server{name: name, dir: filepath.Join(c.dir, name), brokerPort: freePort(r.t)}
	s.admin = fmt.Sprintf("127.0.0.1:%d", freePort(r.t))
	s.cfgPath = filepath.Join(c.dir, name+".yaml")
	mustOK(r.t, os.MkdirAll(filepath.Join(s.dir, "data"), 0o700))
	r.to[name] = newProxy(r.t, s.addr())
	r.ag[name] = newProxy(r.t, s.addr())
	var extra strings.Builder
	if r.ext != nil {
		r.hb[name] = newProxy(r.t, r.ext.addr)
		fmt.Fprintf(&extra, "heartbeat_broker: stomp://%s\n", r.hb[name].addr())
		if r.ext.vhost != "" {
			fmt.Fprintf(&extra, "broker: {vhost: %q}\n", r.ext.vhost)
		}
	}
	if r.secret != "" {
		fmt.Fprintf(&extra, "secret: %q\n", testSecret)
	}
	if r.opts.hooks != "" {
		fmt.Fprintf(&extra, "hooks: %s\n", r.opts.hooks)
	}
	if r.opts.serverExtra != nil {
		extra.WriteString(r.opts.serverExtra(name))
	}
	cfg := c.serverConfig(s, r.ag[name].addr(), extra.String())
	mustOK(r.t, os.WriteFile(s.cfgPath, []byte(cfg), 0o644))
	if primaryOf != nil {
		mustOK(r.t, os.WriteFile(filepath.Join(s.dir, "data", "primary_location"), []byte(r.to[primaryOf.name].addr()+"\n"), 0o644))
	}
	c.servers[name] = s
	return s
}

// pairUp starts a (primary) and b (its backup), the agent files pointing at
// a's agents proxy, and waits until they know each other.
func (r *rig) pairUp() {
	r.t.Helper()
	r.a = r.addServer("a", nil)
	r.b = r.addServer("b", r.a)
	if r.opts.remote {
		_, r.files = r.c.remoteAgents(r.opts.agents, &server{brokerPort: r.ag["a"].port()})
	} else {
		r.files = r.c.writeAgents(r.opts.agents, &server{brokerPort: r.ag["a"].port()})
	}
	r.samp = startEpochSampler(r.t, r.files)
	r.c.start(r.a)
	r.c.waitRole(r.a, "primary", 20*time.Second)
	r.c.start(r.b)
	r.c.waitRole(r.b, "backup", 20*time.Second)
	r.waitPaired(r.a, r.b, 20*time.Second)
}

// waitPaired waits until backup hears primary and primary knows its backup.
func (r *rig) waitPaired(prim, back *server, d time.Duration) {
	r.t.Helper()
	eventually(r.t, d, back.name+" hears "+prim.name+" and "+prim.name+" knows its backup", func() bool {
		sb, err1 := getStatus(back.admin)
		sa, err2 := getStatus(prim.admin)
		return err1 == nil && err2 == nil && sb.Role == "backup" && sb.Primary != nil && sb.Primary.Node == prim.name &&
			sb.Primary.Epoch == sa.Epoch && sa.Role == "primary" && sa.BackupConfigured
	})
}

// startAgents runs one reference agent per file, all logging to evPath.
func (r *rig) startAgents() {
	r.t.Helper()
	for i, f := range r.files {
		args := []string{"agent", "--config", f, "--id", fmt.Sprintf("agent%d", i), "--period", "100ms", "--events", r.evPath}
		if r.secret != "" {
			args = append(args, "--secret-file", r.secret)
		}
		r.agents = append(r.agents, start(r.t, r.c.dir, fmt.Sprintf("agent%d", i), args...))
	}
}

func (r *rig) other(s *server) *server {
	if s == r.a {
		return r.b
	}
	return r.a
}

// partition cuts backup↔primary only: the backup's way to the primary's
// broker (embedded heartbeat channel) or to the heartbeat broker.
//
// With an external heartbeat broker a backup that loses its own link to
// the broker counts no silence (a broker outage is not a dead primary), so
// the partition is on the primary's side: it loses the heartbeat broker,
// and the backup loses the second path (the primary's own broker).
func (r *rig) partition(backup *server) {
	prim := r.other(backup)
	if r.ext != nil {
		r.hb[prim.name].Cut()
	}
	r.to[prim.name].Cut()
}

func (r *rig) heal() {
	for _, m := range []map[string]*proxy{r.to, r.ag, r.hb} {
		for _, p := range m {
			p.Heal()
		}
	}
}

// cutAgents cuts primary↔agents only.
func (r *rig) cutAgents(s *server) { r.ag[s.name].Cut() }

// cutAll isolates s from everything.
func (r *rig) cutAll(s *server) {
	for _, m := range []map[string]*proxy{r.to, r.ag, r.hb} {
		if p := m[s.name]; p != nil {
			p.Cut()
		}
	}
	if r.ext == nil {
		r.to[r.other(s).name].Cut()
	}
}

// filesAt reports whether every agent file points at s's agents proxy at epoch.
func (r *rig) filesAt(s *server, epoch uint64) bool {
	want := strconv.FormatUint(epoch, 10)
	port := strconv.Itoa(r.ag[s.name].port())
	for _, f := range r.files {
		b, err := os.ReadFile(f)
		if err != nil {
			return false
		}
		p, e, _ := textFacts(string(b))
		if e != want || p != port {
			return false
		}
	}
	return true
}

// settled waits for the system to settle on prim at epoch: prim is primary,
// every file names it at epoch, every running agent obeyed it at epoch.
func (r *rig) settled(prim *server, epoch uint64, d time.Duration) {
	r.t.Helper()
	st := r.c.waitRole(prim, "primary", d)
	if st.Epoch != epoch {
		r.t.Fatalf("%s is primary at epoch %d, want %d", prim.name, st.Epoch, epoch)
	}
	eventually(r.t, d, fmt.Sprintf("all agent files on %s at epoch %d", prim.name, epoch), func() bool { return r.filesAt(prim, epoch) })
	if n := r.runningAgents(); n > 0 {
		eventually(r.t, d, fmt.Sprintf("%d agents obey %s at epoch %d", n, prim.name, epoch), func() bool {
			return acceptedFrom(readEvents(r.t, r.evPath), st.FailoverID, epoch) >= n
		})
	}
}

// movedTo is settled for a new primary that may be cut from the heartbeat
// channel: with an external heartbeat broker the product sends agent
// commands only after a heartbeat was published (primary.go, beat), so
// while the new primary cannot reach that broker the agents connect to it
// (files rewritten, registry counts them) but get no commands. With the
// embedded broker it is settled.
func (r *rig) movedTo(prim *server, epoch uint64, d time.Duration) {
	r.t.Helper()
	if r.ext == nil {
		r.settled(prim, epoch, d)
		return
	}
	st := r.c.waitRole(prim, "primary", d)
	if st.Epoch != epoch {
		r.t.Fatalf("%s is primary at epoch %d, want %d", prim.name, st.Epoch, epoch)
	}
	eventually(r.t, d, fmt.Sprintf("all agent files on %s at epoch %d", prim.name, epoch), func() bool { return r.filesAt(prim, epoch) })
	n := r.runningAgents()
	eventually(r.t, d, fmt.Sprintf("%d agents connected to %s", n, prim.name), func() bool {
		s, err := getStatus(prim.admin)
		return err == nil && s.Agents.Connected >= n
	})
}

func (r *rig) runningAgents() int {
	n := 0
	for _, p := range r.agents {
		select {
		case <-p.done:
		default:
			n++
		}
	}
	return n
}

// check asserts I1 (agents' events), per-agent monotone accepted epochs
// ("no agent obeys both"), I2 (sampled file epochs) and I3 (files intact).
// I4/I5 are checked by the cluster's cleanup from the server event log.
func (r *rig) check() {
	r.t.Helper()
	if r.samp != nil {
		// A last sample of every file now: an agent that rewrote its own
		// file (agents on their own hosts) may have accepted commands at
		// the new token before the sampler's next round saw the change.
		for _, f := range r.files {
			r.samp.sample(f)
		}
	}
	evs := readEvents(r.t, r.evPath)
	checkI1(r.t, evs, r.samp, agentFiles(r.files))
	checkMonotoneAccepts(r.t, evs)
	if r.samp != nil {
		r.samp.check(r.t)
	}
	for i, f := range r.files {
		checkAgentFileIntact(r.t, f, i)
	}
}

// checkMonotoneAccepts: once an agent obeyed epoch e it never obeys a lower one.
func checkMonotoneAccepts(t testing.TB, evs []event) int {
	t.Helper()
	bad := 0
	last := map[string]event{}
	for _, e := range evs {
		if !e.Accepted {
			continue
		}
		if l, ok := last[e.Agent]; ok && e.From.Epoch < l.From.Epoch {
			bad++
			t.Errorf("agent %s obeyed %s@%d (node %s) at t=%d after obeying %s@%d (node %s) at t=%d",
				e.Agent, e.From.ID, e.From.Epoch, e.FromNode, e.T, l.From.ID, l.From.Epoch, l.FromNode, l.T)
		}
		last[e.Agent] = e
	}
	return bad
}

// epochSampler reads every agent file every 20 ms during a test: I2 (an
// epoch never goes down) and I3 (no sample is ever truncated or missing a
// line, which catches a non-atomic rewrite in the act).
//
// Its timeline of each file's (failover_id, epoch) is also the independent
// witness checkI1 holds the agents' accepted commands against.
type epochSampler struct {
	mu       sync.Mutex
	stop     chan struct{}
	done     chan struct{}
	last     map[string]uint64
	samples  int
	errs     []string
	timeline map[string][]fileSpan // path -> what it named, in sample order
}

// fileSpan is a run of samples of one file that named the same token: first
// and last seen (Unix ms, the clock the agents stamp their events with).
type fileSpan struct {
	from, to int64
	id       string
	epoch    uint64
}

var requiredLines = []string{"# DataStax agent address file", "use_ssl: 0", "# keep this", "jmx_port: 7199", "# the OpsCenter server"}

func startEpochSampler(t testing.TB, files []string) *epochSampler {
	s := &epochSampler{stop: make(chan struct{}), done: make(chan struct{}), last: map[string]uint64{}, timeline: map[string][]fileSpan{}}
	go func() {
		defer close(s.done)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			for _, f := range files {
				s.sample(f)
			}
			select {
			case <-s.stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(s.halt)
	return s
}

func (s *epochSampler) sample(f string) {
	b, err := os.ReadFile(f)
	now := time.Now().UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	if err != nil {
		s.errs = append(s.errs, fmt.Sprintf("I3 violated: %s unreadable: %v", f, err))
		return
	}
	text := string(b)
	for _, w := range requiredLines {
		if !strings.Contains(text, w) {
			s.errs = append(s.errs, fmt.Sprintf("I3 violated: %s sampled without %q:\n%s", f, w, text))
			return
		}
	}
	_, es, id := textFacts(text)
	var e uint64
	if es != "" {
		if e, err = strconv.ParseUint(es, 10, 64); err != nil {
			s.errs = append(s.errs, fmt.Sprintf("I3 violated: %s has failover_epoch %q", f, es))
			return
		}
	}
	if l, ok := s.last[f]; ok && e < l {
		s.errs = append(s.errs, fmt.Sprintf("I2 violated: %s epoch went from %d down to %d", f, l, e))
	}
	s.last[f] = e
	var doc map[string]any
	if yaml.Unmarshal(b, &doc) != nil {
		return // not YAML: the agent keeps its last good file
	}
	s.record(f, now, id, e)
}

// record appends one sample to f's timeline.
func (s *epochSampler) record(f string, at int64, id string, epoch uint64) {
	tl := s.timeline[f]
	if n := len(tl); n > 0 && tl[n-1].id == id && tl[n-1].epoch == epoch {
		tl[n-1].to = at
		return
	}
	s.timeline[f] = append(tl, fileSpan{from: at, to: at, id: id, epoch: epoch})
}

// i1Slack is how long before an agent's event stamp it may have read its
// file: the agent reads the file, decides, then stamps and writes the event.
const i1Slack = 250

// named reports whether f may have named id@epoch at some instant within
// i1Slack ms before at (an agent's event stamp). A span's token may have
// been in the file from just after the previous span was last seen until
// just before the next one was first seen; before the first sample the
// file is unknown. Samples the agent would not read either (a file that is
// not whole, see sample) are not in the timeline: the agent keeps its last
// good file then, and so does the witness.
func (s *epochSampler) named(f, id string, epoch uint64, at int64) (ok, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tl := s.timeline[f]
	for i, sp := range tl {
		if sp.id != id || sp.epoch != epoch {
			continue
		}
		lo, hi := int64(math.MinInt64), int64(math.MaxInt64)
		if i > 0 {
			lo = tl[i-1].to
		}
		if i+1 < len(tl) {
			hi = tl[i+1].from
		}
		if at > lo && at-i1Slack < hi {
			return true, true
		}
	}
	return false, len(tl) > 0
}

// around describes what f named around at, for a violation message.
func (s *epochSampler) around(f string, at int64) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for _, sp := range s.timeline[f] {
		if sp.to >= at-5000 && sp.from <= at+5000 {
			parts = append(parts, fmt.Sprintf("%s@%d seen t=%d..%d", sp.id, sp.epoch, sp.from, sp.to))
		}
	}
	if len(parts) == 0 {
		return "nothing sampled within 5 s"
	}
	return strings.Join(parts, "; ")
}

func (s *epochSampler) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// check reports the violations seen so far (and forgets them).
func (s *epochSampler) check(t testing.TB) int {
	t.Helper()
	s.mu.Lock()
	errs := s.errs
	s.errs = nil
	s.mu.Unlock()
	for _, e := range errs {
		t.Errorf("%s", e)
	}
	return len(errs)
}

// holdsRole is the I6 detector: it polls s for d and fails if s ever leaves
// role (a false failover while heartbeats flow).
func holdsRole(t testing.TB, s *server, role string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		st, err := getStatus(s.admin)
		if err == nil && st.Role != role {
			t.Fatalf("I6 violated: %s became %s (epoch %d) while it should stay %s", s.name, st.Role, st.Epoch, role)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serverFailovers counts the takeovers in the server event log.
func serverFailovers(path string) int {
	n := 0
	for _, line := range strings.Split(readFile(path), "\n") {
		var e serverEvent
		if json.Unmarshal([]byte(line), &e) == nil && e.Kind == "role" && e.Role == "taking-over" {
			n++
		}
	}
	return n
}

// signalProc sends sig to p, ignoring an ended process.
func signalProc(p *proc, sig syscall.Signal) { _ = syscall.Kill(p.pid(), sig) }
