package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// pairUp starts a primary a and a backup b (with n agent files on a) and
// waits until b hears a and a knows its backup.
func pairUp(t *testing.T, c *cluster, n int) (a, b *server, files []string) {
	t.Helper()
	a = c.addServer("a", nil)
	b = c.addServer("b", a)
	files = c.writeAgents(n, a)
	startPair(t, c, a, b)
	return a, b, files
}

// startPair starts a as primary, then b as its backup, and waits until each
// knows the other.
func startPair(t *testing.T, c *cluster, a, b *server) {
	t.Helper()
	c.start(a)
	c.waitRole(a, "primary", 20*time.Second)
	c.start(b)
	c.waitRole(b, "backup", 20*time.Second)
	eventually(t, 20*time.Second, "b hears a and a knows b", func() bool {
		sb, err1 := getStatus(b.admin)
		sa, err2 := getStatus(a.admin)
		return err1 == nil && err2 == nil && sb.Primary != nil && sb.Primary.Node == a.name && sa.BackupConfigured
	})
}

// allAt waits until every file has epoch and points at srv.
func allAt(t *testing.T, files []string, srv *server, epoch uint64, d time.Duration) {
	t.Helper()
	want := strconv.FormatUint(epoch, 10)
	eventually(t, d, fmt.Sprintf("all %d agent files at epoch %d on %s", len(files), epoch, srv.name), func() bool {
		for _, f := range files {
			port, ep, _, _ := fileFacts(t, f)
			if ep != want || port != strconv.Itoa(srv.brokerPort) {
				return false
			}
		}
		return true
	})
}

func readState(t *testing.T, s *server) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "data", "state.json"))
	if err != nil {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("state.json of %s is not JSON: %v", s.name, err)
	}
	return m
}

func TestKillPrimaryTakesOverThenOldPrimaryRefusesToRestart(t *testing.T) {
	c := newCluster(t)
	a, b, files := pairUp(t, c, 20)
	allAt(t, files, a, 1, 10*time.Second) // the fresh primary claimed them

	killed := time.Now()
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	c.waitRole(b, "primary", 10*time.Second)
	allAt(t, files, b, 2, 10*time.Second)
	took := time.Since(killed)
	t.Logf("kill -9 of the primary -> backup primary with %d files rewritten: %s (window 500ms)", len(files), took)
	// Window 500 ms + detection granularity + rewrite; generous for -race on 2 cores.
	if took > 5*time.Second {
		t.Errorf("takeover took %s", took)
	}
	for i, f := range files {
		checkAgentFileIntact(t, f, i)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "data", "primary_location.dormant")); err != nil {
		t.Error("primary_location was not made dormant")
	}
	st, _ := getStatus(b.admin)
	if st.Epoch != 2 || st.Agents.Managed != 20 || st.Agents.Failed != 0 {
		t.Errorf("new primary status: %+v", st)
	}

	// The old primary comes back without rejoin: it must refuse (exit 3).
	p := start(t, c.dir, "a-restart", "server", "--config", a.cfgPath)
	if code := p.wait(20 * time.Second); code != 3 {
		t.Fatalf("old primary restarted without rejoin: exit %d, want 3\n%s", code, p.logText())
	}

	// Rejoin makes it the backup of b.
	rj := start(t, c.dir, "a-rejoin", "rejoin", "--config", a.cfgPath, "--primary", b.addr())
	if code := rj.wait(20 * time.Second); code != 0 {
		t.Fatalf("rejoin: exit %d\n%s", code, rj.logText())
	}
	c.start(a)
	c.waitRole(a, "backup", 20*time.Second)
	eventually(t, 10*time.Second, "a watches b", func() bool {
		s, err := getStatus(a.admin)
		return err == nil && s.Primary != nil && s.Primary.Node == "b" && s.Primary.Epoch == 2
	})
}

func TestFrozenPrimaryIsFencedWhenItResumes(t *testing.T) {
	c := newCluster(t)
	a, b, files := pairUp(t, c, 5)
	a.p.signal(syscall.SIGSTOP)
	c.waitRole(b, "primary", 10*time.Second)
	allAt(t, files, b, 2, 10*time.Second)

	a.p.signal(syscall.SIGCONT)
	resumed := time.Now()
	st := c.waitRole(a, "fenced", 10*time.Second)
	t.Logf("old primary fenced %s after SIGCONT", time.Since(resumed))
	if st.Epoch != 1 {
		t.Errorf("fenced node epoch %d", st.Epoch)
	}
	if !strings.Contains(st.Runbook, "tandem rejoin") || !strings.Contains(st.Runbook, b.addr()) {
		t.Errorf("the fenced node's next step should name the new primary %s: %q", b.addr(), st.Runbook)
	}
	// It stays fenced, and the agents stay with b (I2: epochs never go down).
	time.Sleep(time.Second)
	if s, _ := getStatus(a.admin); s.Role != "fenced" {
		t.Fatalf("a left fenced: %+v", s)
	}
	allAt(t, files, b, 2, time.Second)
	for i, f := range files {
		checkAgentFileIntact(t, f, i)
	}
	// /healthz/primary says 503 on the fenced node, 200 on the new primary.
	for _, tc := range []struct {
		s    *server
		want int
	}{{a, 503}, {b, 200}} {
		resp, err := client.Get("http://" + tc.s.admin + "/healthz/primary")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s /healthz/primary = %d, want %d", tc.s.name, resp.StatusCode, tc.want)
		}
	}
}

