package integration

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/protocol"
)

// The attacks of the issue "Trust" that cross the network, one process
// test each: a stranger who reaches the brokers (no secret, no group key)
// forges or replays frames at a running pair. Each test waits until the
// target consumed the input (a counter rose, a log line appeared) before it
// asserts that nothing happened.
//
// Against a binary that predates the group key (TANDEM_BIN of 09cf565, say:
// no `tandem keygen`), the tests run that binary the only way it can run —
// no signing_key, agents without --server-key — and the recorded "signed"
// frames are its unsigned ones: each test then shows the attack as it was
// reported (the assertion that fails names it).

var (
	legacyOnce sync.Once
	legacyBin  bool
)

// legacyBinary reports whether the binary under test predates the group
// key (it has no `tandem keygen`).
func legacyBinary(t testing.TB) bool {
	t.Helper()
	legacyOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tandem-keygen-probe-")
		if err != nil {
			return
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		legacyBin = exec.CommandContext(ctx, tandemBin, "keygen", "--out", dir).Run() != nil
	})
	if legacyBin {
		t.Logf("legacy binary (no tandem keygen): servers run without signing_key, agents without --server-key")
	}
	return legacyBin
}

// hostileRig is newRig that can also run a legacy binary.
func hostileRig(t testing.TB, kind string, ext *extBroker, o rigOpts) *rig {
	t.Helper()
	r := newRig(t, kind, ext, o)
	if legacyBinary(t) {
		mustOK(t, os.RemoveAll(filepath.Join(r.c.dir, "keys"))) // agents get no --server-key
	}
	return r
}

var signingKeyLine = regexp.MustCompile(`(?m)^signing_key: .*\n`)

// hostileAdd is r.addServer; for a legacy binary without signing_key,
// which its strict config would refuse.
func hostileAdd(r *rig, name string, primaryOf *server) *server {
	r.t.Helper()
	s := r.addServer(name, primaryOf)
	if legacyBin {
		b, err := os.ReadFile(s.cfgPath)
		mustOK(r.t, err)
		mustOK(r.t, os.WriteFile(s.cfgPath, signingKeyLine.ReplaceAll(b, nil), 0o644))
	}
	return s
}

// hostilePair is r.pairUp with hostileAdd, then the agents started and settled on a at epoch 1.
func hostilePair(r *rig) {
	r.t.Helper()
	r.a = hostileAdd(r, "a", nil)
	r.b = hostileAdd(r, "b", r.a)
	r.files = r.c.writeAgents(r.opts.agents, &server{brokerPort: r.ag["a"].port()})
	r.samp = startEpochSampler(r.t, r.files)
	r.c.start(r.a)
	r.c.waitRole(r.a, "primary", 20*time.Second)
	r.c.start(r.b)
	r.c.waitRole(r.b, "backup", 20*time.Second)
	r.waitPaired(r.a, r.b, 20*time.Second)
	r.startAgents()
	r.settled(r.a, 1, 20*time.Second)
}

// hostileSingle starts a alone (no backup) with the rig's agent files.
func hostileSingle(r *rig, agents bool) {
	r.t.Helper()
	r.a = hostileAdd(r, "a", nil)
	r.files = r.c.writeAgents(r.opts.agents, &server{brokerPort: r.ag["a"].port()})
	r.samp = startEpochSampler(r.t, r.files)
	r.c.start(r.a)
	r.c.waitRole(r.a, "primary", 20*time.Second)
	if agents {
		r.startAgents()
		r.settled(r.a, 1, 20*time.Second)
	}
}

// hostilePost is post, with the admin token only when the server has one
// (a legacy binary has none).
func hostilePost(t testing.TB, s *server, path string) (int, string) {
	t.Helper()
	if fileExists(filepath.Join(s.dir, "data", "admin.token")) {
		return post(t, s, path)
	}
	resp, err := client.Post("http://"+s.admin+path, "application/json", nil)
	mustOK(t, err)
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text())
	}
	return resp.StatusCode, b.String()
}

// consumed waits until cond (the target took the input in) or d passes:
// a failure with the new binary, a log line with a legacy one (whose
// counters differ: it takes unsigned frames in without a trace).
func consumed(t testing.TB, d time.Duration, what string, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			if legacyBin {
				t.Logf("legacy binary: not seen within %s: %s", d, what)
				return false
			}
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// exited reports whether p has ended (and its exit code).
func exited(p *proc) (bool, int) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.exit
	default:
		return false, 0
	}
}

// refused is what a server dropped: unsigned, badly signed or malformed.
func refused(t testing.TB, s *server) float64 {
	return metric(t, s.admin, "tandem_signature_failures_total") + metric(t, s.admin, "tandem_messages_dropped_total")
}

// fullStatus is the part of GET /status the harness's status leaves out.
type fullStatus struct {
	Role     string   `json:"role"`
	Epoch    uint64   `json:"epoch"`
	Warnings []string `json:"warnings"`
	Agents   struct {
		Managed  int `json:"managed"`
		Tampered int `json:"tampered"`
	} `json:"agents"`
}

func getFullStatus(admin string) (fullStatus, error) {
	var s fullStatus
	resp, err := client.Get("http://" + admin + "/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("status %d", resp.StatusCode)
	}
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}

