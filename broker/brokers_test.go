package broker

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"
)

// extBroker is a STOMP broker process on a loopback port, private to one
// test binary: the embedded broker (a re-executed test binary), ActiveMQ or
// RabbitMQ. start, stop and kill keep the same port, so links can reconnect.
type extBroker struct {
	kind string
	addr string
	dir  string
	t    testing.TB
	// heart-beat settings links to it should use (see brokers.md)
	hb, hbErr time.Duration

	mu      sync.Mutex
	cmd     *exec.Cmd
	wait    chan struct{} // closed when cmd has exited
	out     *syncBuffer
	vmPID   func() int // the pid to signal (RabbitMQ: the Erlang VM, not the shell)
	launch  func() (*exec.Cmd, error)
	onClose []func()
}

// requireBinary skips (or in CI fails) when path is missing.
func requireBinary(t testing.TB, what, path, install string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not installed (%s missing): %s", what, path, install)
	}
	t.Skipf("%s not installed: %s (CI installs it)", what, install)
}

func (b *extBroker) url() string { return "stomp://" + b.addr }

func (b *extBroker) linkConfig() LinkConfig {
	return LinkConfig{URL: b.url(), HeartBeat: b.hb, HeartBeatError: b.hbErr,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond}
}

// start launches the broker and waits until it answers a STOMP CONNECT.
func (b *extBroker) start() {
	b.t.Helper()
	cmd, err := b.launch()
	if err != nil {
		b.t.Fatalf("%s: %v", b.kind, err)
	}
	b.out = &syncBuffer{}
	cmd.Stdout, cmd.Stderr = b.out, b.out
	// Own process group (stop kills leftovers by group); killed with us if
	// the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.t.Fatalf("%s: %v", b.kind, err)
	}
	wait := make(chan struct{})
	go func() { _ = cmd.Wait(); close(wait) }()
	b.mu.Lock()
	b.cmd, b.wait = cmd, wait
	b.mu.Unlock()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if stompPing(b.addr) == nil {
			break
		}
		select {
		case <-wait:
			b.t.Fatalf("%s exited during start-up:\n%s", b.kind, tail(b.out.String(), 3000))
		default:
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s did not answer CONNECT on %s within 90s:\n%s", b.kind, b.addr, tail(b.out.String(), 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Logf("%s up on %s in %s", b.kind, b.addr, time.Since(t0).Round(time.Millisecond))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// stompPing does one CONNECT/DISCONNECT.
func stompPing(addr string) error {
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

func (b *extBroker) pid() int {
	if b.vmPID != nil {
		if p := b.vmPID(); p > 0 {
			return p
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cmd.Process.Pid
}

func (b *extBroker) signal(sig syscall.Signal) {
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(b.pid(), sig)
}

// stop ends the broker: SIGCONT (in case it is frozen), SIGTERM, and after
// 15 s SIGKILL to its whole process group. Safe when not running.
func (b *extBroker) stop() {
	b.mu.Lock()
	cmd, wait := b.cmd, b.wait
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	pid := cmd.Process.Pid
	vm := pid
	if b.vmPID != nil {
		if p := b.vmPID(); p > 0 {
			vm = p
		}
	}
	_ = syscall.Kill(vm, syscall.SIGCONT)
	_ = syscall.Kill(vm, syscall.SIGTERM)
	select {
	case <-wait:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(vm, syscall.SIGKILL)
		<-wait
	}
	// Anything left in the group (Erlang helpers) goes too.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// kill SIGKILLs the broker process (the VM) and reaps it.
func (b *extBroker) kill() {
	b.mu.Lock()
	cmd, wait := b.cmd, b.wait
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	pid := cmd.Process.Pid
	vm := pid
	if b.vmPID != nil {
		if p := b.vmPID(); p > 0 {
			vm = p
		}
	}
	_ = syscall.Kill(vm, syscall.SIGCONT)
	_ = syscall.Kill(vm, syscall.SIGKILL)
	select {
	case <-wait:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-wait
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

func (b *extBroker) close() {
	b.stop()
	for _, f := range b.onClose {
		f()
	}
}

func freePort(t testing.TB) int {
	_, p, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(p)
	return n
}

// newEmbeddedBroker runs the embedded broker in a child process (so it can be
// frozen and killed like the others).
func newEmbeddedBroker(t testing.TB) *extBroker {
	b := &extBroker{kind: "embedded", addr: freeAddr(t), t: t, hb: 500 * time.Millisecond, hbErr: 500 * time.Millisecond}
	b.launch = func() (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childModeEnv+"=broker", childArgEnv+"="+b.addr)
		return cmd, nil
	}
	return b
}

const (
	activemqJar = "/usr/share/activemq/bin/activemq.jar"
	rabbitBin   = "/usr/lib/rabbitmq/bin/rabbitmq-server"
)

const activemqXML = `<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="tandem-test"
          persistent="false" useJmx="false" advisorySupport="false" dataDirectory="${activemq.data}">
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:${stomp.port}?transport.hbGracePeriodMultiplier=1.5"/>
    </transportConnectors>
  </broker>
</beans>
`

const log4jProps = `log4j.rootLogger=WARN, stdout
log4j.logger.org.apache.activemq.broker.BrokerService=INFO
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d %-5p %c{1} - %m%n
`

// newActiveMQ prepares a private ActiveMQ 5 instance (brokers.md).
func newActiveMQ(t testing.TB) *extBroker {
	requireBinary(t, "ActiveMQ", activemqJar, "apt-get install activemq")
	dir := t.TempDir()
	for _, d := range []string{"conf", "data", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.WriteFile(filepath.Join(dir, "conf", "activemq.xml"), []byte(activemqXML), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "conf", "log4j.properties"), []byte(log4jProps), 0o644))
	port := freePort(t)
	b := &extBroker{kind: "activemq", addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, t: t,
		// ActiveMQ's heart-beats come up to 2× the interval apart.
		hb: time.Second, hbErr: 2500 * time.Millisecond}
	b.launch = func() (*exec.Cmd, error) {
		args := []string{"-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
			"--add-reads=java.xml=java.logging",
			"--add-opens", "java.base/java.security=ALL-UNNAMED",
			"--add-opens", "java.base/java.net=ALL-UNNAMED",
			"--add-opens", "java.base/java.lang=ALL-UNNAMED",
			"--add-opens", "java.base/java.util=ALL-UNNAMED",
			"--add-opens", "java.naming/javax.naming.spi=ALL-UNNAMED",
			"--add-opens", "java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
			"--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
			"--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
			"--add-exports=java.base/sun.net.www.protocol.http=ALL-UNNAMED",
			"--add-exports=java.base/sun.net.www.protocol.https=ALL-UNNAMED",
			"--add-exports=java.base/sun.net.www.protocol.jar=ALL-UNNAMED",
			"--add-exports=jdk.xml.dom/org.w3c.dom.html=ALL-UNNAMED",
			"--add-exports=jdk.naming.rmi/com.sun.jndi.url.rmi=ALL-UNNAMED",
			"-Dactivemq.home=/usr/share/activemq",
			"-Dactivemq.base=" + dir,
			"-Dactivemq.conf=" + filepath.Join(dir, "conf"),
			"-Dactivemq.data=" + filepath.Join(dir, "data"),
			"-Dactivemq.classpath=" + filepath.Join(dir, "conf"),
			"-Djava.io.tmpdir=" + filepath.Join(dir, "tmp"),
			"-Dstomp.port=" + strconv.Itoa(port),
			"-jar", activemqJar, "start", "xbean:file:" + filepath.Join(dir, "conf", "activemq.xml"),
		}
		cmd := exec.Command("java", args...)
		cmd.Dir = dir
		return cmd, nil
	}
	return b
}

// newRabbitMQ prepares a private RabbitMQ node with rabbitmq_stomp and its
// own epmd (brokers.md).
func newRabbitMQ(t testing.TB) *extBroker {
	requireBinary(t, "RabbitMQ", rabbitBin, "apt-get install rabbitmq-server")
	epmdPath, err := exec.LookPath("epmd")
	if err != nil {
		requireBinary(t, "epmd", "/usr/bin/epmd", "apt-get install erlang-base")
	}
	dir := t.TempDir()
	port, dist, epmdPort := freePort(t), freePort(t), freePort(t)
	conf := filepath.Join(dir, "rabbitmq.conf")
	must(t, os.WriteFile(conf, []byte(fmt.Sprintf(`listeners.tcp = none
stomp.listeners.tcp.1 = 127.0.0.1:%d
loopback_users = none
log.console = true
log.console.level = warning
log.file = false
`, port)), 0o644))
	must(t, os.MkdirAll(filepath.Join(dir, "home"), 0o700))

	epmd := exec.Command(epmdPath, "-address", "127.0.0.1", "-port", strconv.Itoa(epmdPort))
	epmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := epmd.Start(); err != nil {
		t.Fatal(err)
	}
	epmdDone := make(chan struct{})
	go func() { _ = epmd.Wait(); close(epmdDone) }()

	pidFile := filepath.Join(dir, "rabbit.pid")
	b := &extBroker{kind: "rabbitmq", addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, t: t,
		hb: time.Second, hbErr: 2 * time.Second}
	b.onClose = append(b.onClose, func() {
		_ = epmd.Process.Kill()
		<-epmdDone
	})
	b.vmPID = func() int {
		data, err := os.ReadFile(pidFile)
		if err != nil {
			return 0
		}
		p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
		return p
	}
	b.launch = func() (*exec.Cmd, error) {
		_ = os.Remove(pidFile)
		cmd := exec.Command(rabbitBin)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(),
			"HOME="+filepath.Join(dir, "home"),
			"RABBITMQ_NODENAME=tandem"+strconv.Itoa(port)+"@localhost",
			"RABBITMQ_CONFIG_FILE="+conf,
			"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
			"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
			"RABBITMQ_ENABLED_PLUGINS=rabbitmq_stomp",
			"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
			"RABBITMQ_PID_FILE="+pidFile,
			"RABBITMQ_DIST_PORT="+strconv.Itoa(dist),
			"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
			"ERL_EPMD_PORT="+strconv.Itoa(epmdPort),
			"ERL_EPMD_ADDRESS=127.0.0.1",
		)
		return cmd, nil
	}
	return b
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Brokers are started once per test binary and shared by the contract tests
// and benchmarks; TestMain stops them.
var (
	sharedMu      sync.Mutex
	sharedBrokers = map[string]*extBroker{}
)

// sharedBroker returns the running broker of kind, starting it on first use.
// The broker outlives t; stopSharedBrokers ends it.
func sharedBroker(t testing.TB, kind string) *extBroker {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if b := sharedBrokers[kind]; b != nil {
		b.t = t
		return b
	}
	var b *extBroker
	pt := &persistentTB{TB: t}
	switch kind {
	case "embedded":
		b = newEmbeddedBroker(pt)
	case "activemq":
		b = newActiveMQ(pt)
	case "rabbitmq":
		b = newRabbitMQ(pt)
	default:
		t.Fatalf("unknown broker %q", kind)
	}
	b.start()
	sharedBrokers[kind] = b
	return b
}

func stopSharedBrokers() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	var wg sync.WaitGroup
	for k, b := range sharedBrokers {
		wg.Add(1)
		go func() { defer wg.Done(); b.close() }()
		delete(sharedBrokers, k)
	}
	wg.Wait()
	for _, d := range persistentDirs {
		_ = os.RemoveAll(d)
	}
	persistentDirs = nil
}

// persistentTB gives shared brokers a TempDir that outlives the test that
// started them (removed by stopSharedBrokers).
type persistentTB struct{ testing.TB }

var persistentDirs []string

func (p *persistentTB) TempDir() string {
	d, err := os.MkdirTemp("", "tandem-broker-test-")
	if err != nil {
		p.Fatal(err)
	}
	persistentDirs = append(persistentDirs, d)
	return d
}
