package integration

// External STOMP brokers (ActiveMQ, RabbitMQ) for the fault suite: a
// minimal copy of broker/brokers_test.go (test files cannot be imported
// across packages). TODO: move both into a shared internal/testbrokers.

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

// extBroker is a broker process on a fixed loopback port; start, stop and
// kill keep the port so links reconnect to the same address.
type extBroker struct {
	kind  string
	addr  string
	vhost string // RabbitMQ: "/"
	t     testing.TB

	mu      sync.Mutex
	cmd     *exec.Cmd
	wait    chan struct{}
	out     *lockedBuf
	vmPID   func() int
	launch  func() *exec.Cmd
	onClose []func()
}

type lockedBuf struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b = append(l.b, p...)
	if len(l.b) > 1<<20 {
		l.b = l.b[len(l.b)-(512<<10):]
	}
	l.mu.Unlock()
	return len(p), nil
}

func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return string(l.b) }

const (
	activemqJar = "/usr/share/activemq/bin/activemq.jar"
	rabbitBin   = "/usr/lib/rabbitmq/bin/rabbitmq-server"
)

// requireBroker skips when the broker is not installed, or fails under CI=true.
func requireBroker(t testing.TB, what, path, install string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not installed (%s missing): %s", what, path, install)
	}
	t.Skipf("%s not installed (%s missing): %s", what, path, install)
}

// newBroker starts a private broker of kind ("activemq" or "rabbitmq")
// that lives until t ends.
func newBroker(t testing.TB, kind string) *extBroker {
	t.Helper()
	var b *extBroker
	switch kind {
	case "activemq":
		b = newActiveMQ(t)
	case "rabbitmq":
		b = newRabbitMQ(t)
	default:
		t.Fatalf("unknown broker %q", kind)
	}
	t.Cleanup(b.close)
	b.start()
	return b
}

func (b *extBroker) url() string { return "stomp://" + b.addr }

// start launches the broker and waits until it answers CONNECT.
func (b *extBroker) start() {
	b.t.Helper()
	cmd := b.launch()
	b.out = &lockedBuf{}
	cmd.Stdout, cmd.Stderr = b.out, b.out
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
	for stompPing(b.addr) != nil {
		select {
		case <-wait:
			b.t.Fatalf("%s exited during start-up:\n%s", b.kind, tail([]byte(b.out.String()), 3000))
		default:
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s did not answer CONNECT on %s within 90s:\n%s", b.kind, b.addr, tail([]byte(b.out.String()), 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Logf("%s up on %s in %s", b.kind, b.addr, time.Since(t0).Round(time.Millisecond))
}

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

func (b *extBroker) vm(pid int) int {
	if b.vmPID != nil {
		if p := b.vmPID(); p > 0 {
			return p
		}
	}
	return pid
}

// stop: SIGTERM (SIGKILL to the group after 15 s). Safe when not running.
func (b *extBroker) stop() {
	b.mu.Lock()
	cmd, wait := b.cmd, b.wait
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	pid := cmd.Process.Pid
	vm := b.vm(pid)
	_ = syscall.Kill(vm, syscall.SIGCONT)
	_ = syscall.Kill(vm, syscall.SIGTERM)
	select {
	case <-wait:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(vm, syscall.SIGKILL)
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

const activemqXML = `<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="tandem-it"
          persistent="false" useJmx="false" advisorySupport="false" dataDirectory="${activemq.data}">
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:${stomp.port}?transport.hbGracePeriodMultiplier=1.5"/>
    </transportConnectors>
  </broker>
</beans>
`

const log4jProps = `log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d %-5p %c{1} - %m%n
`

func newActiveMQ(t testing.TB) *extBroker {
	requireBroker(t, "ActiveMQ", activemqJar, "apt-get install activemq")
	dir := t.TempDir()
	for _, d := range []string{"conf", "data", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustOK(t, os.WriteFile(filepath.Join(dir, "conf", "activemq.xml"), []byte(activemqXML), 0o644))
	mustOK(t, os.WriteFile(filepath.Join(dir, "conf", "log4j.properties"), []byte(log4jProps), 0o644))
	port := freePort(t)
	b := &extBroker{kind: "activemq", addr: fmt.Sprintf("127.0.0.1:%d", port), t: t}
	b.launch = func() *exec.Cmd {
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
		return cmd
	}
	return b
}

func newRabbitMQ(t testing.TB) *extBroker {
	requireBroker(t, "RabbitMQ", rabbitBin, "apt-get install rabbitmq-server")
	epmdPath, err := exec.LookPath("epmd")
	if err != nil {
		requireBroker(t, "epmd", "/usr/bin/epmd", "apt-get install erlang-base")
		epmdPath = "/usr/bin/epmd"
	}
	dir := t.TempDir()
	port, dist, epmdPort := freePort(t), freePort(t), freePort(t)
	conf := filepath.Join(dir, "rabbitmq.conf")
	mustOK(t, os.WriteFile(conf, []byte(fmt.Sprintf(`listeners.tcp = none
stomp.listeners.tcp.1 = 127.0.0.1:%d
loopback_users = none
log.console = true
log.console.level = warning
log.file = false
`, port)), 0o644))
	mustOK(t, os.MkdirAll(filepath.Join(dir, "home"), 0o700))
	epmd := exec.Command(epmdPath, "-address", "127.0.0.1", "-port", strconv.Itoa(epmdPort))
	epmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := epmd.Start(); err != nil {
		t.Fatal(err)
	}
	epmdDone := make(chan struct{})
	go func() { _ = epmd.Wait(); close(epmdDone) }()
	pidFile := filepath.Join(dir, "rabbit.pid")
	b := &extBroker{kind: "rabbitmq", addr: fmt.Sprintf("127.0.0.1:%d", port), vhost: "/", t: t}
	b.onClose = append(b.onClose, func() { _ = epmd.Process.Kill(); <-epmdDone })
	b.vmPID = func() int {
		data, err := os.ReadFile(pidFile)
		if err != nil {
			return 0
		}
		p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
		return p
	}
	b.launch = func() *exec.Cmd {
		_ = os.Remove(pidFile)
		cmd := exec.Command(rabbitBin)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(),
			"HOME="+filepath.Join(dir, "home"),
			"RABBITMQ_NODENAME=tandemit"+strconv.Itoa(port)+"@localhost",
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
		return cmd
	}
	return b
}

func mustOK(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