// record takes n messages on dest through l that keep (nil: all), or
// fails after d.
func record(t testing.TB, l *broker.Link, dest string, n int, d time.Duration, keep func(broker.Message) bool) []broker.Message {
	t.Helper()
	sub, err := l.Subscribe(dest)
	mustOK(t, err)
	// Not closed here: a linkSub.Close while go-stomp closes the same
	// subscription is a data race (broker/link.go, Close's background
	// Unsubscribe); the subscription ends with the link (bounded buffer).
	var out []broker.Message
	deadline := time.After(d)
	for len(out) < n {
		select {
		case m := <-sub.C():
			if keep == nil || keep(m) {
				out = append(out, m)
			}
		case <-deadline:
			t.Fatalf("recorded %d of %d messages on %s in %s", len(out), n, dest, d)
		}
	}
	return out
}

// replayer republishes msgs in order every pace, looping, until stopped.
type replayer struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	sent int
}

func replay(l *broker.Link, dest string, msgs []broker.Message, pace time.Duration) *replayer {
	rp := &replayer{stop: make(chan struct{})}
	rp.wg.Add(1)
	go func() {
		defer rp.wg.Done()
		for i := 0; ; i++ {
			m := msgs[i%len(msgs)]
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if l.Publish(ctx, dest, m.Headers, m.Body) == nil {
				rp.mu.Lock()
				rp.sent++
				rp.mu.Unlock()
			}
			cancel()
			select {
			case <-rp.stop:
				return
			case <-time.After(pace):
			}
		}
	}()
	return rp
}

func (rp *replayer) halt() int {
	select {
	case <-rp.stop:
	default:
		close(rp.stop)
	}
	rp.wg.Wait()
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.sent
}

// tryPublish is publish that leaves a failure to the caller (its target
// may have just exited).
func tryPublish(l *broker.Link, dest string, h map[string]string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return l.Publish(ctx, dest, h, body)
}

// wrongSigner signs as a server of another group (its own group key).
func wrongSigner(t testing.TB, dest protocol.Destinations) *protocol.Signer {
	t.Helper()
	_, priv, err := protocol.GenerateKey()
	mustOK(t, err)
	return protocol.NewGroupSigner(dest, protocol.Keys{Secret: []byte("another-groups-secret-0123456789"), Private: priv})
}

// forgeries are h unsigned, signed with another group's key, and with a
// signature that is not one.
func forgeries(dest string, env protocol.Envelope, body []byte, wrong *protocol.Signer) []map[string]string {
	unsigned := env.Headers()
	other := env.Headers()
	wrong.Sign(dest, other, body)
	junk := env.Headers()
	junk[protocol.HSignature] = strings.Repeat("ab", 64)
	return []map[string]string{unsigned, other, junk}
}

func countIn(text, what string) int { return strings.Count(text, what) }

// Attack 1: a reply with the primary's own failover id, another instance
// and started-ms 1 (an "earlier clone") made it exit 2 for good. Now it is
// refused: unsigned, another group's signature or junk.
func TestHostileCloneReply(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 1})
	hostileSingle(r, false)
	a := r.a
	dest := protocol.NewDestinations("")
	wrong := wrongSigner(t, dest)
	id := mustStatus(t, a).FailoverID
	tap := publisher(t, a.addr())

	ref0 := refused(t, a)
	n := 0
	for i := 0; i < 5; i++ {
		env := protocol.Envelope{FailoverID: id, Epoch: 1, Node: "a", Role: "backup", Advertise: "127.0.0.1:1",
			SentMS: time.Now().UnixMilli(), Instance: fmt.Sprintf("c10ne%011d", i), StartedMS: 1, Nonce: "0123456789abcdef"}
		for _, h := range forgeries(dest.Reply, env, nil, wrong) {
			if tryPublish(tap, dest.Reply, h, nil) != nil {
				break // a legacy a is gone already
			}
			n++
		}
	}
	consumed(t, 10*time.Second, fmt.Sprintf("a refused the %d forged clone replies", n), func() bool {
		if _, err := getStatus(a.admin); err != nil {
			return true // gone (checked below), or not answering
		}
		return refused(t, a)-ref0 >= float64(n)
	})
	if _, err := getStatus(a.admin); err != nil {
		select { // exiting?
		case <-a.p.done:
		case <-time.After(5 * time.Second):
		}
	}
	if done, code := exited(a.p); done {
		t.Fatalf("attack 1: a forged reply (a's failover id, another instance, started-ms 1) made a exit %d: %q", code, lastLine(a.p.logText()))
	}
	holdsRole(t, a, "primary", time.Second)
	t.Logf("a refused %d forged clone replies", n)
}

