package testports

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestPortsAreDistinctUsableAndBindable(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 50; i++ {
		p := Port(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if p >= ephLo && p <= ephHi {
			t.Fatalf("port %d is inside the ephemeral range %d-%d", p, ephLo, ephHi)
		}
		if reserved[p] || (p >= demoLo && p <= demoHi) {
			t.Fatalf("port %d is a well-known broker port", p)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d handed out but not bindable: %v", p, err)
		}
		l.Close()
	}
}

func TestSkipsAPortSomeoneListensOn(t *testing.T) {
	// Narrow the range to two ports, occupy the first, and expect the second.
	mu.Lock()
	oldLo, oldHi, oldNext := lo, hi, next
	mu.Unlock()
	defer func() { mu.Lock(); lo, hi, next = oldLo, oldHi, oldNext; mu.Unlock() }()

	a := Port(t)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(a+1)))
	if err != nil {
		t.Skipf("cannot occupy %d for the test: %v", a+1, err)
	}
	defer l.Close()
	mu.Lock()
	lo, hi, next = a, a+2, a
	mu.Unlock()
	p, err := take()
	// a is already ours (locked), a+1 is listened on: only a+2 may come back.
	if err == nil && p != a+2 {
		t.Fatalf("got %d, want %d (or an error if %d is unusable)", p, a+2, a+2)
	}
}

// TestReservationHoldsAcrossProcesses runs a child test process that takes
// a port and prints it, then checks that this process cannot lock it while
// the child is alive, which is what keeps parallel test packages apart.
func TestReservationHoldsAcrossProcesses(t *testing.T) {
	if os.Getenv("TESTPORTS_CHILD") == "1" {
		p := Port(t)
		os.Stdout.WriteString("PORT " + strconv.Itoa(p) + "\n")
		// Wait for the parent to close our stdin.
		buf := make([]byte, 1)
		os.Stdin.Read(buf)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReservationHoldsAcrossProcesses$")
	cmd.Env = append(os.Environ(), "TESTPORTS_CHILD=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	buf := make([]byte, 256)
	var got string
	for !strings.Contains(got, "\n") {
		n, err := out.Read(buf)
		if err != nil {
			t.Fatalf("child: %v (output %q)", err, got)
		}
		got += string(buf[:n])
	}
	f := strings.Fields(got)
	if len(f) < 2 || f[0] != "PORT" {
		t.Fatalf("child printed %q", got)
	}
	p, _ := strconv.Atoi(f[1])
	dir := os.TempDir() + "/tandem-test-ports"
	if lf, ok := lockPort(dir, p); ok {
		lf.Close()
		t.Fatalf("port %d reserved by the child could be locked by the parent", p)
	}
}
