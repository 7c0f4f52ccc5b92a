package broker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
)

// dialFrom opens a TCP connection to addr from the loopback address local
// (any of 127.0.0.0/8 works on Linux), so a test can act as another host.
func dialFrom(t testing.TB, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// stompConnect sends CONNECT (login, passcode optional, no heart-beats) and
// returns the first frame the broker answers with, or the read error.
func stompConnect(nc net.Conn, login, passcode string) (*frame.Frame, *bufio.Reader, error) {
	hdr := ""
	if login != "" {
		hdr = "login:" + login + "\npasscode:" + passcode + "\n"
	}
	if _, err := fmt.Fprintf(nc, "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n%s\n\x00", hdr); err != nil {
		return nil, nil, err
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(nc)
	f, err := frame.NewReader(r).Read()
	_ = nc.SetReadDeadline(time.Time{})
	return f, r, err
}

// closedByBroker waits (bounded) until the broker closes nc.
func closedByBroker(t testing.TB, nc net.Conn, within time.Duration) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, nc)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: not closed by the broker within %s", nc.LocalAddr(), within)
	}
}

// TestServerIdleConnectionsLockout: an attacker holding idle connections
// once locked every new client out (4,094 idle connections, no idle
// timeout; the restarted backup could not reconnect). Now one source holds
// at most MaxConnsPerSource connections, another host still gets in, and
// idle ones are closed after IdleTimeout.
func TestServerIdleConnectionsLockout(t *testing.T) {
	s := startTestServer(t, ServerConfig{MaxConns: 64, MaxConnsPerSource: 16, HeartBeat: 100 * time.Millisecond, IdleTimeout: 500 * time.Millisecond})
	var idle []net.Conn
	refused := 0
	for i := 0; i < 64; i++ {
		nc := dialFrom(t, "127.0.0.1", s.Addr())
		if f, _, err := stompConnect(nc, "", ""); err != nil || f.Command != frame.CONNECTED {
			refused++
			continue
		}
		idle = append(idle, nc)
	}
	if len(idle) != 16 || refused != 48 {
		t.Fatalf("attacker holds %d connections (%d refused), want 16", len(idle), refused)
	}
	// The backup, from another address, connects at once.
	backup := dialFrom(t, "127.0.0.2", s.Addr())
	if f, _, err := stompConnect(backup, "", ""); err != nil || f.Command != frame.CONNECTED {
		t.Fatalf("backup locked out: %v %v", f, err)
	}
	// It keeps talking (heart-beats); the idle ones are closed.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				_, _ = backup.Write([]byte("\n"))
			}
		}
	}()
	start := time.Now()
	for _, nc := range idle {
		closedByBroker(t, nc, 5*time.Second)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("idle connections closed after %s, before IdleTimeout", d)
	}
	waitFor(t, 5*time.Second, "idle timeouts counted", func() bool { return s.Stats().IdleTimeouts == 16 })
	waitFor(t, 5*time.Second, "only the backup connected", func() bool { return s.Stats().Connections == 1 })
	if st := s.Stats(); st.RefusedConns != 48 {
		t.Fatalf("stats %+v", st)
	}
	// The source may connect again.
	again := dialFrom(t, "127.0.0.1", s.Addr())
	if f, _, err := stompConnect(again, "", ""); err != nil || f.Command != frame.CONNECTED {
		t.Fatalf("source still locked out after its idle connections closed: %v %v", f, err)
	}
}