// Attack 1, signed: the server's own heartbeats, recorded from a
// subscriber and replayed after it restarted, come from an earlier
// instance of its own failover id; they echo nothing this process sent, so
// they never make it exit.
func TestHostileCloneReplay(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 1})
	hostileSingle(r, false)
	a := r.a
	dest := protocol.NewDestinations("")
	tap := publisher(t, a.addr())
	rec := record(t, tap, dest.Heartbeat, 20, 10*time.Second, nil) // a's own, signed
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	r.c.start(a)
	if st := r.c.waitRole(a, "primary", 20*time.Second); st.Epoch != 1 {
		t.Fatalf("a restarted at epoch %d", st.Epoch)
	}
	tap2 := publisher(t, a.addr())
	log0 := countIn(a.p.logText(), "waiting for it to answer this process")
	rp := replay(tap2, dest.Heartbeat, rec, 50*time.Millisecond)
	consumed(t, 10*time.Second, "a read the replayed heartbeats of its previous process as an unproven clone", func() bool {
		if done, _ := exited(a.p); done {
			return true
		}
		return countIn(a.p.logText(), "waiting for it to answer this process") > log0
	})
	time.Sleep(2 * time.Second) // 40 more replayed heartbeats
	sent := rp.halt()
	if done, code := exited(a.p); done {
		t.Fatalf("attack 1 (signed replay): %d replayed heartbeats of a's previous process made the restarted a exit %d: %q", sent, code, lastLine(a.p.logText()))
	}
	st := mustStatus(t, a)
	if st.Role != "primary" || st.Epoch != 1 {
		t.Fatalf("a after %d replayed heartbeats of its previous process: %s@%d", sent, st.Role, st.Epoch)
	}
	t.Logf("a survived %d replayed signed heartbeats of its previous process", sent)
}

// failoverSig reads failover_sig from an agent file's text.
func failoverSig(text string) string {
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "failover_sig" {
			return strings.Trim(strings.TrimSpace(strings.SplitN(v, "#", 2)[0]), `"'`)
		}
	}
	return ""
}

// Attack 2: an agent status at epoch 999999 fenced the primary (persisted:
// it then refused to restart, exit 3). Now a report of a higher token
// without a valid failover_sig is tampered: no fence, and a restart is a
// primary again.
func TestHostileForgedAgentStatus(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 2})
	hostileSingle(r, true)
	a := r.a
	dest := protocol.NewDestinations("")
	wrong := wrongSigner(t, dest)
	id := mustStatus(t, a).FailoverID
	text := readFile(r.files[0])
	sig := failoverSig(text)
	if sig == "" && !legacyBin {
		t.Fatalf("a wrote no failover_sig:\n%s", text)
	}
	bound := fmt.Sprintf("127.0.0.1:%d", r.ag["a"].port())
	body := []byte(`{"id":"mallory","path":"/x/address.yaml","accepted":1}`)
	tap := publisher(t, a.addr())
	const line = "without a valid server signature"
	log0 := countIn(a.p.logText(), line)
	n := 0
	for _, env := range []protocol.Envelope{
		{FailoverID: newUUID(), Epoch: 999999, Node: "mallory"},                                    // a stranger's token
		{FailoverID: id, Epoch: 999999, Node: "agent0", FailoverSig: sig, Bound: bound},            // a real sig, for epoch 1
		{FailoverID: id, Epoch: 999999, Node: "agent1", FailoverSig: "zz-not-a-sig", Bound: bound}, // junk
	} {
		h := env.Headers()
		publish(t, tap, dest.AgentStatus, h, body)
		n++
		// A failover_sig made with another group's key, over this very claim.
		env.FailoverSig = wrong.TokenSig(env.FailoverID, env.Epoch, "127.0.0.1", r.ag["a"].port())
		publish(t, tap, dest.AgentStatus, env.Headers(), body)
		n++
	}
	consumed(t, 10*time.Second, fmt.Sprintf("a logged %d agent reports of a token without a valid server signature", n), func() bool {
		if st, err := getStatus(a.admin); err == nil && st.Role == "fenced" {
			return true
		}
		return countIn(a.p.logText(), line)-log0 >= n
	})
	if st := mustStatus(t, a); st.Role != "primary" || st.Epoch != 1 {
		t.Fatalf("attack 2: forged agent statuses at epoch 999999 left a %s@%d", st.Role, st.Epoch)
	}
	if m := readState(t, a); m["role"] == "fenced" {
		t.Fatalf("attack 2: state.json of a says fenced: %v", m)
	}
	fs, err := getFullStatus(a.admin)
	mustOK(t, err)
	t.Logf("a after %d forged reports: agents.tampered=%d warnings=%q (forged reports are counted by the primary role, Status.Tampered, which the status JSON does not show)", n, fs.Agents.Tampered, fs.Warnings)
	holdsRole(t, a, "primary", time.Second)

	// The fence would have been persisted: a restart refused with exit 3.
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	p := r.c.start(a)
	eventually(t, 20*time.Second, "a restarted (primary or exited)", func() bool {
		if done, _ := exited(p); done {
			return true
		}
		st, err := getStatus(a.admin)
		return err == nil && st.Role == "primary"
	})
	if done, code := exited(p); done {
		t.Fatalf("attack 2: after the forged reports a refused to restart: exit %d: %q", code, lastLine(p.logText()))
	}
	r.settled(a, 1, 20*time.Second)
	r.check()
}

