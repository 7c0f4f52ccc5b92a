package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/config"
	"github.com/tandem-ha/tandem/internal/clock"
)

func TestEffective(t *testing.T) {
	cases := []struct {
		mode              string
		prio, down, total int
		want              int
	}{
		{config.HealthAll, 100, 0, 0, 100},
		{config.HealthAll, 100, 0, 3, 100},
		{config.HealthAll, 100, 1, 3, 0},
		{config.HealthAll, 100, 3, 3, 0},
		{config.HealthAll, 0, 0, 3, 0},
		{"", 100, 1, 2, 0}, // unknown: all
		{"bogus", 100, 0, 2, 100},
		{config.HealthOne, 100, 0, 0, 100},
		{config.HealthOne, 100, 0, 3, 100},
		{config.HealthOne, 100, 2, 3, 100},
		{config.HealthOne, 100, 3, 3, 0},
		{config.HealthOne, 7, 1, 1, 0},
		{config.HealthProgressive, 100, 0, 0, 100},
		{config.HealthProgressive, 100, 0, 3, 100},
		{config.HealthProgressive, 100, 1, 3, 66}, // 66.67 rounded down
		{config.HealthProgressive, 100, 2, 3, 33},
		{config.HealthProgressive, 100, 3, 3, 0},
		{config.HealthProgressive, 255, 1, 2, 127},
		{config.HealthProgressive, 1, 1, 2, 0},
		{config.HealthProgressive, 90, 1, 4, 67},
		{config.HealthProgressive, 100, 5, 3, 0},    // clamped
		{config.HealthProgressive, 100, -1, 3, 100}, // clamped
	}
	for _, tc := range cases {
		if got := Effective(tc.prio, tc.mode, tc.down, tc.total); got != tc.want {
			t.Errorf("Effective(%d, %q, %d, %d) = %d, want %d", tc.prio, tc.mode, tc.down, tc.total, got, tc.want)
		}
	}
}

// rig runs a Checker on a fake clock with a fake probe whose verdict per
// check the test sets. Every wait is bounded by guard.
type rig struct {
	t        *testing.T
	clk      *clock.Fake
	c        *Checker
	mu       sync.Mutex
	ok       map[string]bool
	out      map[string]string
	calls    map[string]int
	recorded chan string
	changes  atomic.Int32
	changed  chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}
}

const guard = 10 * time.Second

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func check(name string, interval time.Duration, fall, rise int) config.Check {
	return config.Check{Name: name, Command: "true", Interval: interval, Timeout: interval, Fall: fall, Rise: rise}
}

func newRig(t *testing.T, checks []config.Check, prio int, mode string) *rig {
	t.Helper()
	r := &rig{t: t, clk: clock.NewFake(t0), ok: map[string]bool{}, out: map[string]string{}, calls: map[string]int{},
		recorded: make(chan string, 100), changed: make(chan struct{}, 100), done: make(chan struct{})}
	for _, k := range checks {
		r.ok[k.Name] = true
	}
	r.c = New(checks, prio, mode, Options{
		Clock: r.clk,
		Probe: func(ctx context.Context, k config.Check) (string, error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.calls[k.Name]++
			if r.ok[k.Name] {
				return r.out[k.Name], nil
			}
			return r.out[k.Name], errors.New("probe failed")
		},
		OnChange: func() { r.changes.Add(1); r.changed <- struct{}{} },
	})
	r.c.afterProbe = func(name string) { r.recorded <- name }
	return r
}

// start runs the Checker and waits for every check's first probe (made at
// once), after which every ticker exists.
func (r *rig) start() {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { defer close(r.done); r.c.Run(ctx) }()
	r.t.Cleanup(r.stop)
	names := make([]string, 0, len(r.c.checks))
	for _, k := range r.c.checks {
		names = append(names, k.Name)
	}
	r.wait(names...)
}

func (r *rig) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(guard):
		r.t.Fatal("Run did not return after its context ended")
	}
}

