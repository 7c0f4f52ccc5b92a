package sdnotify

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func listen(t *testing.T) (*net.UnixConn, string) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, path
}

func read(t *testing.T, c *net.UnixConn) string {
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 256)
	n, err := c.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:n])
}

func TestReadyAndWatchdog(t *testing.T) {
	c, path := listen(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "2000000")
	t.Setenv("WATCHDOG_PID", "")
	n := FromEnv()
	if !n.Enabled() || n.interval != time.Second {
		t.Fatalf("enabled=%v interval=%v", n.Enabled(), n.interval)
	}
	if err := n.Send("READY=1"); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c); got != "READY=1" {
		t.Fatal(got)
	}
	n.Alive()
	if got := read(t, c); got != "WATCHDOG=1" {
		t.Fatal(got)
	}
	// Rate limited: a second call right away sends nothing.
	n.Alive()
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(make([]byte, 16)); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("second ping not rate limited: %v", err)
	}
}

func TestNoSocketIsANoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := FromEnv()
	if n.Enabled() || n.Send("READY=1") != nil {
		t.Fatal("must be a no-op without NOTIFY_SOCKET")
	}
	n.Alive()
}