// Attack 3: a heartbeat with handover-to naming the backup, from a
// stranger, forced a takeover. Now it is refused unsigned, even when it
// echoes the backup's nonce (anyone on the broker can read the replies).
func TestHostileHandoverForged(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 1, hooks: "{timeout: 1s}"})
	hostilePair(r)
	a, b := r.a, r.b
	dest := protocol.NewDestinations("")
	wrong := wrongSigner(t, dest)
	ida, idb := mustStatus(t, a).FailoverID, mustStatus(t, b).FailoverID
	tap := publisher(t, a.addr())
	echo := echoReplies(t, tap, dest)

	ref0 := refused(t, b)
	n := 0
	for i := 0; i < 3; i++ {
		env := protocol.Envelope{FailoverID: ida, Epoch: 1, Node: "a", Seq: 1 << 62, Advertise: r.ag["a"].addr(),
			PeriodMS: 100, Role: "primary", SentMS: time.Now().UnixMilli(), HandoverTo: idb,
			Instance: "0123456789abcdef", StartedMS: time.Now().UnixMilli(), Echo: echo()}
		for _, h := range forgeries(dest.Heartbeat, env, nil, wrong) {
			publish(t, tap, dest.Heartbeat, h, nil)
			n++
		}
	}
	consumed(t, 10*time.Second, fmt.Sprintf("b refused the %d forged handover heartbeats", n), func() bool {
		if st, err := getStatus(b.admin); err == nil && st.Role != "backup" {
			return true
		}
		return refused(t, b)-ref0 >= float64(n)
	})
	if st := mustStatus(t, b); st.Role != "backup" {
		t.Fatalf("attack 3: a stranger's heartbeat with handover-to b made b %s@%d", st.Role, st.Epoch)
	}
	holdsRole(t, b, "backup", time.Second)
	t.Logf("b refused %d forged handover heartbeats", n)
	r.settled(a, 1, 20*time.Second)
	r.check()
}

// Attack 3, signed: the primary's own handover heartbeats of an earlier,
// abandoned switchover (b frozen, then killed), replayed to the restarted
// b, echo none of its nonces: b stays backup.
func TestHostileHandoverReplay(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 1, hooks: "{timeout: 1s}"})
	hostilePair(r)
	a, b := r.a, r.b
	dest := protocol.NewDestinations("")
	ida, idb := mustStatus(t, a).FailoverID, mustStatus(t, b).FailoverID
	tap := publisher(t, a.addr())
	sub, err := tap.Subscribe(dest.Heartbeat)
	mustOK(t, err)
	b.p.signal(syscall.SIGSTOP)
	if code, body := hostilePost(t, a, "/switchover"); code != http.StatusAccepted {
		b.p.signal(syscall.SIGCONT)
		t.Fatalf("switchover: %d %s", code, body)
	}
	var rec []broker.Message
	deadline := time.After(10 * time.Second)
	for len(rec) < 5 {
		select {
		case m := <-sub.C():
			if m.Headers[protocol.HHandoverTo] == idb && m.Headers[protocol.HFailoverID] == ida {
				rec = append(rec, m)
			}
		case <-deadline:
			t.Fatalf("recorded %d handover heartbeats of a", len(rec))
		}
	}
	b.p.signal(syscall.SIGKILL)
	b.p.wait(5 * time.Second)
	eventually(t, 40*time.Second, "a gives the switchover up (heartbeats without handover-to)", func() bool {
		for {
			select {
			case m := <-sub.C():
				if m.Headers[protocol.HFailoverID] == ida && m.Headers[protocol.HHandoverTo] == "" {
					return true
				}
			default:
				return false
			}
		}
	})
	// sub stays open until the link closes (see record).
	if st := mustStatus(t, a); st.Role != "primary" || st.Epoch != 1 {
		t.Fatalf("a after the abandoned switchover: %s@%d", st.Role, st.Epoch)
	}
	r.c.start(b)
	r.waitPaired(a, b, 20*time.Second)
	ign0 := metric(t, b.admin, "tandem_heartbeats_ignored_total")
	rp := replay(tap, dest.Heartbeat, rec, 50*time.Millisecond)
	consumed(t, 10*time.Second, fmt.Sprintf("b ignored the %d replayed handover heartbeats", len(rec)), func() bool {
		if st, err := getStatus(b.admin); err == nil && st.Role != "backup" {
			return true
		}
		return metric(t, b.admin, "tandem_heartbeats_ignored_total")-ign0 >= float64(2*len(rec))
	})
	sent := rp.halt()
	if st := mustStatus(t, b); st.Role != "backup" {
		t.Fatalf("attack 3 (signed replay): %d replayed handover heartbeats of an abandoned switchover made the restarted b %s@%d", sent, st.Role, st.Epoch)
	}
	holdsRole(t, b, "backup", time.Second)
	if st := mustStatus(t, a); st.Role != "primary" || st.Epoch != 1 {
		t.Fatalf("a after the replayed handover: %s@%d", st.Role, st.Epoch)
	}
	t.Logf("b ignored %d replayed handover heartbeats", sent)
	r.settled(a, 1, 20*time.Second)
	r.check()
}

