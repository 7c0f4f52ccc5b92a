// Package testbrokers runs real STOMP brokers for tests: a private
// ActiveMQ 5 or RabbitMQ 3 (with rabbitmq_stomp) instance, or any broker
// process the test builds itself, such as the embedded broker in a
// re-executed test binary. It has one job: start, stop, freeze and kill
// such a broker and report its address.
//
// Every broker listens on 127.0.0.1 at a port from internal/testports
// (never one from listening on :0, which CI once lost to "address already
// in use") and keeps that port across Stop, Kill and Start, so clients
// reconnect to the same address. It runs in its own process group, dies
// with the test binary, and is ended by PID.
//
// A broker that is not installed skips the test with a message naming what
// is missing; with CI=true in the environment it fails the test instead.
package testbrokers

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"

	"github.com/tandem-ha/tandem/internal/testports"
)

// The kinds New knows.
const (
	ActiveMQ = "activemq"
	RabbitMQ = "rabbitmq"
)

// startTimeout bounds Start: from launch to the first answered CONNECT.
const startTimeout = 90 * time.Second

// Broker is one broker process (restartable) on a fixed loopback address.
type Broker struct {
	kind, addr, vhost string
	dir               string           // private instance directory, removed by Close
	launch            func() *exec.Cmd // a fresh command for each Start
	vmPID             func() int       // the pid to signal if not the launched one (RabbitMQ: the Erlang VM)
	onClose           []func()

	mu   sync.Mutex
	cmd  *exec.Cmd     // nil when not running
	wait chan struct{} // closed when cmd has exited
}

// Start starts a private broker of kind (ActiveMQ or RabbitMQ) that is
// closed when t ends.
func Start(t testing.TB, kind string) *Broker {
	t.Helper()
	b := New(t, kind)
	t.Cleanup(b.Close)
	b.Start(t)
	return b
}

// New prepares a private broker of kind (ActiveMQ or RabbitMQ) without
// starting it. The caller must Close it.
func New(t testing.TB, kind string) *Broker {
	t.Helper()
	switch kind {
	case ActiveMQ:
		return newActiveMQ(t)
	case RabbitMQ:
		return newRabbitMQ(t)
	}
	t.Fatalf("testbrokers: unknown broker %q", kind)
	return nil
}

// NewProcess prepares a broker that is the process launch returns for the
// broker's address (e.g. the embedded broker in a re-executed test binary).
// The process must serve STOMP there until SIGTERM.
func NewProcess(t testing.TB, kind string, launch func(addr string) *exec.Cmd) *Broker {
	t.Helper()
	b := &Broker{kind: kind, addr: testports.Addr(t)}
	b.launch = func() *exec.Cmd { return launch(b.addr) }
	return b
}

// Kind is the kind given to New or NewProcess.
func (b *Broker) Kind() string { return b.kind }

// Addr is the broker's "127.0.0.1:PORT".
func (b *Broker) Addr() string { return b.addr }

// VHost is the CONNECT host header the broker needs ("/" for RabbitMQ,
// which refuses the dial address go-stomp sends), or "".
func (b *Broker) VHost() string { return b.vhost }

