package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/protocol"
)

// Process-level tests of "one engine, one owner of state" (ARCHITECTURE.md,
// Version 2): an operator's command during a takeover hook does not roll
// state.json back, and a fence during after_takeover stops the hook before
// on_fenced and is never undone.

// An operator turns maintenance on while the backup's before_takeover hook
// holds its takeover. state.json's epoch never goes down and its takeover
// journal is kept until the takeover completes; maintenance survives the
// takeover (state.json and status). Before the engine, the maintenance
// write came from a stale copy of the state: epoch 2 -> 0, journal lost.
func TestEngineMaintenanceDuringATakeoverHook(t *testing.T) {
	c := newCluster(t)
	// before_takeover holds the takeover until the test releases it (at
	// most 20 s), so the operator's command lands inside it however slow
	// the machine is.
	hookPID, release := filepath.Join(c.dir, "before.pid"), filepath.Join(c.dir, "before.release")
	a := c.addServer("a", nil)
	c.extra = fmt.Sprintf("hooks: {before_takeover: %q}\n",
		fmt.Sprintf("echo $$ > %s; i=0; while [ ! -e %s ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done", hookPID, release))
	b := c.addServer("b", a)
	c.extra = ""
	files := c.writeAgents(1, a)
	killHookProcs(t, hookPID)
	startPair(t, c, a, b)
	allAt(t, files, a, 1, 10*time.Second)
	ss := startStateSampler(t, b)
	checked := false
	t.Cleanup(func() { // a wait that failed: say what state.json went through
		if !checked {
			ss.halt()
			ss.checkEpochAndJournal(t, 2)
		}
	})

	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	eventually(t, 20*time.Second, "tandem status --json says b is taking-over", func() bool {
		st, err := cliStatus(b)
		return err == nil && st.Role == "taking-over"
	})
	// Status says taking-over a moment before the journal is on disk.
	eventually(t, 10*time.Second, "b's takeover journal (epoch 2) in state.json", func() bool {
		s, ok := ss.last()
		return ok && s.Takeover != nil && s.Epoch == 2
	})

	pid := readPID(hookPID)
	if pid == 0 || !procAlive(pid) {
		t.Fatalf("b is taking over but its before_takeover hook is not running (pid file %q)", readFile(hookPID))
	}
	mt := start(t, c.dir, "maintenance-on", "maintenance", "on", "--config", b.cfgPath)
	if code := mt.wait(20 * time.Second); code != 0 {
		t.Fatalf("tandem maintenance on --config %s: exit %d\n%s", b.cfgPath, code, mt.logText())
	}
	if !procAlive(pid) {
		t.Fatalf("b's before_takeover hook ended before maintenance on returned")
	}
	// Keep the hook running a little longer while state.json is sampled:
	// the maintenance write must not have rolled the takeover back.
	eventually(t, 5*time.Second, "state.json says maintenance while the takeover is still journaled", func() bool {
		s, ok := ss.last()
		return ok && s.Maintenance && s.Takeover != nil
	})
	ss.waitReads(t, 20)
	// Not asserted (the contract speaks of status after the takeover): at
	// e5542bf status shows the stopped backup role's view, maintenance off,
	// until the takeover completes.
	if st, err := cliStatus(b); err != nil || st.Role != "taking-over" || !st.Maintenance {
		t.Logf("status during the hook after maintenance on: role %s, maintenance %v (%v)", st.Role, st.Maintenance, err)
	}
	mustOK(t, os.WriteFile(release, nil, 0o644))

	c.waitRole(b, "primary", 20*time.Second)
	eventually(t, 10*time.Second, "b's takeover journal closed (role primary in state.json)", func() bool {
		s, ok := ss.last()
		return ok && s.Takeover == nil && s.Role == "primary"
	})
	ss.halt()
	checked = true
	ss.checkEpochAndJournal(t, 2)
	seenOn := false
	for _, s := range ss.all() {
		if s.Maintenance {
			seenOn = true
		} else if seenOn {
			t.Errorf("state.json lost maintenance at t=%d (%s)", s.at, s.raw)
			break
		}
	}
	final := readState(t, b)
	if final["maintenance"] != true || final["epoch"] != float64(2) || final["role"] != "primary" {
		t.Errorf("state.json after the takeover: %v", final)
	}
	st, err := cliStatus(b)
	if err != nil || !st.Maintenance || st.Role != "primary" || st.Epoch != 2 {
		t.Errorf("status after the takeover: %+v (%v); want primary at epoch 2 in maintenance", st, err)
	}
}