// wait waits until each named check recorded one probe (and no other did).
func (r *rig) wait(names ...string) {
	r.t.Helper()
	want := map[string]int{}
	for _, n := range names {
		want[n]++
	}
	for n := len(names); n > 0; n-- {
		select {
		case got := <-r.recorded:
			if want[got] == 0 {
				r.t.Fatalf("check %s probed, want only %v", got, names)
			}
			want[got]--
		case <-time.After(guard):
			r.t.Fatalf("no probe recorded, still waiting for %v", want)
		}
	}
	select {
	case got := <-r.recorded:
		r.t.Fatalf("check %s probed too, want only %v", got, names)
	default:
	}
}

// tick advances the clock by d and waits for the named checks' probes.
func (r *rig) tick(d time.Duration, names ...string) {
	r.t.Helper()
	r.clk.Advance(d)
	r.wait(names...)
}

func (r *rig) set(name string, ok bool, out string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ok[name], r.out[name] = ok, out
}

func (r *rig) status(name string) CheckStatus {
	r.t.Helper()
	for _, s := range r.c.Status() {
		if s.Name == name {
			return s
		}
	}
	r.t.Fatalf("no status for %s in %+v", name, r.c.Status())
	return CheckStatus{}
}

func (r *rig) expect(name string, up bool, failures, successes, changes, effective int) {
	r.t.Helper()
	s := r.status(name)
	if s.Up != up || s.Failures != failures || s.Successes != successes {
		r.t.Fatalf("%s: up %v failures %d successes %d, want %v %d %d", name, s.Up, s.Failures, s.Successes, up, failures, successes)
	}
	if n := int(r.changes.Load()); n != changes {
		r.t.Fatalf("OnChange called %d times, want %d", n, changes)
	}
	if e := r.c.Effective(); e != effective {
		r.t.Fatalf("effective %d, want %d", e, effective)
	}
}

func TestFallAndRise(t *testing.T) {
	r := newRig(t, []config.Check{check("web", 5*time.Second, 3, 2)}, 100, config.HealthAll)
	if s := r.c.Status(); len(s) != 1 || !s[0].Up || !s[0].Since.Equal(t0) || s[0].Failures != 0 {
		t.Fatalf("before Run: %+v (a check starts up)", s)
	}
	if r.c.Effective() != 100 || r.c.Priority() != 100 || r.c.Mode() != config.HealthAll {
		t.Fatal("before Run")
	}
	r.set("web", false, "connection refused\nmore")
	r.start() // first probe at once: 1 failure
	r.expect("web", true, 1, 0, 0, 100)
	if s := r.status("web"); s.Output != "probe failed: connection refused" {
		t.Fatalf("output %q", s.Output)
	}
	r.tick(5*time.Second, "web")
	r.expect("web", true, 2, 0, 0, 100)
	// A success in between starts the count again.
	r.set("web", true, "fine")
	r.tick(5*time.Second, "web")
	r.expect("web", true, 0, 1, 0, 100)
	r.set("web", false, "")
	r.tick(5*time.Second, "web")
	r.tick(5*time.Second, "web")
	r.expect("web", true, 2, 0, 0, 100)
	r.tick(5*time.Second, "web")
	r.expect("web", false, 3, 0, 1, 0)
	downAt := r.clk.Now()
	if s := r.status("web"); !s.Since.Equal(downAt) || s.Output != "probe failed" {
		t.Fatalf("down: %+v", s)
	}
	r.tick(5*time.Second, "web")
	r.expect("web", false, 4, 0, 1, 0) // no change, no OnChange
	r.set("web", true, "ok")
	r.tick(5*time.Second, "web")
	r.expect("web", false, 0, 1, 1, 0)
	r.set("web", false, "")
	r.tick(5*time.Second, "web")
	r.set("web", true, "ok")
	r.tick(5*time.Second, "web")
	r.expect("web", false, 0, 1, 1, 0) // a failure restarts the rise count
	r.tick(5*time.Second, "web")
	r.expect("web", true, 0, 2, 2, 100)
	if s := r.status("web"); !s.Since.Equal(r.clk.Now()) || s.Output != "ok" {
		t.Fatalf("up: %+v", s)
	}
	// Less than an interval: no probe.
	r.clk.Advance(4 * time.Second)
	r.tick(time.Second, "web")
	r.mu.Lock()
	calls := r.calls["web"]
	r.mu.Unlock()
	if calls != 12 {
		t.Fatalf("%d probes, want 12", calls)
	}
}

