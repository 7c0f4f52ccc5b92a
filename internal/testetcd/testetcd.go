// Package testetcd runs a real etcd cluster for tests: three members (or
// any number) of Debian's etcd-server on loopback, each in a temporary data
// directory at ports from internal/testports, each in its own process
// group, ended by PID when the test ends. Members can be killed, stopped
// (SIGSTOP), resumed and restarted on the same ports and data.
//
// Without the etcd binary the test is skipped with the install hint; with
// CI=true in the environment it fails instead.
package testetcd

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testports"
)

// startTimeout bounds the cluster's start: every member answers on its
// client port and the cluster reports healthy.
const startTimeout = 60 * time.Second

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	name    string
	members []*Member
}

// Member is one etcd process.
type Member struct {
	Name               string
	ClientURL, PeerURL string
	dir                string
	args               []string
	log                string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Binary finds etcd, or says why not (and how to install it).
func Binary() (string, error) {
	for _, p := range []string{os.Getenv("ETCD_BIN"), "/usr/bin/etcd", "/usr/local/bin/etcd"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("etcd is not installed (apt-get install etcd-server, or set ETCD_BIN)")
}

// Start runs an n-member cluster until t ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v: required when CI=true", err)
		}
		t.Skip(err.Error())
	}
	c := &Cluster{t: t, bin: bin, name: fmt.Sprintf("tandem-%d", os.Getpid())}
	base := t.TempDir()
	var initial []string
	for i := 0; i < n; i++ {
		m := &Member{Name: fmt.Sprintf("e%d", i), ClientURL: "http://" + testports.Addr(t), PeerURL: "http://" + testports.Addr(t),
			dir: filepath.Join(base, fmt.Sprintf("e%d", i))}
		m.log = m.dir + ".log"
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.args = []string{"--name", m.Name, "--data-dir", m.dir,
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", c.name,
			// Fast elections on loopback: heartbeats every 50 ms, a leader
			// lost after 500 ms.
			"--heartbeat-interval", "50", "--election-timeout", "500"}
	}
	t.Cleanup(c.Close)
	for _, m := range c.members {
		if err := c.start(m); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitHealthy(startTimeout)
	return c
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.ClientURL)
	}
	return out
}

// Members are the cluster's members.
func (c *Cluster) Members() []*Member { return c.members }

func (c *Cluster) start(m *Member) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(m.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+os.Getenv("ETCD_UNSUPPORTED_ARCH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd member %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	m.cmd, m.done = cmd, done
	return nil
}

// Kill ends member i with SIGKILL and waits for it.
func (c *Cluster) Kill(i int) { c.members[i].signalWait(syscall.SIGKILL) }

// Freeze stops member i (SIGSTOP); Thaw resumes it.
func (c *Cluster) Freeze(i int) { c.members[i].signal(syscall.SIGSTOP) }

// Thaw resumes a frozen member.
func (c *Cluster) Thaw(i int) { c.members[i].signal(syscall.SIGCONT) }

// Restart starts a killed member again (same ports, same data).
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if err := c.start(c.members[i]); err != nil {
		c.t.Fatal(err)
	}
}

func (m *Member) signal(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		_ = syscall.Kill(-m.cmd.Process.Pid, sig)
	}
}

func (m *Member) signalWait(sig syscall.Signal) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// WaitHealthy waits until every running member answers /health with
// health true (bounded by d).
func (c *Cluster) WaitHealthy(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		bad := ""
		for _, m := range c.members {
			m.mu.Lock()
			running := m.cmd != nil
			m.mu.Unlock()
			if running && !healthy(m.ClientURL) {
				bad = m.Name
				break
			}
		}
		if bad == "" {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(c.memberByName(bad).log)
			c.t.Fatalf("etcd member %s not healthy after %s; its log ends:\n%s", bad, d, tail(string(log), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) memberByName(name string) *Member {
	for _, m := range c.members {
		if m.Name == name {
			return m
		}
	}
	return c.members[0]
}

func healthy(url string) bool {
	host := strings.TrimPrefix(url, "http://")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(conn, "GET /health HTTP/1.0\r\nHost: %s\r\n\r\n", host); err != nil {
		return false
	}
	buf := make([]byte, 4096)
	n, _ := conn.Read(buf)
	return strings.Contains(string(buf[:n]), `"health":"true"`)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Close kills every member.
func (c *Cluster) Close() {
	for i := range c.members {
		c.Kill(i)
	}
}
