package testbrokers

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tandem-ha/tandem/internal/testports"
)

const rabbitBin = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// newRabbitMQ prepares a private RabbitMQ node with rabbitmq_stomp and
// starts its own epmd (Erlang's would outlive the broker); Close stops it.
// The launched process is a shell; the VM's pid comes from the pid file.
func newRabbitMQ(t testing.TB) *Broker {
	t.Helper()
	require(t, "RabbitMQ", rabbitBin, "apt-get install rabbitmq-server")
	epmdPath, err := exec.LookPath("epmd")
	if err != nil {
		require(t, "epmd", "/usr/bin/epmd", "apt-get install erlang-base")
		epmdPath = "/usr/bin/epmd"
	}
	port, dist, epmdPort := testports.Port(t), testports.Port(t), testports.Port(t)
	dir := instanceDir(t, map[string]string{"rabbitmq.conf": fmt.Sprintf(`listeners.tcp = none
stomp.listeners.tcp.1 = 127.0.0.1:%d
loopback_users = none
log.console = true
log.console.level = warning
log.file = false
`, port)}, "home")
	epmd := exec.Command(epmdPath, "-address", "127.0.0.1", "-port", strconv.Itoa(epmdPort))
	epmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := epmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		t.Fatal(err)
	}
	epmdDone := make(chan struct{})
	go func() { _ = epmd.Wait(); close(epmdDone) }()

	pidFile := filepath.Join(dir, "rabbit.pid")
	b := &Broker{kind: RabbitMQ, addr: "127.0.0.1:" + strconv.Itoa(port), vhost: "/", dir: dir}
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
		cmd := exec.Command(rabbitBin) // not /usr/sbin's, which switches user
		cmd.Dir = dir
		cmd.Env = append(os.Environ(),
			"HOME="+filepath.Join(dir, "home"),
			"RABBITMQ_NODENAME=tandem"+strconv.Itoa(port)+"@localhost",
			"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
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