// Attack 4: a heartbeat at seq 2^64-1 with maintenance: true silently
// disabled failover (every later heartbeat was a "duplicate", maintenance
// kept the silence from counting: a killed primary was never replaced).
// Now it is refused, and a kill -9 of the primary fails over in the window.
func TestHostileHugeSeqMaintenance(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 1})
	hostilePair(r)
	a, b := r.a, r.b
	dest := protocol.NewDestinations("")
	wrong := wrongSigner(t, dest)
	ida := mustStatus(t, a).FailoverID
	tap := publisher(t, a.addr())
	echo := echoReplies(t, tap, dest)
	time.Sleep(300 * time.Millisecond) // a reply or a challenge: something to echo

	ref0 := refused(t, b)
	env := protocol.Envelope{FailoverID: ida, Epoch: 1, Node: "a", Seq: math.MaxUint64, Advertise: r.ag["a"].addr(),
		PeriodMS: 100, Role: "primary", SentMS: time.Now().UnixMilli(), Maintenance: true,
		Instance: "0123456789abcdef", StartedMS: time.Now().UnixMilli(), Echo: echo()}
	hs := forgeries(dest.Heartbeat, env, nil, wrong)
	for _, h := range hs {
		publish(t, tap, dest.Heartbeat, h, nil)
	}
	consumed(t, 10*time.Second, "b refused the forged seq 2^64-1 maintenance heartbeats", func() bool {
		return refused(t, b)-ref0 >= float64(len(hs))
	})
	if st := mustStatus(t, b); st.Maintenance {
		t.Errorf("attack 4: b shows maintenance on after a stranger's heartbeat")
	}
	a.p.signal(syscall.SIGKILL)
	killed := time.Now()
	eventually(t, 5*time.Second, "attack 4: b takes over after the kill (a forged maintenance/seq heartbeat must not have disabled failover)", func() bool {
		st, err := getStatus(b.admin)
		return err == nil && st.Role == "primary"
	})
	t.Logf("b took over %s after the kill", time.Since(killed).Round(time.Millisecond))
	r.settled(b, 2, 20*time.Second)
	r.check()
}

// setEpoch rewrites path with failover_epoch set to epoch, failover_sig
// kept (now invalid) or removed, as the agent's owner could.
func setEpoch(t testing.TB, path string, epoch uint64, dropSig bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	mustOK(t, err)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		k, _, _ := strings.Cut(line, ":")
		switch strings.TrimSpace(k) {
		case "failover_epoch":
			line = fmt.Sprintf("failover_epoch: %d", epoch)
		case "failover_sig":
			if dropSig {
				continue
			}
		}
		out = append(out, line)
	}
	tmp := path + ".owner"
	mustOK(t, os.WriteFile(tmp, []byte(strings.Join(out, "\n")), 0o644))
	mustOK(t, os.Rename(tmp, path))
}

// Attack 5: an agent's owner writing failover_epoch: 1000 into its own
// address.yaml (no valid failover_sig) fenced the primary; 5000 then
// fenced the backup. Now both are tampered files that fence nobody.
func TestHostileTamperedAgentFile(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 3})
	hostilePair(r)
	a, b := r.a, r.b
	r.samp.halt() // this test lowers nothing, but the owner's edits are not the server's

	// The agents write the group's servers into their files after the
	// first ping they obey: an owner's edit without the agent's lock in
	// that instant is overwritten (a lost update, not a fence). Edit once
	// the agents are done with their files.
	eventually(t, 20*time.Second, "every agent wrote failover_servers into its file", func() bool {
		for _, f := range r.files {
			b, err := os.ReadFile(f)
			if err != nil || !strings.Contains(string(b), "failover_servers:") {
				return false
			}
		}
		return true
	})
	setEpoch(t, r.files[0], 1000, false) // old signature left in place
	setEpoch(t, r.files[1], 5000, true)  // signature removed
	consumed(t, 15*time.Second, "a reports the two files as tampered", func() bool {
		if st, err := getStatus(a.admin); err == nil && st.Role != "primary" {
			return true
		}
		st, err := getFullStatus(a.admin)
		return err == nil && st.Agents.Tampered >= 2
	})
	if st := mustStatus(t, a); st.Role != "primary" || st.Epoch != 1 {
		t.Fatalf("attack 5: failover_epoch 1000/5000 written by the agents' owner left a %s@%d", st.Role, st.Epoch)
	}
	fa, err := getFullStatus(a.admin)
	mustOK(t, err)
	warned := false
	for _, w := range fa.Warnings {
		warned = warned || strings.Contains(w, "tampered")
	}
	if !warned {
		t.Errorf("a's status has agents.tampered=%d but no tampered WARNING: %q", fa.Agents.Tampered, fa.Warnings)
	}
	fb, err := getFullStatus(b.admin)
	mustOK(t, err)
	t.Logf("a: agents.tampered=%d warnings=%q; b (backup): agents.tampered=%d", fa.Agents.Tampered, fa.Warnings, fb.Agents.Tampered)
	holdsRole(t, a, "primary", 1500*time.Millisecond)
	if st := mustStatus(t, b); st.Role != "backup" {
		t.Fatalf("attack 5: b is %s after the tampered files", st.Role)
	}

	// The backup takes over as usual; the 5000 file does not fence it.
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	if st := r.c.waitRole(b, "primary", 10*time.Second); st.Epoch != 2 {
		t.Fatalf("b took over at epoch %d", st.Epoch)
	}
	holdsRole(t, b, "primary", 2*time.Second)
	if m := readState(t, b); m["role"] != "primary" {
		t.Fatalf("attack 5: b's state.json after the takeover: %v", m)
	}
	fb, _ = getFullStatus(b.admin)
	for i, f := range r.files {
		_, ep, id, _ := fileFacts(t, f)
		t.Logf("after b's takeover: %s epoch=%s id=%s", filepath.Base(filepath.Dir(filepath.Dir(f))), ep, id)
		if i == 2 && ep != "2" {
			t.Errorf("the untouched file is at epoch %s after b's takeover, want 2", ep)
		}
		checkAgentFileIntact(t, f, i)
	}
	t.Logf("b (primary): agents.tampered=%d warnings=%q", fb.Agents.Tampered, fb.Warnings)
}