// The new primary is fenced (a managed file at a higher epoch and another
// failover id) while its after_takeover hook runs. The hook's whole process
// group has ended before on_fenced starts, state.json ends fenced and never
// flips back to primary, not even when the hook would have finished.
func TestEngineFenceDuringAfterTakeover(t *testing.T) {
	c := newCluster(t)
	const hookSleep = 5 // seconds
	mainPID, bgPID, pgidFile := filepath.Join(c.dir, "after.pid"), filepath.Join(c.dir, "after-bg.pid"), filepath.Join(c.dir, "after.pgid")
	started, marker := filepath.Join(c.dir, "after.started"), filepath.Join(c.dir, "fenced.marker")
	// after_takeover: a background child in the hook's process group, then
	// the hook itself becomes a sleep (exec keeps its pid).
	after := filepath.Join(c.dir, "after.sh")
	mustOK(t, os.WriteFile(after, []byte(fmt.Sprintf(`date +%%s%%N > %s
cut -d' ' -f5 /proc/$$/stat > %s
sleep 20 >/dev/null 2>&1 &
echo $! > %s
echo $$ > %s
exec sleep %d
`, started, pgidFile, bgPID, mainPID, hookSleep)), 0o755))
	// on_fenced: one line with its time and, at that instant, the state of
	// the after_takeover processes (a /proc state letter, or gone).
	fenced := filepath.Join(c.dir, "fenced.sh")
	mustOK(t, os.WriteFile(fenced, []byte(fmt.Sprintf(`st() { s=; [ -n "$1" ] && s=$(cut -d' ' -f3 /proc/$1/stat 2>/dev/null); echo "${s:-gone}"; }
echo "on_fenced t_ns=$(date +%%s%%N) main=$(st "$(cat %s 2>/dev/null)") bg=$(st "$(cat %s 2>/dev/null)")" >> %s
`, mainPID, bgPID, marker)), 0o755))
	a := c.addServer("a", nil)
	c.extra = fmt.Sprintf("hooks: {after_takeover: %q, on_fenced: %q}\n", "sh "+after, "sh "+fenced)
	b := c.addServer("b", a)
	c.extra = ""
	files := c.writeAgents(1, a)
	killHookProcs(t, mainPID, bgPID, pgidFile)
	startPair(t, c, a, b)
	allAt(t, files, a, 1, 10*time.Second)
	ss := startStateSampler(t, b)

	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	c.waitRole(b, "primary", 20*time.Second)
	var pid, bg, pgid int
	eventually(t, 20*time.Second, "b's after_takeover hook running", func() bool {
		pid, bg, pgid = readPID(mainPID), readPID(bgPID), readPID(pgidFile)
		return pid > 0 && bg > 0 && pgid > 0 && procAlive(pid) && procAlive(bg)
	})
	if n := len(groupMembers(pgid)); n < 2 {
		t.Fatalf("after_takeover's process group %d has %d live processes, want the hook and its child", pgid, n)
	}
	hookStart := readNanos(t, started)
	if !procAlive(pid) {
		t.Fatalf("the after_takeover hook ended before the fence (it sleeps %d s)", hookSleep)
	}

	fenceAt := time.Now()
	fenceThroughFile(t, c, files[0], newUUID(), 3)
	c.waitRole(b, "fenced", 20*time.Second)
	eventually(t, 10*time.Second, "on_fenced ran", func() bool { return strings.Contains(readFile(marker), "on_fenced") })
	line := strings.TrimSpace(readFile(marker))
	t.Logf("fenced %s after the file was written; %s", time.Since(fenceAt).Round(time.Millisecond), line)
	for _, want := range []string{"main=", "bg="} {
		v := strings.Fields(line[strings.Index(line, want)+len(want):])[0]
		if v != "gone" && v != "Z" {
			t.Errorf("on_fenced ran while the after_takeover hook's %s was still running (/proc state %s): %s", strings.TrimSuffix(want, "="), v, line)
		}
	}
	if m := groupMembers(pgid); len(m) > 0 {
		t.Errorf("after_takeover's process group %d still has live processes %v after the fence", pgid, m)
	}

	// Negative check: for a couple of seconds after the fence, and until
	// well after the hook would have finished, b stays fenced in status and
	// state.json.
	until := time.Unix(0, hookStart).Add(hookSleep*time.Second + 1500*time.Millisecond)
	if u := time.Now().Add(2 * time.Second); u.After(until) {
		until = u
	}
	for time.Now().Before(until) {
		if st, err := getStatus(b.admin); err == nil && st.Role != "fenced" {
			t.Fatalf("b left fenced: %s at epoch %d", st.Role, st.Epoch)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ss.halt()
	ss.checkEpochAndJournal(t, 0)
	fencedSeen := false
	for _, s := range ss.all() {
		if s.Role == "fenced" {
			fencedSeen = true
		} else if fencedSeen {
			t.Errorf("state.json flipped back from fenced to %q at t=%d (%s)", s.Role, s.at, s.raw)
			break
		}
	}
	if !fencedSeen {
		t.Errorf("state.json never said fenced")
	}
	if s, _ := ss.last(); s.Role != "fenced" || s.Takeover != nil {
		t.Errorf("state.json at the end: %s", s.raw)
	}
	if n := strings.Count(readFile(marker), "on_fenced"); n != 1 {
		t.Errorf("on_fenced ran %d times:\n%s", n, readFile(marker))
	}
}

// fenceThroughFile makes path claim a higher token (failover id, epoch),
// the way a takeover elsewhere would: the file evidence that fences a
// primary. With the cluster's group key (DIR/keys/signing.key) it signs the
// claim as a server's rewrite does (failover_sig over failover_id, epoch,
// stomp_interface, stomp_port): an unsigned claim fences nobody. Every other
// line is kept; written atomically. The one place that knows how a test
// fences a server through a file.
func fenceThroughFile(t testing.TB, c *cluster, path, id string, epoch uint64) {
	t.Helper()
	b, err := os.ReadFile(path)
	mustOK(t, err)
	var out []string
	iface, port := "", 0
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(strings.SplitN(v, "#", 2)[0])
		switch k {
		case "failover_id", "failover_epoch", "failover_sig":
			continue
		case "stomp_interface":
			iface = strings.Trim(v, `"'`)
		case "stomp_port":
			port, _ = strconv.Atoi(v)
		}
		out = append(out, line)
	}
	out = append(out, "failover_id: "+id, "failover_epoch: "+strconv.FormatUint(epoch, 10))
	if keyPath := filepath.Join(c.dir, "keys", "signing.key"); readFile(keyPath) != "" {
		k, err := protocol.LoadPrivateKey(keyPath)
		mustOK(t, err)
		sig := protocol.NewGroupSigner(protocol.NewDestinations(""), protocol.Keys{Private: k}).TokenSig(id, epoch, iface, port)
		out = append(out, "failover_sig: "+sig)
	}
	tmp := path + ".fence.tmp"
	mustOK(t, os.WriteFile(tmp, []byte(strings.Join(out, "\n")+"\n"), 0o644))
	mustOK(t, os.Rename(tmp, path))
}

// cliStatus is `tandem status --json --config CFG` for s.
func cliStatus(s *server) (status, error) {
	var st status
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, tandemBin, "status", "--json", "--config", s.cfgPath)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return st, fmt.Errorf("tandem status: %v: %s", err, errb.String())
	}
	err := json.Unmarshal(out.Bytes(), &st)
	return st, err
}