func TestBackupKilledMidRewriteCompletesAfterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("5,000 files: skipped with -short")
	}
	c := newCluster(t)
	// This scenario is about crash recovery, not timing: a wider window keeps
	// a race-built pair on 2 cores from failing over while 5,000 files load.
	c.timing = "{period: 250ms, reply_period: 1s, fail_window: 2s}"
	const n = 5000
	a, b, files := pairUp(t, c, n)
	allAt(t, files, a, 1, 60*time.Second)

	a.p.signal(syscall.SIGKILL)
	// Kill the backup as soon as its journal says it is rewriting agents.
	var step string
	eventually(t, 20*time.Second, "b starts rewriting", func() bool {
		m := readState(t, b)
		if m == nil {
			return false
		}
		if j, ok := m["takeover"].(map[string]any); ok {
			step, _ = j["step"].(string)
			// Without a before_takeover hook the journal goes from
			// epoch-persisted (rewriting now) straight to agents-rewritten.
			return step == "epoch-persisted" || step == "before-hook-done" || step == "agents-rewritten"
		}
		return false
	})
	b.p.signal(syscall.SIGKILL)
	b.p.wait(5 * time.Second)
	done := 0
	for i, f := range files {
		checkAgentFileIntact(t, f, i)
		if _, ep, _, _ := fileFacts(t, f); ep == "2" {
			done++
		}
	}
	t.Logf("backup killed at journal step %q with %d of %d files rewritten", step, done, n)
	if step != "agents-rewritten" && done == n {
		t.Log("note: the rewrite finished just before the kill")
	}
	c.start(b)
	c.waitRole(b, "primary", 60*time.Second)
	allAt(t, files, b, 2, 60*time.Second)
	for i, f := range files {
		checkAgentFileIntact(t, f, i)
	}
	eventually(t, 10*time.Second, "journal closed at epoch 2", func() bool {
		m := readState(t, b)
		return m != nil && m["takeover"] == nil && m["epoch"].(float64) == 2 && m["role"] == "primary"
	})
}

func TestSwitchoverAndBack(t *testing.T) {
	c := newCluster(t)
	a, b, files := pairUp(t, c, 5)
	if code, body := post(t, a, "/switchover"); code != 202 {
		t.Fatalf("switchover: %d %s", code, body)
	}
	c.waitRole(b, "primary", 10*time.Second)
	allAt(t, files, b, 2, 10*time.Second)
	c.waitRole(a, "backup", 10*time.Second)
	if st := mustStatus(t, a); st.Agents.Rewritten != 0 || st.Agents.Failed != 0 {
		t.Errorf("a as backup still reports its term as primary: agents %+v", st.Agents)
	}
	eventually(t, 10*time.Second, "a watches b", func() bool {
		s, err := getStatus(a.admin)
		return err == nil && s.Primary != nil && s.Primary.Node == "b"
	})
	loc, err := os.ReadFile(filepath.Join(a.dir, "data", "primary_location"))
	if err != nil || string(loc) != b.addr()+"\n" {
		t.Fatalf("a's primary_location = %q, %v", loc, err)
	}
	eventually(t, 10*time.Second, "b knows its backup", func() bool {
		s, err := getStatus(b.admin)
		return err == nil && s.BackupConfigured
	})
	// And back.
	if code, body := post(t, b, "/switchover"); code != 202 {
		t.Fatalf("switchover back: %d %s", code, body)
	}
	c.waitRole(a, "primary", 10*time.Second)
	allAt(t, files, a, 3, 10*time.Second)
	c.waitRole(b, "backup", 10*time.Second)
	for i, f := range files {
		checkAgentFileIntact(t, f, i)
	}
}

func TestMaintenancePausesFailover(t *testing.T) {
	c := newCluster(t)
	a, b, files := pairUp(t, c, 3)
	if code, body := post(t, b, "/maintenance?state=on"); code != 200 {
		t.Fatalf("maintenance on: %d %s", code, body)
	}
	a.p.signal(syscall.SIGKILL)
	a.p.wait(5 * time.Second)
	time.Sleep(2 * time.Second) // four windows of silence
	if s, _ := getStatus(b.admin); s.Role != "backup" || !s.Maintenance {
		t.Fatalf("failover during maintenance: %+v", s)
	}
	allAt(t, files, a, 1, time.Second)
	if code, body := post(t, b, "/maintenance?state=off"); code != 200 {
		t.Fatalf("maintenance off: %d %s", code, body)
	}
	c.waitRole(b, "primary", 10*time.Second)
	allAt(t, files, b, 2, 10*time.Second)
}

func TestNoFailoverWhileBothCoresAreSaturated(t *testing.T) {
	if testing.Short() {
		t.Skip("60 s of load: skipped with -short")
	}
	c := newCluster(t)
	a, b, _ := pairUp(t, c, 3)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for i := 0; i < 2*runtime.NumCPU(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := 0
			for !stop.Load() {
				x++
			}
			_ = x
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()
	deadline := time.Now().Add(loadDuration())
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		sb, err := getStatus(b.admin)
		if err == nil && sb.Role != "backup" {
			t.Fatalf("false failover under load: b is %s", sb.Role)
		}
	}
	sa, _ := getStatus(a.admin)
	sb, _ := getStatus(b.admin)
	if sa.Role != "primary" || sb.Role != "backup" || sa.Epoch != 1 {
		t.Fatalf("after load: a=%s/%d b=%s", sa.Role, sa.Epoch, sb.Role)
	}
}

// loadDuration is 60 s, as the issue asks; TANDEM_LOAD_SECONDS overrides it
// for a quick local run.
func loadDuration() time.Duration {
	if v, err := strconv.Atoi(os.Getenv("TANDEM_LOAD_SECONDS")); err == nil && v > 0 {
		return time.Duration(v) * time.Second
	}
	return 60 * time.Second
}