// Attack 6: after a backup restart, replayed heartbeats recorded earlier
// from the live primary kept a dead primary alive (the restarted backup
// had no seq to compare with). Now they echo none of the new process's
// nonces: the backup takes over after the window anyway.
func TestHostileReplayAfterBackupRestart(t *testing.T) {
	dir := t.TempDir()
	hbAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, dir, "hb-broker", "broker", "--listen", hbAddr)
	eventually(t, 10*time.Second, "standalone broker up", func() bool { return stompPing(hbAddr) == nil })
	r := hostileRig(t, "tandem-broker", &extBroker{kind: "tandem-broker", addr: hbAddr}, rigOpts{agents: 1, timing: fastTiming})
	hostilePair(r)
	a, b := r.a, r.b
	dest := protocol.NewDestinations("")
	ida := mustStatus(t, a).FailoverID
	tap := publisher(t, hbAddr)
	rec := record(t, tap, dest.Heartbeat, 60, 20*time.Second, func(m broker.Message) bool {
		return m.Headers[protocol.HFailoverID] == ida
	})

	b.p.signal(syscall.SIGKILL)
	b.p.wait(5 * time.Second)
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	rp := replay(tap, dest.Heartbeat, rec, 100*time.Millisecond) // a's pace: 6 s of a "live" a
	defer rp.halt()
	r.c.start(b)
	eventually(t, 20*time.Second, "b answers", func() bool { _, err := getStatus(b.admin); return err == nil })
	up := time.Now()
	deadline := up.Add(3 * time.Second) // window 500ms
	ignored := 0.0                      // while b was a backup (the counter is the backup role's)
	for {
		st, err := getStatus(b.admin)
		if err == nil && st.Role == "primary" {
			break
		}
		if err == nil && st.Role == "backup" {
			ignored = max(ignored, metric(t, b.admin, "tandem_heartbeats_ignored_total"))
		}
		if time.Now().After(deadline) {
			t.Fatalf("attack 6: %d replayed heartbeats of the dead a kept the restarted b a backup for %s (fail_window 500ms)", rp.halt(), time.Since(up).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(up)
	sent := rp.halt()
	t.Logf("the restarted b took over %s after it answered, while %d recorded heartbeats of a were replayed (%v ignored while it was a backup)",
		took.Round(time.Millisecond), sent, ignored)
	if ignored == 0 && !legacyBin {
		t.Fatalf("b ignored no replayed heartbeat before taking over: the replay did not reach it, nothing was tested")
	}
	r.settled(b, 2, 20*time.Second)
	r.check()
}

// seqEvent is an agent event with the command's seq.
type seqEvent struct {
	Agent    string `json:"agent"`
	Accepted bool   `json:"accepted"`
	From     struct {
		ID    string `json:"failover_id"`
		Epoch uint64 `json:"epoch"`
	} `json:"from"`
	Seq uint64 `json:"seq"`
}

func readSeqEvents(t testing.TB, path string) []seqEvent {
	t.Helper()
	var out []seqEvent
	for _, line := range strings.Split(readFile(path), "\n") {
		var e seqEvent
		if json.Unmarshal([]byte(line), &e) == nil && e.Agent != "" {
			out = append(out, e)
		}
	}
	return out
}

// Attack 7: signed commands recorded from the primary and replayed to the
// agents. An agent accepts a command only with a seq above the last it
// accepted at that token: each replayed command is rejected.
func TestHostileReplayedCommands(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 2})
	hostileSingle(r, true)
	a := r.a
	dest := protocol.NewDestinations("")
	ida := mustStatus(t, a).FailoverID
	tap := publisher(t, a.addr())
	rec := record(t, tap, dest.AgentCommand, 10, 10*time.Second, func(m broker.Message) bool {
		return m.Headers[protocol.HFailoverID] == ida && m.Headers[protocol.HSeq] != ""
	})
	seqs := map[uint64]bool{}
	for _, m := range rec {
		s, err := strconv.ParseUint(m.Headers[protocol.HSeq], 10, 64)
		mustOK(t, err)
		seqs[s] = true
	}
	agents := []string{"agent0", "agent1"}
	// per (agent, seq): the events at a@1 with that seq, in order
	seen := func() map[string][]bool {
		m := map[string][]bool{}
		for _, e := range readSeqEvents(t, r.evPath) {
			if e.From.ID == ida && e.From.Epoch == 1 && seqs[e.Seq] {
				k := fmt.Sprintf("%s/%d", e.Agent, e.Seq)
				m[k] = append(m[k], e.Accepted)
			}
		}
		return m
	}
	eventually(t, 10*time.Second, "both agents accepted the recorded commands", func() bool {
		m := seen()
		for _, ag := range agents {
			for s := range seqs {
				if v := m[fmt.Sprintf("%s/%d", ag, s)]; len(v) == 0 || !v[0] {
					return false
				}
			}
		}
		return true
	})
	for _, m := range rec {
		publish(t, tap, dest.AgentCommand, m.Headers, m.Body)
	}
	consumed(t, 10*time.Second, "both agents decided on every replayed command", func() bool {
		m := seen()
		for _, ag := range agents {
			for s := range seqs {
				if len(m[fmt.Sprintf("%s/%d", ag, s)]) < 2 {
					return false
				}
			}
		}
		return true
	})
	bad := 0
	for k, v := range seen() {
		for _, acc := range v[1:] {
			if acc {
				bad++
				t.Errorf("attack 7: %s accepted a replayed command (events at seq: %v)", k, v)
			}
		}
	}
	if bad == 0 {
		t.Logf("%d replayed commands rejected by each of %d agents", len(rec), len(agents))
	}

	// A forged (unsigned, or another group's) command at a huge seq is
	// refused and does not raise the bar for a's next commands.
	wrong := wrongSigner(t, dest)
	env := protocol.Envelope{FailoverID: ida, Epoch: 1, Node: "a", Seq: math.MaxUint64 - 1, Advertise: r.ag["a"].addr(), PeriodMS: 100, Role: "primary"}
	for _, h := range forgeries(dest.AgentCommand, env, []byte(`{}`), wrong) {
		publish(t, tap, dest.AgentCommand, h, []byte(`{}`))
	}
	n0 := len(readSeqEvents(t, r.evPath))
	eventually(t, 10*time.Second, "both agents accept a's later commands after the forged huge seq", func() bool {
		evs := readSeqEvents(t, r.evPath)
		ok := map[string]bool{}
		for _, e := range evs[n0:] {
			if e.Accepted && e.From.ID == ida && e.Seq < math.MaxUint64-1 {
				ok[e.Agent] = true
			}
		}
		return len(ok) == len(agents)
	})
	for _, e := range readSeqEvents(t, r.evPath) {
		if e.Seq == math.MaxUint64-1 && e.Accepted {
			t.Errorf("%s accepted the forged command at seq 2^64-2", e.Agent)
		}
	}
	r.check()
}

