// Package testports hands out loopback TCP ports to tests that start real
// processes (tandem servers, ActiveMQ, RabbitMQ) which must be told their
// port before they bind it.
//
// The usual trick, listening on port 0 and closing the listener, returns a
// port from the kernel's ephemeral range. Between the close and the child's
// bind, any outgoing connection on the machine (a STOMP client, a JVM, a
// test in a parallel package) may be given that same port, and the child
// fails with "address already in use". Ports from this package come from
// outside the ephemeral range, so no outgoing connection is ever given one,
// and each is reserved across processes by a lock file held until the test
// process exits, so two test packages running at once never share one.
package testports

import (
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// TB is the part of testing.TB this package uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// The search range. Ports of well-known brokers and their defaults are
// skipped so a system-wide ActiveMQ or RabbitMQ never collides with a test.
const (
	lowest  = 10000
	highest = 65000
)

var reserved = map[int]bool{
	4369: true, 5672: true, 15672: true, 25672: true, // RabbitMQ, epmd
	61613: true, 61614: true, 61616: true, 8161: true, // ActiveMQ
	61620: true, 61621: true, // OpsCenter agents
}

var (
	mu    sync.Mutex
	next  int
	locks []*os.File // held for the life of the process
	lo    = lowest
	hi    = highest
	ephLo int
	ephHi int
)

func init() {
	ephLo, ephHi = ephemeralRange()
}

// ephemeralRange reads the kernel's range for outgoing ports, falling back
// to Linux's default.
func ephemeralRange() (int, int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 {
			a, err1 := strconv.Atoi(f[0])
			z, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && a <= z {
				return a, z
			}
		}
	}
	return 32768, 60999
}

// The fixed ports of demo/run.sh and demo/runbook_check.sh, which run while
// other test packages do.
const demoLo, demoHi = 27600, 27799

// usable reports whether p may be handed out at all.
func usable(p int) bool {
	return p >= lo && p <= hi && !(p >= ephLo && p <= ephHi) && !(p >= demoLo && p <= demoHi) && !reserved[p]
}

// Port returns a loopback port that is outside the ephemeral range, free
// now, and reserved for this test process until it exits.
func Port(t TB) int {
	t.Helper()
	p, err := take()
	if err != nil {
		t.Fatalf("testports: %v", err)
	}
	return p
}

// Addr is Port as "127.0.0.1:PORT".
func Addr(t TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(Port(t)))
}

func take() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	dir := filepath.Join(os.TempDir(), "tandem-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, err
	}
	span := hi - lo + 1
	if next == 0 {
		// Start each process at a random place so parallel packages rarely
		// even contend for the same lock files.
		next = lo + rand.Intn(span)
	}
	for tries := 0; tries < span; tries++ {
		p := next
		next++
		if next > hi {
			next = lo
		}
		if !usable(p) {
			continue
		}
		f, ok := lockPort(dir, p)
		if !ok {
			continue
		}
		if !bindable(p) {
			f.Close()
			continue
		}
		locks = append(locks, f)
		return p, nil
	}
	return 0, fmt.Errorf("no free loopback port in %d-%d outside the ephemeral range %d-%d", lo, hi, ephLo, ephHi)
}

// lockPort takes the cross-process reservation for p. The lock is released
// by the kernel when the process exits, however it exits.
func lockPort(dir string, p int) (*os.File, bool) {
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, false
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, false
	}
	return f, true
}

// bindable reports whether nothing listens on 127.0.0.1:p right now.
func bindable(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}