// stateSample is one read of a server's state.json.
type stateSample struct {
	at          int64 // Unix ms
	raw         string
	Epoch       uint64          `json:"epoch"`
	Role        string          `json:"role"`
	Takeover    json.RawMessage `json:"takeover"`
	Maintenance bool            `json:"maintenance"`
}

// stateSampler reads a server's state.json every 10 ms.
type stateSampler struct {
	path    string
	mu      sync.Mutex
	reads   int
	samples []stateSample
	errs    []string
	stop    chan struct{}
	done    chan struct{}
}

func startStateSampler(t testing.TB, s *server) *stateSampler {
	ss := &stateSampler{path: filepath.Join(s.dir, "data", "state.json"), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ss.done)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			ss.sample()
			select {
			case <-ss.stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(ss.halt)
	return ss
}

func (ss *stateSampler) sample() {
	b, err := os.ReadFile(ss.path)
	now := time.Now().UnixMilli()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.reads++
	if err != nil {
		if len(ss.samples) > 0 { // it existed: written atomically, it never goes away
			ss.errs = append(ss.errs, fmt.Sprintf("state.json unreadable at t=%d: %v", now, err))
		}
		return
	}
	s := stateSample{at: now, raw: string(b)}
	if err := json.Unmarshal(b, &s); err != nil {
		ss.errs = append(ss.errs, fmt.Sprintf("state.json not JSON at t=%d: %v: %q", now, err, b))
		return
	}
	if string(s.Takeover) == "null" {
		s.Takeover = nil
	}
	if n := len(ss.samples); n > 0 && ss.samples[n-1].raw == s.raw {
		return // unchanged
	}
	ss.samples = append(ss.samples, s)
}

func (ss *stateSampler) halt() {
	select {
	case <-ss.stop:
	default:
		close(ss.stop)
	}
	<-ss.done
}

// waitReads waits until the sampler has read state.json n more times.
func (ss *stateSampler) waitReads(t testing.TB, n int) {
	t.Helper()
	ss.mu.Lock()
	base := ss.reads
	ss.mu.Unlock()
	eventually(t, 10*time.Second, fmt.Sprintf("%d more reads of state.json", n), func() bool {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return ss.reads >= base+n
	})
}

func (ss *stateSampler) last() (stateSample, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.samples) == 0 {
		return stateSample{}, false
	}
	return ss.samples[len(ss.samples)-1], true
}