func TestIntervalsPerCheck(t *testing.T) {
	r := newRig(t, []config.Check{check("a", time.Second, 1, 1), check("b", 2*time.Second, 1, 1)}, 100, config.HealthAll)
	r.start()
	r.tick(time.Second, "a")
	r.tick(time.Second, "a", "b")
	r.tick(time.Second, "a")
	r.set("b", false, "")
	r.tick(time.Second, "a", "b")
	r.expect("b", false, 1, 0, 1, 0)
	r.expect("a", true, 0, 5, 1, 0)
}

func TestModes(t *testing.T) {
	three := func() []config.Check {
		return []config.Check{check("a", time.Second, 1, 1), check("b", time.Second, 1, 1), check("c", time.Second, 1, 1)}
	}
	for _, tc := range []struct {
		mode string
		want []int // effective with 0, 1, 2, 3 checks down
	}{
		{config.HealthAll, []int{90, 0, 0, 0}},
		{config.HealthOne, []int{90, 90, 90, 0}},
		{config.HealthProgressive, []int{90, 60, 30, 0}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			r := newRig(t, three(), 90, tc.mode)
			r.start()
			if e := r.c.Effective(); e != tc.want[0] {
				t.Fatalf("all up: %d", e)
			}
			changes := 0
			for i, name := range []string{"a", "b", "c"} {
				r.set(name, false, "")
				r.tick(time.Second, "a", "b", "c")
				changes++ // a check went down
				r.expect(name, false, 1, 0, changes, tc.want[i+1])
			}
			for i, name := range []string{"c", "b", "a"} {
				r.set(name, true, "")
				r.tick(time.Second, "a", "b", "c")
				changes++
				r.expect(name, true, 0, 1, changes, tc.want[2-i])
			}
		})
	}
}

func TestNoChecks(t *testing.T) {
	r := newRig(t, nil, 42, config.HealthAll)
	r.start()
	if r.c.Effective() != 42 || len(r.c.Status()) != 0 {
		t.Fatal(r.c.Effective(), r.c.Status())
	}
}

func (r *rig) waitChange() {
	r.t.Helper()
	select {
	case <-r.changed:
	case <-time.After(guard):
		r.t.Fatal("OnChange was not called")
	}
}

func TestSetService(t *testing.T) {
	r := newRig(t, []config.Check{check("a", time.Second, 1, 1)}, 100, config.HealthProgressive)
	r.start()
	if n := len(r.c.Status()); n != 1 {
		t.Fatalf("the service check is listed before SetService: %+v", r.c.Status())
	}
	r.clk.Advance(time.Second)
	r.wait("a")
	r.c.SetService(false, "started")
	if s := r.status("service"); !s.Up || s.Successes != 1 || s.Output != "started" || !s.Since.Equal(t0) {
		t.Fatalf("service %+v", s)
	}
	if r.c.Effective() != 100 {
		t.Fatal(r.c.Effective())
	}
	r.c.SetService(true, "exit status 1: unit opscenterd not found\nmore")
	r.waitChange() // from Run's goroutine
	if s := r.status("service"); s.Up || s.Failures != 1 || s.Successes != 0 || s.Output != "exit status 1: unit opscenterd not found" || !s.Since.Equal(r.clk.Now()) {
		t.Fatalf("service %+v", s)
	}
	if e := r.c.Effective(); e != 50 { // progressive: 1 down of 2
		t.Fatalf("effective %d, want 50", e)
	}
	r.set("a", false, "")
	r.tick(time.Second, "a")
	r.waitChange()
	if e := r.c.Effective(); e != 0 {
		t.Fatalf("effective %d, want 0", e)
	}
	r.c.SetService(false, "")
	r.waitChange()
	if e := r.c.Effective(); e != 0 { // a is still down, the only one counted
		t.Fatalf("effective %d, want 0", e)
	}
	r.set("a", true, "")
	r.tick(time.Second, "a")
	r.waitChange()
	if e := r.c.Effective(); e != 100 {
		t.Fatalf("effective %d, want 100", e)
	}
	if n := r.changes.Load(); n != 4 {
		t.Fatalf("OnChange %d times, want 4", n)
	}
	st := r.c.Status()
	if len(st) != 2 || st[1].Name != "service" || !st[1].Up {
		t.Fatalf("%+v", st)
	}
	b, err := json.Marshal(st[1])
	if err != nil || !strings.Contains(string(b), `"name":"service","up":true,"since":`) || !strings.Contains(string(b), `"failures":0,"successes":1`) {
		t.Fatalf("%s %v", b, err)
	}
}