// TestServerOwnLinkNotCrowdedOut: with a login set, an attacker on the same
// address as the server's own link (loopback), who cannot authenticate,
// only ever holds connections that have not completed CONNECT; a new one
// takes the oldest one's place, and the authenticated link is exempt from
// the per-source bound: it connects and stays connected however many
// connections the attacker opens.
func TestServerOwnLinkNotCrowdedOut(t *testing.T) {
	s := startTestServer(t, ServerConfig{Login: "tandem", Passcode: "s3cret", MaxConns: 40, MaxConnsPerSource: 16})
	flood := func(n int) {
		for i := 0; i < n; i++ {
			dialFrom(t, "127.0.0.1", s.Addr()) // never sends CONNECT
		}
	}
	flood(64)
	var downs atomic.Int32
	l := dialTest(t, LinkConfig{URL: s.Addr(), Login: "tandem", Passcode: "s3cret",
		OnState: func(st State) {
			if st.State == StateDisconnected {
				downs.Add(1)
			}
		}})
	sub, _ := l.Subscribe("/topic/tandem.heartbeat")
	waitSubscribed(t, s, "/topic/tandem.heartbeat", 1)
	flood(200)
	// Unauthenticated, the attacker's SENDs go nowhere; the link still
	// gets its own messages.
	if err := l.Publish(context.Background(), "/topic/tandem.heartbeat", nil, []byte("alive")); err != nil {
		t.Fatal(err)
	}
	if m := recvWithin(t, sub, 5*time.Second); string(m.Body) != "alive" {
		t.Fatalf("got %q", m.Body)
	}
	// Every attacker connection reached the broker; at most 16 of them
	// are still there.
	waitFor(t, 5*time.Second, "attacker connections accepted", func() bool {
		st := s.Stats()
		return st.TotalConnections >= 265 && st.EvictedConns >= 264-16 && st.Connections <= 17
	})
	st := s.Stats()
	if downs.Load() != 0 || !l.Connected() {
		t.Fatalf("own link disconnected %d times; stats %+v", downs.Load(), st)
	}
	if st.RefusedConns != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestServerMaxSubscriptions: one million subscriptions once took 945 MB;
// now a connection asking for more than MaxSubscriptions is disconnected.
func TestServerMaxSubscriptions(t *testing.T) {
	s := startTestServer(t, ServerConfig{MaxSubscriptions: 8})
	nc, r := rawConnect(t, s.Addr())
	var b strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "SUBSCRIBE\nid:%d\ndestination:/topic/s%d\n\n\x00", i, i)
	}
	go func() { _, _ = nc.Write([]byte(b.String())) }()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := frame.NewReader(r).Read()
	if err != nil || f.Command != frame.ERROR {
		t.Fatalf("want ERROR frame, got %v %v", f, err)
	}
	closedByBroker(t, nc, 5*time.Second)
	waitFor(t, 5*time.Second, "subscriptions gone", func() bool {
		s.topicsMu.RLock()
		defer s.topicsMu.RUnlock()
		return len(s.topics) == 0 && s.Stats().Connections == 0
	})
	if st := s.Stats(); st.TooManySubs != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Up to the bound is fine.
	nc2, _ := rawConnect(t, s.Addr())
	for i := 0; i < 8; i++ {
		fmt.Fprintf(nc2, "SUBSCRIBE\nid:%d\ndestination:/topic/ok\n\n\x00", i)
	}
	waitSubscribed(t, s, "/topic/ok", 8)
}