func (ss *stateSampler) all() []stateSample {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return append([]stateSample(nil), ss.samples...)
}

// checkEpochAndJournal: the epoch on disk never goes down, and once it
// reached takeover (0: not checked) it stays there; a takeover journal, once written, is
// kept until the takeover completes (role primary) or a fence supersedes it.
func (ss *stateSampler) checkEpochAndJournal(t testing.TB, takeover uint64) {
	t.Helper()
	ss.mu.Lock()
	errs := ss.errs
	ss.mu.Unlock()
	for _, e := range errs {
		t.Error(e)
	}
	var prev *stateSample
	journaled := false
	for _, s := range ss.all() {
		s := s
		if prev != nil && s.Epoch < prev.Epoch {
			t.Errorf("state.json's epoch went down from %d to %d at t=%d:\n%s\n-> %s", prev.Epoch, s.Epoch, s.at, prev.raw, s.raw)
		}
		if takeover > 0 && prev != nil && prev.Epoch == takeover && s.Epoch != takeover {
			t.Errorf("state.json's epoch left %d for %d at t=%d: %s", takeover, s.Epoch, s.at, s.raw)
		}
		if s.Takeover != nil {
			journaled = true
		} else if journaled && s.Role != "primary" && s.Role != "fenced" {
			t.Errorf("state.json lost its takeover journal at t=%d (role %q): %s\nbefore: %s", s.at, s.Role, s.raw, prev.raw)
			journaled = false
		}
		prev = &s
	}
}

// killHookProcs kills, at cleanup, the hook processes whose pids the hooks
// wrote to pidFiles, and their process groups (a hook runs in its own), if
// they still run: a hook outlives a killed server.
func killHookProcs(t testing.TB, pidFiles ...string) {
	t.Cleanup(func() {
		for _, f := range pidFiles {
			pid := readPID(f)
			if pid <= 0 || !procAlive(pid) {
				continue
			}
			if pg := procPgrp(pid); pg > 1 && pg != syscall.Getpgrp() {
				_ = syscall.Kill(-pg, syscall.SIGKILL)
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

func readPID(path string) int {
	n, err := strconv.Atoi(strings.TrimSpace(readFile(path)))
	if err != nil {
		return 0
	}
	return n
}

func readNanos(t testing.TB, path string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(strings.TrimSpace(readFile(path)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// procState is the state letter of /proc/PID/stat ("" when there is no
// such process).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// procAlive: the process exists and is not a zombie.
func procAlive(pid int) bool {
	st := procState(pid)
	return st != "" && st != "Z" && st != "X"
}

// procPgrp is the process group of pid (0 when there is no such process).
func procPgrp(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // state ppid pgrp ...
	if len(f) < 3 {
		return 0
	}
	n, _ := strconv.Atoi(f[2])
	return n
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if procPgrp(pid) == pgid && procAlive(pid) {
			out = append(out, pid)
		}
	}
	return out
}