func TestSetServiceModeAll(t *testing.T) {
	c := New([]config.Check{check("a", time.Second, 1, 1)}, 100, config.HealthAll, Options{Clock: clock.NewFake(t0)})
	c.SetService(true, "boom")
	if c.Effective() != 0 {
		t.Fatal(c.Effective())
	}
	c.SetService(false, "")
	if c.Effective() != 100 {
		t.Fatal(c.Effective())
	}
	// With no checks at all, a failed start still counts.
	c = New(nil, 100, config.HealthOne, Options{Clock: clock.NewFake(t0)})
	c.SetService(true, "boom")
	if c.Effective() != 0 {
		t.Fatal(c.Effective())
	}
}

// A slow probe never overlaps the next run of its check; Run waits for it.
func TestSlowProbeDoesNotOverlap(t *testing.T) {
	clk := clock.NewFake(t0)
	var running, most atomic.Int32
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	c := New([]config.Check{check("slow", time.Second, 3, 1)}, 100, config.HealthAll, Options{
		Clock: clk,
		Probe: func(ctx context.Context, k config.Check) (string, error) {
			n := running.Add(1)
			defer running.Add(-1)
			if n > most.Load() {
				most.Store(n)
			}
			entered <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
			return "", nil
		},
	})
	recorded := make(chan string, 10)
	c.afterProbe = func(n string) { recorded <- n }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	<-entered
	for i := 0; i < 5; i++ {
		clk.Advance(time.Second) // ticks while the probe runs: one is kept
	}
	release <- struct{}{} // the first probe ends; the kept tick starts the next at once
	<-recorded
	select {
	case <-entered:
	case <-time.After(guard):
		t.Fatal("the kept tick did not start a probe")
	}
	if m := most.Load(); m != 1 {
		t.Fatalf("%d probes of one check ran at once", m)
	}
	cancel() // the probe in flight ends with ctx; Run waits for it
	select {
	case <-done:
	case <-time.After(guard):
		t.Fatal("Run did not return")
	}
	if running.Load() != 0 {
		t.Fatal("Run returned with a probe running")
	}
	select {
	case n := <-recorded:
		t.Fatalf("a probe cut short by the end of Run was recorded (%s)", n)
	default:
	}
	if s := c.Status()[0]; s.Successes != 1 || s.Failures != 0 {
		t.Fatalf("%+v", s)
	}
}

func TestBound(t *testing.T) {
	if got := bound("\n\n  first  \nsecond"); got != "first" {
		t.Fatalf("%q", got)
	}
	long := strings.Repeat("é", MaxOutput) // 2 bytes each
	if got := bound(long); len(got) > MaxOutput || !strings.HasPrefix(long, got) || len(got) < MaxOutput-1 {
		t.Fatalf("%d bytes", len(got))
	}
}

// The real prober.

