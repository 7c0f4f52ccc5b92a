package broker

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/internal/testports"
)

// Child modes: the test binary re-executes itself to get a process it can
// SIGSTOP and SIGKILL.
const (
	childModeEnv = "TANDEM_BROKER_TEST_CHILD"
	childArgEnv  = "TANDEM_BROKER_TEST_ARG"
)

func TestMain(m *testing.M) {
	switch os.Getenv(childModeEnv) {
	case "":
		code := m.Run()
		stopSharedBrokers()
		os.Exit(code)
	case "broker":
		os.Exit(childBroker(os.Getenv(childArgEnv)))
	case "subscriber":
		os.Exit(childSubscriber(os.Getenv(childArgEnv)))
	default:
		fmt.Fprintln(os.Stderr, "unknown child mode")
		os.Exit(2)
	}
}

// childBroker runs an embedded broker until SIGTERM, printing its address.
func childBroker(listen string) int {
	log := logrus.New()
	log.SetOutput(os.Stderr)
	s, err := StartServer(ServerConfig{Listen: listen, Log: log, HeartBeat: 100 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("LISTEN %s\n", s.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	s.Close()
	return 0
}

// childSubscriber subscribes to arg="ADDR DEST" without heart-beats, with a
// small receive buffer, prints READY and reads until killed.
func childSubscriber(arg string) int {
	addr, dest, _ := strings.Cut(arg, " ")
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = nc.(*net.TCPConn).SetReadBuffer(16 << 10)
	c, err := stomp.Connect(nc, stomp.ConnOpt.HeartBeat(0, 0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sub, err := c.Subscribe(dest, stomp.AckAuto)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("READY")
	for range sub.C {
	}
	return 0
}

// child is a re-executed test binary.
type child struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuffer
}

func startChild(t testing.TB, mode, arg string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childModeEnv+"="+mode, childArgEnv+"="+arg)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 16), stderr: &syncBuffer{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(c.kill)
	return c
}

// line waits for the child's next stdout line.
func (c *child) line(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatalf("child exited: %s", c.stderr)
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("no output from child within %s", timeout)
	}
	return ""
}

func (c *child) signal(sig syscall.Signal) { _ = c.cmd.Process.Signal(sig) }

// kill resumes (if stopped) and kills the child and reaps it. Safe twice.
func (c *child) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGCONT)
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}

// syncBuffer is a strings.Builder safe for the exec copier and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// testLog is a logger writing to t.Log, shown only on failure.
func testLog(t testing.TB) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(tWriter{t})
	l.SetLevel(logrus.DebugLevel)
	return l
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startTestServer starts an embedded broker on a loopback port, closed in
// cleanup.
func startTestServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Log == nil {
		cfg.Log = testLog(t)
	}
	s, err := StartServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dialTest(t testing.TB, cfg LinkConfig) *Link {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = testLog(t)
	}
	l, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := l.WaitConnected(ctx); err != nil {
		t.Fatalf("link to %s: %v", cfg.URL, err)
	}
	return l
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recvWithin waits for the next message on s.
func recvWithin(t testing.TB, s Subscription, timeout time.Duration) Message {
	t.Helper()
	select {
	case m, ok := <-s.C():
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(timeout):
		t.Fatalf("no message within %s", timeout)
	}
	return Message{}
}

// goroutinesSettle waits until the goroutine count is at most base+allow.
func goroutinesSettle(t testing.TB, base, allow int, timeout time.Duration, ignore ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		n := 0
		for _, g := range strings.Split(string(buf), "\n\n") {
			skip := false
			for _, s := range ignore {
				skip = skip || strings.Contains(g, s)
			}
			if !skip && strings.HasPrefix(g, "goroutine ") {
				n++
			}
		}
		if n <= base+allow {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d, want at most %d+%d\n%s", n, base, allow, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeAddr returns a loopback address whose port is reserved for this test
// process and outside the kernel's ephemeral range (see internal/testports).
func freeAddr(t testing.TB) string {
	t.Helper()
	return testports.Addr(t)
}
