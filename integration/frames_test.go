package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/broker"
	"github.com/tandem-ha/tandem/protocol"
)

// Bad input from the network: malformed, oversized, unsigned, badly signed
// and replayed frames at running servers. They keep running (status
// answers), drop and count what they get (GET /metrics), and nothing is
// fenced or taken over.

// metric reads one unlabelled counter or gauge from GET /metrics.
func metric(t testing.TB, admin, name string) float64 {
	t.Helper()
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("metrics of %s: %v", admin, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("metric %s: %q", name, sc.Text())
			}
			return v
		}
	}
	t.Fatalf("metric %s not exported by %s", name, admin)
	return 0
}

// rawFrames opens a TCP connection to addr, writes each chunk, and reads
// until the server closes or 500 ms pass. Errors are expected and ignored.
func rawFrames(t testing.TB, addr string, chunks ...[]byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	go func() {
		for _, ch := range chunks {
			if _, err := c.Write(ch); err != nil {
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

const connectFrame = "CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\n\n\x00"

func malformedFrames() map[string][][]byte {
	big := make([]byte, 3<<20) // 3 MiB: above the embedded broker's 1 MiB frame limit
	for i := range big {
		big[i] = 'x'
	}
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	return map[string][][]byte{
		"garbage command":       {[]byte("GARBAGE\n\n\x00")},
		"no CONNECT first":      {[]byte("SEND\ndestination:/topic/tandem.heartbeat\n\nhi\x00")},
		"bad content-length":    {[]byte(connectFrame), []byte("SEND\ndestination:/topic/tandem.heartbeat\ncontent-length:zz\n\n\x00")},
		"short content-length":  {[]byte(connectFrame), []byte("SEND\ndestination:/topic/tandem.heartbeat\ncontent-length:999\n\nabc\x00")},
		"header without colon":  {[]byte(connectFrame), []byte("SEND\ndestination\n\n\x00")},
		"bad escape":            {[]byte(connectFrame), []byte("SEND\ndestination:/topic/tandem.heart\\qbeat\n\n\x00")},
		"oversized body":        {[]byte(connectFrame), []byte("SEND\ndestination:/topic/tandem.heartbeat\n\n"), big, []byte{0}},
		"oversized header":      {[]byte(connectFrame), append(append([]byte("SEND\ndestination:/topic/tandem.heartbeat\nx:"), big...), []byte("\n\n\x00")...)},
		"binary junk":           {junk},
		"CONNECT, junk":         {[]byte(connectFrame), junk},
		"subscribe no id":       {[]byte(connectFrame), []byte("SUBSCRIBE\ndestination:/topic/tandem.heartbeat\nack:client\n\n\x00")},
		"ack unknown":           {[]byte(connectFrame), []byte("ACK\nid:42\nmessage-id:42\n\n\x00")},
		"unterminated (no NUL)": {[]byte(connectFrame), []byte("SEND\ndestination:/topic/tandem.heartbeat\n\nno terminator")},
	}
}

// publisher dials a plain STOMP link to addr (the embedded broker).
func publisher(t testing.TB, addr string) *broker.Link {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := broker.Dial(ctx, broker.LinkConfig{URL: "stomp://" + addr})
	mustOK(t, err)
	t.Cleanup(func() { l.Close() })
	mustOK(t, l.WaitConnected(ctx))
	return l
}

func publish(t testing.TB, l *broker.Link, dest string, h map[string]string, body []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.Publish(ctx, dest, h, body); err != nil {
		t.Fatalf("publish %s: %v", dest, err)
	}
}

// Malformed STOMP and malformed tandem messages at a running pair.
func TestBadInputMalformed(t *testing.T) {
	r := newRig(t, "embedded", nil, rigOpts{agents: 2})
	r.pairUp()
	r.startAgents()
	r.settled(r.a, 1, 20*time.Second)
	dest := protocol.NewDestinations("")

	for name, chunks := range malformedFrames() {
		rawFrames(t, r.a.addr(), chunks...)
		if _, err := getStatus(r.a.admin); err != nil {
			t.Fatalf("after %s: status: %v", name, err)
		}
	}
	// The broker still carries the pair: b hears a recently.
	eventually(t, 5*time.Second, "b still hears a after the malformed frames", func() bool {
		s, err := getStatus(r.b.admin)
		return err == nil && s.Primary != nil && s.Primary.LastHeartbeatAgeMS >= 0 && s.Primary.LastHeartbeatAgeMS < 400
	})

	// Well-formed STOMP, malformed tandem messages.
	// With the group key, a malformed message on a server destination is
	// unsigned and refused before it is decoded: count both ways out.
	refused := func(admin string) float64 {
		return metric(t, admin, "tandem_messages_dropped_total") + metric(t, admin, "tandem_signature_failures_total")
	}
	dropA0, dropB0 := refused(r.a.admin), refused(r.b.admin)
	idA := mustStatus(t, r.a).FailoverID
	long := strings.Repeat("n", 300)
	bad := []map[string]string{
		{},                          // nothing
		{"tandem-version": "0.1.0"}, // no failover-id
		{"tandem-version": "0.1.0", "failover-id": idA, "node": "x"},                                       // no epoch
		{"tandem-version": "0.1.0", "failover-id": idA, "node": "x", "epoch": "abc"},                       // bad epoch
		{"tandem-version": "0.1.0", "failover-id": idA, "node": "x", "epoch": "-1"},                        // negative
		{"tandem-version": "0.1.0", "failover-id": idA, "node": long, "epoch": "1"},                        // too long
		{"tandem-version": "0.1.0", "failover-id": idA, "node": "x", "epoch": "1", "seq": "0x10"},          // bad seq
		{"tandem-version": "0.1.0", "failover-id": idA, "node": "x", "epoch": "99999999999999999999999"},   // overflow
		{"tandem-version": "0.1.0", "failover-id": idA, "node": "x", "epoch": "1", "period-ms": "-5"},      // bad period
		{"tandem-version": "0.1.0", "failover-id": idA, "node": "x", "epoch": "1", "sent-ms": "yesterday"}, // bad stamp
	}
	pub := publisher(t, r.a.addr())
	for _, d := range []string{dest.Heartbeat, dest.Reply, dest.AgentStatus} {
		for _, h := range bad {
			publish(t, pub, d, h, []byte(`{"not":"a command"`))
		}
	}
	eventually(t, 10*time.Second, "malformed messages counted as dropped on a and b", func() bool {
		return refused(r.a.admin) > dropA0 && refused(r.b.admin) > dropB0
	})
	t.Logf("refused: a %v -> %v, b %v -> %v", dropA0, refused(r.a.admin), dropB0, refused(r.b.admin))

	holdsRole(t, r.b, "backup", 2*time.Second)
	if s := mustStatus(t, r.a); s.Role != "primary" || s.Epoch != 1 {
		t.Fatalf("a after bad input: %s@%d", s.Role, s.Epoch)
	}
	r.settled(r.a, 1, 5*time.Second)
	r.check()
}

// Unsigned and badly signed messages at a server with a shared secret,
// including forged higher-epoch heartbeats and agent statuses that would
// fence it if they were believed.
func TestBadInputUnsignedAndBadlySigned(t *testing.T) {
	r := newRig(t, "embedded", nil, rigOpts{agents: 1, signed: true})
	a := r.addServer("a", nil)
	r.a = a
	r.files = r.c.writeAgents(1, &server{brokerPort: r.ag["a"].port()})
	r.samp = startEpochSampler(t, r.files)
	r.c.start(a)
	r.c.waitRole(a, "primary", 20*time.Second)
	dest := protocol.NewDestinations("")
	pub := publisher(t, a.addr())
	sig0 := metric(t, a.admin, "tandem_signature_failures_total")
	wrong := protocol.NewSigner([]byte("not-the-secret"))
	forged := newUUID()
	n := 0
	for i := 0; i < 10; i++ {
		for _, d := range []string{dest.Heartbeat, dest.Reply, dest.AgentStatus} {
			env := protocol.Envelope{FailoverID: forged, Epoch: 99, Node: "mallory", Seq: uint64(i + 1),
				Advertise: "127.0.0.1:1", PeriodMS: 100, Role: "primary", SentMS: time.Now().UnixMilli()}
			h := env.Headers()
			publish(t, pub, d, h, nil) // unsigned
			h = env.Headers()
			wrong.Sign(d, h, nil) // signed with the wrong key
			publish(t, pub, d, h, nil)
			h = env.Headers()
			h[protocol.HSignature] = "zz-not-hex"
			publish(t, pub, d, h, nil)
			n += 3
		}
	}
	eventually(t, 10*time.Second, fmt.Sprintf("%d signature failures counted", n), func() bool {
		return metric(t, a.admin, "tandem_signature_failures_total")-sig0 >= float64(n)
	})
	holdsRole(t, a, "primary", time.Second)
	if s := mustStatus(t, a); s.Epoch != 1 {
		t.Fatalf("a moved to epoch %d", s.Epoch)
	}
	if _, ep, _ := textFacts(readFile(r.files[0])); ep != "1" {
		t.Fatalf("forged epoch reached the agent file:\n%s", readFile(r.files[0]))
	}
	r.check()
}

// Replayed heartbeats: a real heartbeat captured from the channel and
// republished after its sender died must not keep the dead primary alive.
// The heartbeat channel is a standalone `tandem broker`, so it outlives the
// primary (with the primary's embedded broker the channel dies with it).
func TestBadInputReplayedHeartbeats(t *testing.T) {
	dir := t.TempDir()
	hbAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, dir, "hb-broker", "broker", "--listen", hbAddr)
	eventually(t, 10*time.Second, "standalone broker up", func() bool { return stompPing(hbAddr) == nil })
	r := newRig(t, "tandem-broker", &extBroker{kind: "tandem-broker", addr: hbAddr}, rigOpts{})
	r.pairUp()
	r.startAgents()
	r.settled(r.a, 1, 20*time.Second)
	dest := protocol.NewDestinations("")
	tap := publisher(t, hbAddr)
	sub, err := tap.Subscribe(dest.Heartbeat)
	mustOK(t, err)
	var captured []broker.Message
	for len(captured) < 5 {
		select {
		case m := <-sub.C():
			captured = append(captured, m)
		case <-time.After(5 * time.Second):
			t.Fatal("no heartbeat captured")
		}
	}
	sub.Close()

	r.a.p.signal(syscall.SIGKILL)
	killed := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			m := captured[i%len(captured)]
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = tap.Publish(ctx, dest.Heartbeat, m.Headers, m.Body)
			cancel()
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	r.c.waitRole(r.b, "primary", 15*time.Second)
	took := time.Since(killed)
	close(stop)
	wg.Wait()
	t.Logf("b took over %s after the kill while a's captured heartbeats were replayed every 50ms (heartbeat %s)", took, r.opts.timing)
	r.settled(r.b, 2, 20*time.Second)
	r.check()
}