// Start launches the broker and waits until it answers a STOMP CONNECT, at
// most 90 s; failures are fatal to t. It also brings a stopped or killed
// broker back on the same address.
func (b *Broker) Start(t testing.TB) {
	t.Helper()
	b.mu.Lock()
	running := b.cmd != nil
	b.mu.Unlock()
	if running {
		t.Fatalf("%s on %s: Start while running", b.kind, b.addr)
	}
	cmd := b.launch()
	out := &ring{}
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group (ending it takes leftovers too); killed with us if
	// the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Wait returns even if an orphaned helper still holds the output pipe.
	cmd.WaitDelay = 5 * time.Second
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", b.kind, err)
	}
	wait := make(chan struct{})
	go func() { _ = cmd.Wait(); close(wait) }()
	b.mu.Lock()
	b.cmd, b.wait = cmd, wait
	b.mu.Unlock()
	deadline := time.Now().Add(startTimeout)
	for Ping(b.addr) != nil {
		select {
		case <-wait:
			t.Fatalf("%s exited during start-up:\n%s", b.kind, out.tail(3000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer CONNECT on %s within %s:\n%s", b.kind, b.addr, startTimeout, out.tail(3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%s up on %s in %s", b.kind, b.addr, time.Since(t0).Round(time.Millisecond))
}

// Stop ends the broker cleanly: SIGCONT (in case it is frozen), SIGTERM,
// and SIGKILL after 15 s. No-op when not running.
func (b *Broker) Stop() { b.end(syscall.SIGTERM, 15*time.Second) }

// Kill SIGKILLs the broker (RabbitMQ: the Erlang VM, not its wrapper shell)
// and reaps it. No-op when not running.
func (b *Broker) Kill() { b.end(syscall.SIGKILL, 10*time.Second) }

// Signal sends sig to the broker process (the Erlang VM for RabbitMQ):
// SIGSTOP freezes it, SIGCONT thaws it. No-op when not running.
func (b *Broker) Signal(sig syscall.Signal) {
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	if cmd != nil {
		_ = syscall.Kill(b.target(cmd), sig)
	}
}

// Close stops the broker and its helpers (RabbitMQ's epmd) and removes its
// directory. The Broker cannot be started again.
func (b *Broker) Close() {
	b.Stop()
	for _, f := range b.onClose {
		f()
	}
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
}

// target is the pid to signal: the VM's if known, else the launched one.
func (b *Broker) target(cmd *exec.Cmd) int {
	if b.vmPID != nil {
		if p := b.vmPID(); p > 0 {
			return p
		}
	}
	return cmd.Process.Pid
}

// end sends sig, waits up to grace, then SIGKILLs; whatever is left in the
// process group (Erlang helpers) is killed in any case.
func (b *Broker) end(sig syscall.Signal, grace time.Duration) {
	b.mu.Lock()
	cmd, wait := b.cmd, b.wait
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	group, vm := -cmd.Process.Pid, b.target(cmd)
	_ = syscall.Kill(vm, syscall.SIGCONT)
	_ = syscall.Kill(vm, sig)
	select {
	case <-wait:
	case <-time.After(grace):
		_ = syscall.Kill(group, syscall.SIGKILL)
		_ = syscall.Kill(vm, syscall.SIGKILL)
		<-wait
	}
	_ = syscall.Kill(group, syscall.SIGKILL)
}

// Ping does one STOMP CONNECT/DISCONNECT to addr (host "/", no
// heart-beats), each step bounded by a timeout.
func Ping(addr string) error {
	nc, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := stomp.ConnectWithContext(ctx, nc, stomp.ConnOpt.Host("/"), stomp.ConnOpt.HeartBeat(0, 0))
	if err != nil {
		nc.Close()
		return err
	}
	_ = c.MustDisconnect()
	return nil
}

// require skips t when path is missing, or fails it under CI=true.
func require(t testing.TB, what, path, install string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not installed (%s missing): %s", what, path, install)
	}
	t.Skipf("%s not installed (%s missing): %s (CI installs it)", what, path, install)
}

// ring keeps the last 512 KiB to 1 MiB of a process's output.
type ring struct {
	mu sync.Mutex
	b  []byte
}

func (r *ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.b = append(r.b, p...)
	if len(r.b) > 1<<20 {
		r.b = r.b[len(r.b)-(512<<10):]
	}
	return len(p), nil
}

// tail returns the last n bytes written.
func (r *ring) tail(n int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.b) > n {
		return "..." + string(r.b[len(r.b)-n:])
	}
	return string(r.b)
}

// instanceDir makes a private directory holding files (name relative to it
// → content) and the empty directories dirs. Close removes it.
func instanceDir(t testing.TB, files map[string]string, dirs ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tandem-testbroker-")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if err == nil {
			err = os.MkdirAll(filepath.Join(dir, d), 0o700)
		}
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err == nil {
			err = os.MkdirAll(filepath.Dir(p), 0o700)
		}
		if err == nil {
			err = os.WriteFile(p, []byte(content), 0o600)
		}
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatal(err)
	}
	return dir
}
