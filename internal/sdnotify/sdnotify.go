// Package sdnotify speaks systemd's notify protocol: READY=1 once the server
// serves, and WATCHDOG=1 pings from the role loops, so that systemd restarts
// a server whose loop hung (WatchdogSec= in the unit). Without NOTIFY_SOCKET
// (not under systemd) everything here is a no-op.
package sdnotify

import (
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// Notifier sends notifications to $NOTIFY_SOCKET.
type Notifier struct {
	socket   string
	interval time.Duration // watchdog ping interval; 0: watchdog off

	mu   sync.Mutex
	last time.Time
}

// FromEnv reads NOTIFY_SOCKET and WATCHDOG_USEC (pinging at half of it).
func FromEnv() *Notifier {
	n := &Notifier{socket: os.Getenv("NOTIFY_SOCKET")}
	if us, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64); err == nil && us > 0 {
		if pid := os.Getenv("WATCHDOG_PID"); pid == "" || pid == strconv.Itoa(os.Getpid()) {
			n.interval = time.Duration(us) * time.Microsecond / 2
		}
	}
	return n
}

// Enabled reports whether a notify socket is set.
func (n *Notifier) Enabled() bool { return n != nil && n.socket != "" }

// Send sends one state string (e.g. "READY=1", "STATUS=backup").
func (n *Notifier) Send(state string) error {
	if !n.Enabled() {
		return nil
	}
	addr := &net.UnixAddr{Name: n.socket, Net: "unixgram"}
	if addr.Name[0] == '@' {
		addr.Name = "\x00" + addr.Name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// Alive is called from a role loop on every tick; it sends WATCHDOG=1 at
// most once per half watchdog interval.
func (n *Notifier) Alive() {
	if !n.Enabled() || n.interval == 0 {
		return
	}
	n.mu.Lock()
	due := time.Since(n.last) >= n.interval
	if due {
		n.last = time.Now()
	}
	n.mu.Unlock()
	if due {
		_ = n.Send("WATCHDOG=1")
	}
}