// hostile is a stranger on the brokers (loopback) for the soak: it sends
// forged frames (unsigned, wrongly signed, junk signatures, huge seq,
// handover-to, maintenance, clone replies, agent statuses at epoch 999999)
// and replays signed frames it recorded, at most rate messages a second.
type hostile struct {
	t     testing.TB
	rnd   *rand.Rand // the sender's
	dest  protocol.Destinations
	wrong *protocol.Signer
	links []*broker.Link
	files []string
	rate  int

	mu   sync.Mutex
	krnd *rand.Rand       // the recorders' (under mu)
	rec  []broker.Message // recorded signed frames (bounded)
	ids  map[string]string
	sent int

	stop chan struct{}
	wg   sync.WaitGroup
}

const hostileRecorded = 256

// startHostile connects to addrs (the servers' embedded brokers and the
// heartbeat broker, if any) and starts sending.
func startHostile(t testing.TB, seed int64, addrs []string, files []string, rate int) *hostile {
	t.Helper()
	dest := protocol.NewDestinations("")
	h := &hostile{t: t, rnd: rand.New(rand.NewSource(seed)), krnd: rand.New(rand.NewSource(seed + 1)), dest: dest,
		wrong: wrongSigner(t, dest), files: files, rate: rate, ids: map[string]string{}, stop: make(chan struct{})}
	for _, addr := range addrs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		l, err := broker.Dial(ctx, broker.LinkConfig{URL: "stomp://" + addr, VHost: "/"})
		cancel()
		mustOK(t, err)
		h.links = append(h.links, l)
		for _, d := range []string{dest.Heartbeat, dest.Reply, dest.AgentCommand} {
			sub, err := l.Subscribe(d)
			mustOK(t, err)
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				for { // sub ends with the link (see record)
					select {
					case <-h.stop:
						return
					case m, ok := <-sub.C():
						if !ok {
							return
						}
						h.keep(m)
					}
				}
			}()
		}
	}
	h.wg.Add(1)
	go h.run()
	t.Cleanup(func() { h.halt() })
	return h
}

// keep records a signed frame: the first ones and a random sample of the
// rest (so old frames of earlier epochs stay available to replay).
func (h *hostile) keep(m broker.Message) {
	if m.Headers[protocol.HSignature] == "" || strings.HasPrefix(m.Headers[protocol.HNode], "mallory") {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := m.Headers[protocol.HNode]; n != "" && m.Headers[protocol.HRole] != "" {
		h.ids[n] = m.Headers[protocol.HFailoverID]
	}
	if len(h.rec) < hostileRecorded {
		h.rec = append(h.rec, m)
	} else if h.krnd.Intn(4) == 0 {
		h.rec[hostileRecorded/4+h.krnd.Intn(hostileRecorded*3/4)] = m // keep the first quarter
	}
}

func (h *hostile) run() {
	defer h.wg.Done()
	tk := time.NewTicker(time.Second / time.Duration(h.rate))
	defer tk.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-tk.C:
		}
		l := h.links[h.rnd.Intn(len(h.links))]
		dest, hd, body := h.frame()
		if dest == "" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		if l.Publish(ctx, dest, hd, body) == nil {
			h.mu.Lock()
			h.sent++
			h.mu.Unlock()
		}
		cancel()
	}
}