// TestServerLargeFramesKeepFastLink: publishers sending large frames faster
// than one socket carries them once got the primary's own heartbeat link,
// which reads as fast as it can, dropped as a slow client. Now the
// publishers are held back instead; the client that does not read at all is
// the one dropped.
func TestServerLargeFramesKeepFastLink(t *testing.T) {
	const dest = "/topic/tandem.heartbeat"
	// The default ratio of backlog to frame size (4), at a quarter of the
	// sizes.
	const maxFrame = DefaultMaxFrameSize / 4
	s := startTestServer(t, ServerConfig{MaxFrameSize: maxFrame, MaxPendingBytes: 4 * maxFrame})
	var downs atomic.Int32
	fast := dialTest(t, LinkConfig{URL: s.Addr(), BufferSize: 4,
		OnState: func(st State) {
			if st.State == StateDisconnected {
				downs.Add(1)
			}
		}})
	fs, _ := fast.Subscribe(dest)
	frozen, _ := rawConnect(t, s.Addr())
	_ = frozen.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprint(frozen, "SUBSCRIBE\nid:1\ndestination:"+dest+"\n\n\x00")
	waitSubscribed(t, s, dest, 2)

	body := strings.Repeat("x", maxFrame-200)
	big := fmt.Sprintf("SEND\ndestination:%s\ncontent-length:%d\n\n%s\x00", dest, len(body), body)
	var wg sync.WaitGroup
	for p := 0; p < 3; p++ {
		nc, _ := rawConnect(t, s.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			for i := 0; i < 16; i++ {
				if _, err := io.WriteString(nc, big); err != nil {
					t.Logf("publisher: %v", err)
					return
				}
			}
		}()
	}
	// The fast link keeps reading (its buffer drops the oldest).
	got := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range fs.C() {
			if string(m.Body) == "last" {
				return
			}
			got++
		}
	}()
	wg.Wait()
	pub := dialTest(t, LinkConfig{URL: s.Addr()})
	deadline := time.Now().Add(10 * time.Second)
	for {
		_ = pub.Publish(context.Background(), dest, nil, []byte("last"))
		select {
		case <-done:
		case <-time.After(200 * time.Millisecond):
			if time.Now().Before(deadline) {
				continue
			}
			t.Fatal("fast link did not get the last message")
		}
		break
	}
	st := s.Stats()
	t.Logf("fast link read %d large frames; stats %+v", got, st)
	if downs.Load() != 0 {
		t.Fatalf("fast link dropped %d times; stats %+v", downs.Load(), st)
	}
	// (Its socket still holds megabytes it will never read: the test
	// looks at the broker's side.)
	waitFor(t, 20*time.Second, "frozen client dropped", func() bool {
		st := s.Stats()
		return st.SlowClients == 1 && st.Connections == 5
	})
}

// TestServerTrustedCredentialGetsPastAFullSource: an open broker (agents
// connect without a login) whose per-source slots are all held by
// connected strangers still lets a server in that presents the trusted
// credential; a stranger past the bound is closed at CONNECT.
func TestServerTrustedCredentialGetsPastAFullSource(t *testing.T) {
	s := startTestServer(t, ServerConfig{TrustedLogin: "tandem-server", TrustedPasscode: "derived-from-the-group-key", MaxConnsPerSource: 4})
	for i := 0; i < 4; i++ {
		nc := dialFrom(t, "127.0.0.1", s.Addr())
		if f, _, err := stompConnect(nc, "", ""); err != nil || f.Command != "CONNECTED" {
			t.Fatalf("stranger %d: %v %v", i, f, err)
		}
	}
	// A fifth stranger: admitted on probation, closed at its CONNECT.
	nc := dialFrom(t, "127.0.0.1", s.Addr())
	if f, _, err := stompConnect(nc, "", ""); err == nil && f.Command == "CONNECTED" {
		t.Fatal("a stranger past MaxConnsPerSource was connected")
	}
	// The server's link gets in, and works.
	l := dialTest(t, LinkConfig{URL: s.Addr(), Login: "tandem-server", Passcode: "derived-from-the-group-key"})
	sub, err := l.Subscribe("/topic/tandem.heartbeat")
	if err != nil {
		t.Fatal(err)
	}
	waitSubscribed(t, s, "/topic/tandem.heartbeat", 1)
	if err := l.Publish(context.Background(), "/topic/tandem.heartbeat", nil, []byte("alive")); err != nil {
		t.Fatal(err)
	}
	if m := recvWithin(t, sub, 5*time.Second); string(m.Body) != "alive" {
		t.Fatalf("got %q", m.Body)
	}
	// Without a trusted credential configured, the fifth is refused at once
	// (as before).
	s2 := startTestServer(t, ServerConfig{MaxConnsPerSource: 1})
	nc2 := dialFrom(t, "127.0.0.1", s2.Addr())
	if f, _, err := stompConnect(nc2, "", ""); err != nil || f.Command != "CONNECTED" {
		t.Fatalf("first: %v %v", f, err)
	}
	closedByBroker(t, dialFrom(t, "127.0.0.1", s2.Addr()), 5*time.Second)
}