func probe(t *testing.T, command string, timeout time.Duration) (string, error, time.Duration) {
	t.Helper()
	start := time.Now()
	out, err := Probe(context.Background(), config.Check{Name: "x", Command: command, Interval: 10 * time.Second, Timeout: timeout, Fall: 1, Rise: 1})
	return out, err, time.Since(start)
}

func TestProbeShell(t *testing.T) {
	out, err, _ := probe(t, "echo hello; echo second", time.Second*5)
	if err != nil || out != "hello" {
		t.Fatalf("%q %v", out, err)
	}
	out, err, _ = probe(t, "echo oops >&2; exit 3", time.Second*5)
	var ee interface{ ExitCode() int }
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || out != "oops" {
		t.Fatalf("%q %v", out, err)
	}
	out, err, _ = probe(t, "head -c 100000 /dev/zero | tr '\\0' x", time.Second*5)
	if err != nil || len(out) != MaxOutput {
		t.Fatalf("%d bytes %v", len(out), err)
	}
}

func TestProbeShellTimeoutKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	out, err, took := probe(t, "echo started; sleep 30 & echo $! > "+pidFile+"; wait", 300*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || out != "started" {
		t.Fatalf("%q %v", out, err)
	}
	if took > 5*time.Second {
		t.Fatalf("took %s", took)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// The background sleep was in the group: it is gone (or a zombie
	// waiting for init) within a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			break
		}
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the background sleep %d outlived the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProbeShellCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	start := time.Now()
	_, err := Probe(ctx, config.Check{Command: "sleep 30", Timeout: 10 * time.Second})
	if !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("%v after %s", err, time.Since(start))
	}
}

func TestProbeHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprintln(w, "fine")
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		default:
			http.Error(w, "nope", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	hostport := strings.TrimPrefix(srv.URL, "http://")
	for _, cmd := range []string{srv.URL + "/ok", "http:" + srv.URL + "/ok", "http:" + hostport + "/ok"} {
		out, err, _ := probe(t, cmd, 2*time.Second)
		if err != nil || out != "200 OK" {
			t.Fatalf("%s: %q %v", cmd, out, err)
		}
	}
	out, err, _ := probe(t, srv.URL+"/bad", 2*time.Second)
	if err == nil || out != "503 Service Unavailable" || !strings.Contains(err.Error(), "want 2xx") {
		t.Fatalf("%q %v", out, err)
	}
	_, err, took := probe(t, srv.URL+"/slow", 200*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || took > 3*time.Second {
		t.Fatalf("%v after %s", err, took)
	}
	// Refused, and a password in the URL is not shown.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	_, err, _ = probe(t, "http://user:secretpw@"+addr+"/", 2*time.Second)
	if err == nil || strings.Contains(err.Error(), "secretpw") {
		t.Fatalf("%v", err)
	}
}

func TestProbeTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	out, err, _ := probe(t, "tcp:"+addr, 2*time.Second)
	if err != nil || !strings.Contains(out, addr) {
		t.Fatalf("%q %v", out, err)
	}
	l.Close()
	if _, err, _ := probe(t, "tcp:"+addr, 2*time.Second); err == nil || !strings.Contains(err.Error(), "connect "+addr) {
		t.Fatalf("closed port: %v", err)
	}
}

// The Checker with the real prober and the real clock, end to end.
func TestCheckerRealProber(t *testing.T) {
	changed := make(chan struct{}, 10)
	c := New([]config.Check{{Name: "f", Command: "exit 1", Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, Fall: 2, Rise: 1}},
		100, config.HealthAll, Options{OnChange: func() { changed <- struct{}{} }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	select {
	case <-changed:
	case <-time.After(guard):
		t.Fatal("the failing check did not go down")
	}
	cancel()
	<-done
	if s := c.Status()[0]; s.Up || c.Effective() != 0 || s.Output == "" || s.Failures < 2 {
		t.Fatalf("%+v %d", s, c.Effective())
	}
}