// frame draws one hostile frame.
func (h *hostile) frame() (string, map[string]string, []byte) {
	h.mu.Lock()
	var ids []string
	for _, id := range h.ids {
		ids = append(ids, id)
	}
	var old *broker.Message
	if len(h.rec) > 0 {
		m := h.rec[h.rnd.Intn(len(h.rec))]
		old = &m
	}
	k := h.rnd.Intn(8)
	h.mu.Unlock()
	pick := func() string {
		if len(ids) == 0 {
			return newUUID()
		}
		return ids[h.rnd.Intn(len(ids))]
	}
	now := time.Now().UnixMilli()
	hb := protocol.Envelope{FailoverID: pick(), Epoch: uint64(1 + h.rnd.Intn(50)), Node: "mallory", Seq: math.MaxUint64 - uint64(h.rnd.Intn(3)),
		Advertise: "127.0.0.1:1", PeriodMS: 100, Role: "primary", SentMS: now, HandoverTo: pick(), Maintenance: h.rnd.Intn(2) == 0,
		Instance: "badc0ffee0ddf00d", StartedMS: 1}
	sign := func(dest string, e protocol.Envelope, body []byte) map[string]string {
		fs := forgeries(dest, e, body, h.wrong)
		return fs[h.rnd.Intn(len(fs))]
	}
	switch k {
	case 0, 1: // forged heartbeat: huge seq, handover-to, maintenance, a higher epoch
		if k == 1 {
			hb.Epoch = 999999
		}
		return h.dest.Heartbeat, sign(h.dest.Heartbeat, hb, nil), nil
	case 2: // an "earlier clone" reply with a server's failover id
		e := protocol.Envelope{FailoverID: pick(), Epoch: hb.Epoch, Node: "mallory", Role: "backup", SentMS: now,
			Instance: "badc0ffee0ddf00d", StartedMS: 1, Nonce: "0123456789abcdef", Echo: []string{"badc0ffee0ddf00d"}}
		return h.dest.Reply, sign(h.dest.Reply, e, nil), nil
	case 3: // an agent status at epoch 999999 without a valid failover_sig
		e := protocol.Envelope{FailoverID: pick(), Epoch: 999999, Node: "mallory-agent", Bound: "127.0.0.1:1",
			FailoverSig: hex.EncodeToString([]byte(strings.Repeat("x", 64)))}
		if len(h.files) > 0 {
			e.FailoverSig = failoverSig(readFile(h.files[h.rnd.Intn(len(h.files))])) // real, for another token
		}
		return h.dest.AgentStatus, e.Headers(), []byte(`{"id":"mallory-agent","accepted":1}`)
	case 4: // a forged command
		e := hb
		e.Seq = math.MaxUint64 - 1
		return h.dest.AgentCommand, sign(h.dest.AgentCommand, e, []byte(`{}`)), []byte(`{}`)
	default: // a recorded signed frame, replayed verbatim
		if old == nil {
			return "", nil, nil
		}
		hd := map[string]string{}
		for k, v := range old.Headers {
			hd[k] = v
		}
		return old.Destination, hd, old.Body
	}
}

// halt stops the stranger and returns how many messages it sent.
func (h *hostile) halt() int {
	select {
	case <-h.stop:
	default:
		for _, l := range h.links {
			l.Close()
		}
		close(h.stop)
	}
	h.wg.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sent
}

// count is the messages sent so far.
func (h *hostile) count() int {
	if h == nil {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sent
}

// A replay of the backup's own recorded replies to the primary: the primary
// then echoes an old nonce, and the backup does not count the heartbeats
// that echo it. At 50 replies a second this must still cause no false
// failover (I6).
func TestHostileReplayedReplies(t *testing.T) {
	r := hostileRig(t, "embedded", nil, rigOpts{agents: 1})
	hostilePair(r)
	a, b := r.a, r.b
	dest := protocol.NewDestinations("")
	idb := mustStatus(t, b).FailoverID
	tap := publisher(t, a.addr())
	rec := record(t, tap, dest.Reply, 3, 10*time.Second, func(m broker.Message) bool {
		return m.Headers[protocol.HFailoverID] == idb
	})
	ign0 := metric(t, b.admin, "tandem_heartbeats_ignored_total")
	rp := replay(tap, dest.Reply, rec, replyPace)
	defer rp.halt()
	holdsRole(t, b, "backup", 5*time.Second)
	sent := rp.halt()
	t.Logf("%d replayed replies of b: b ignored %v heartbeats meanwhile, stayed backup", sent, metric(t, b.admin, "tandem_heartbeats_ignored_total")-ign0)
	if st := mustStatus(t, a); st.Role != "primary" || st.Epoch != 1 {
		t.Fatalf("a after the replayed replies: %s@%d", st.Role, st.Epoch)
	}
}

// replyPace: 50 replayed replies a second.
const replyPace = 20 * time.Millisecond
