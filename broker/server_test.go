package broker

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
)

func TestFrameGuard(t *testing.T) {
	cases := []struct {
		name  string
		max   int
		input string
		chunk int // feed in chunks of this size (0: all at once)
		ok    bool
		want  int // frames completed
	}{
		{"small frame", 100, "SEND\ndestination:/a\n\nhello\x00", 0, true, 1},
		{"heart-beats free", 30, "\n\r\n\n\nSEND\ndestination:/a\n\nhi\x00\n\n", 0, true, 1},
		{"content-length body with NUL", 100, "SEND\ncontent-length:3\n\na\x00b\x00", 1, true, 1},
		{"two frames", 40, "SEND\ndestination:/a\n\nhello\x00SEND\ndestination:/b\n\nworld\x00", 7, true, 2},
		{"declared too large", 1000, "SEND\ncontent-length:1000000000\n", 0, false, 0},
		{"declared just too large", 40, "SEND\ncontent-length:30\n\n", 0, false, 0},
		{"body without length too large", 50, "SEND\ndestination:/a\n\n" + strings.Repeat("x", 100), 9, false, 0},
		{"endless command line", 50, strings.Repeat("S", 100), 3, false, 0},
		{"endless header", 50, "SEND\nx:" + strings.Repeat("y", 100), 0, false, 0},
		{"exactly max", 26, "SEND\ncontent-length:1\n\nx\x00", 0, true, 1},
		{"first content-length wins", 100, "SEND\ncontent-length:2\ncontent-length:99999\n\nab\x00", 0, true, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := frameGuard{max: tc.max}
			in := []byte(tc.input)
			step := tc.chunk
			if step == 0 {
				step = len(in)
			}
			frames := 0
			var err error
			for i := 0; i < len(in) && err == nil; i += step {
				var n, used int
				chunk := in[i:min(i+step, len(in))]
				used, n, err = g.scan(chunk, false)
				frames += n
				if err == nil && used != len(chunk) {
					t.Fatalf("scan used %d of %d bytes", used, len(chunk))
				}
			}
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("err = %v, want ErrFrameTooLarge", err)
			}
			if tc.ok && frames != tc.want {
				t.Fatalf("frames = %d, want %d", frames, tc.want)
			}
		})
	}
}

func TestServerConfigValidate(t *testing.T) {
	for _, cfg := range []ServerConfig{
		{Listen: "127.0.0.1:0", HeartBeat: 50 * time.Millisecond},
		{Listen: "127.0.0.1:0", MaxFrameSize: 10},
		{Listen: "127.0.0.1:0", MaxConns: -1},
		{Listen: "127.0.0.1:0", MaxFrameSize: 2 << 20, MaxPendingBytes: 1 << 20},
	} {
		if _, err := StartServer(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: err = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

func TestServerPubSub(t *testing.T) {
	s := startTestServer(t, ServerConfig{})
	a := dialTest(t, LinkConfig{URL: "stomp://" + s.Addr()})
	b := dialTest(t, LinkConfig{URL: s.Addr()})
	sa, _ := a.Subscribe("/topic/tandem.heartbeat")
	sb, _ := b.Subscribe("/topic/tandem.heartbeat")
	other, _ := b.Subscribe("/topic/other")
	waitSubscribed(t, s, "/topic/tandem.heartbeat", 2)

	hdr := map[string]string{"tandem-version": "1", "failover-id": "f00", "epoch": "7", "node": "a:b\\c\nd"}
	for i := 0; i < 50; i++ {
		hdr["seq"] = strconv.Itoa(i)
		if err := a.Publish(context.Background(), "/topic/tandem.heartbeat", hdr, []byte(fmt.Sprint("body ", i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []Subscription{sa, sb} {
		for i := 0; i < 50; i++ {
			m := recvWithin(t, sub, 5*time.Second)
			if m.Headers["seq"] != strconv.Itoa(i) || string(m.Body) != fmt.Sprint("body ", i) {
				t.Fatalf("message %d: %+v", i, m)
			}
			for k, v := range hdr {
				if k != "seq" && m.Headers[k] != v {
					t.Fatalf("header %s = %q, want %q", k, m.Headers[k], v)
				}
			}
			if _, ok := m.Headers["message-id"]; ok {
				t.Fatal("transport header leaked into Headers")
			}
		}
	}
	select {
	case m := <-other.C():
		t.Fatalf("other destination got %+v", m)
	default:
	}
	if st := s.Stats(); st.Connections != 2 || st.Messages != 50 {
		t.Fatalf("stats %+v", st)
	}
}

// waitSubscribed waits until the broker routes dest to n subscriptions.
func waitSubscribed(t testing.TB, s *Server, dest string, n int) {
	t.Helper()
	waitFor(t, 5*time.Second, "subscriptions to "+dest, func() bool {
		s.topicsMu.RLock()
		defer s.topicsMu.RUnlock()
		return len(s.topics[dest]) >= n
	})
}

func TestServerAuth(t *testing.T) {
	s := startTestServer(t, ServerConfig{Login: "tandem", Passcode: "s3cret"})
	var mu sync.Mutex
	var states []State
	l, err := Dial(context.Background(), LinkConfig{URL: s.Addr(), Login: "tandem", Passcode: "wrong", Log: testLog(t),
		BackoffMin: time.Hour, BackoffMax: time.Hour,
		OnState: func(st State) { mu.Lock(); states = append(states, st); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Connected() {
		t.Fatal("connected with a wrong passcode")
	}
	mu.Lock()
	got := append([]State(nil), states...)
	mu.Unlock()
	if len(got) != 1 || got[0].State != StateDisconnected || got[0].Err == nil {
		t.Fatalf("states %v", got)
	}
	if st := s.Stats(); st.AuthFailures != 1 {
		t.Fatalf("auth failures %d", st.AuthFailures)
	}
	dialTest(t, LinkConfig{URL: s.Addr(), Login: "tandem", Passcode: "s3cret"})
}

// rawConnect opens a raw STOMP connection (no heart-beats).
func rawConnect(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	fmt.Fprint(nc, "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00")
	r := bufio.NewReader(nc)
	f, err := frame.NewReader(r).Read()
	if err != nil || f.Command != frame.CONNECTED {
		t.Fatalf("CONNECT: %v %v", f, err)
	}
	return nc, r
}

func TestServerOversizedFrame(t *testing.T) {
	s := startTestServer(t, ServerConfig{MaxFrameSize: 4096})
	sub := dialTest(t, LinkConfig{URL: s.Addr()})
	ss, _ := sub.Subscribe("/topic/x")
	waitSubscribed(t, s, "/topic/x", 1)

	// Declared too large: refused on the header, nothing allocated.
	nc, r := rawConnect(t, s.Addr())
	fmt.Fprint(nc, "SEND\ndestination:/topic/x\ncontent-length:1073741824\n\n")
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := frame.NewReader(r).Read()
	if err != nil || f.Command != frame.ERROR {
		t.Fatalf("want ERROR frame, got %v %v", f, err)
	}
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("connection still open after ERROR")
	}

	// No content-length, body grows past the limit.
	nc2, r2 := rawConnect(t, s.Addr())
	fmt.Fprint(nc2, "SEND\ndestination:/topic/x\n\n"+strings.Repeat("x", 8192))
	_ = nc2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if f, err := frame.NewReader(r2).Read(); err != nil || f.Command != frame.ERROR {
		t.Fatalf("want ERROR frame, got %v %v", f, err)
	}
	waitFor(t, 5*time.Second, "oversized counted", func() bool { return s.Stats().OversizedFrames == 2 })

	// A frame just under the limit still goes through.
	nc3, _ := rawConnect(t, s.Addr())
	body := strings.Repeat("y", 3000)
	fmt.Fprintf(nc3, "SEND\ndestination:/topic/x\ncontent-length:%d\n\n%s\x00", len(body), body)
	if m := recvWithin(t, ss, 5*time.Second); string(m.Body) != body {
		t.Fatal("body mismatch")
	}
}

// TestServerMaxConnsAndConnectTimeout: at MaxConns a new connection takes
// the slot of the oldest one that has not completed CONNECT, and is refused
// when every slot is connected; a connection that does not complete CONNECT
// within ConnectTimeout is closed, whether it sends nothing, only
// heart-beats, or a CONNECT frame a byte at a time.
func TestServerMaxConnsAndConnectTimeout(t *testing.T) {
	s := startTestServer(t, ServerConfig{MaxConns: 2, ConnectTimeout: 300 * time.Millisecond})
	a, _ := rawConnect(t, s.Addr())
	silent, err := net.Dial("tcp", s.Addr()) // never sends CONNECT
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	waitFor(t, 5*time.Second, "two connections", func() bool { return s.Stats().Connections == 2 })
	start := time.Now()
	rawConnect(t, s.Addr()) // takes the silent one's slot
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("silent connection got data")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("silent connection not closed by the broker")
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("silent connection closed after %s: by the connect timeout, not evicted", d)
	}
	// Both slots connected: a fourth connection is refused.
	fourth, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer fourth.Close()
	_ = fourth.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := fourth.Read(make([]byte, 1)); err == nil {
		t.Fatal("fourth connection not closed")
	}
	if st := s.Stats(); st.RefusedConns != 1 || st.EvictedConns != 1 {
		t.Fatalf("stats %+v", st)
	}
	a.Close()
	waitFor(t, 5*time.Second, "one connection", func() bool { return s.Stats().Connections == 1 })

	// Connect timeouts: nothing; heart-beats only; a CONNECT trickled.
	for i, feed := range []string{"", strings.Repeat("\n", 100), "CONNECT\naccept-version:1.2\nhost:/\n\n\x00"} {
		nc, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		stop := make(chan struct{})
		go func() {
			for j := 0; j < len(feed); j++ {
				select {
				case <-stop:
					return
				case <-time.After(40 * time.Millisecond):
				}
				if _, err := nc.Write([]byte{feed[j]}); err != nil {
					return
				}
			}
		}()
		start := time.Now()
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(nc)
		close(stop)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("feed %d: not closed by the broker", i)
		}
		if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
			t.Fatalf("feed %d: closed after %s, want about 300ms", i, d)
		}
	}
	waitFor(t, 5*time.Second, "connect timeouts counted", func() bool { return s.Stats().ConnectTimeouts == 3 })
}

// TestServerCloseLeavesNoGoroutines: Close ends every goroutine the broker
// and go-stomp's connection code started (go-stomp's Serve is not used).
func TestServerCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	s, err := StartServer(ServerConfig{Listen: "127.0.0.1:0", Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	var links []*Link
	for i := 0; i < 5; i++ {
		l, err := Dial(context.Background(), LinkConfig{URL: s.Addr(), Log: testLog(t), BackoffMin: time.Hour, BackoffMax: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		links = append(links, l)
		sub, _ := l.Subscribe("/topic/x")
		_ = sub
	}
	// A client that never reads and one that never connects.
	nc, _ := rawConnect(t, s.Addr())
	fmt.Fprint(nc, "SUBSCRIBE\nid:1\ndestination:/topic/x\n\n\x00")
	silent, _ := net.Dial("tcp", s.Addr())
	defer silent.Close()
	waitSubscribed(t, s, "/topic/x", 6)
	for i := 0; i < 100; i++ {
		_ = links[0].Publish(context.Background(), "/topic/x", nil, make([]byte, 1024))
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	t.Logf("Close took %s", time.Since(start))
	if _, err := net.Dial("tcp", s.Addr()); err == nil {
		t.Fatal("still accepting after Close")
	}
	for _, l := range links {
		l.Close()
	}
	// The broker's goroutines must all end. go-stomp's client read
	// goroutine is not the broker's: it can block for good on its read
	// channel when the server goes away with messages in flight (Dial
	// enlarges that channel to make it rare), so it is not counted here.
	goroutinesSettle(t, base, 0, 5*time.Second, "github.com/go-stomp/stomp/v3.readLoop(")
}

// TestServerFrozenClients proves that clients that stop reading stall nobody:
// one in-process subscriber never reads, one subscriber process is
// SIGSTOPped, and a live subscriber keeps a low delivery latency while 1 KB
// messages go out at 1,000/s; both stalled clients are dropped.
//
// Latency is measured on a shared machine: a second attempt is allowed when
// the first misses the bound. Scheduler noise is sporadic, whereas the bug
// this guards against (go-stomp's router blocked on a frozen client) stalls
// every message for seconds and fails both attempts.
func TestServerFrozenClients(t *testing.T) {
	for attempt := 1; ; attempt++ {
		var problems []string
		t.Run(fmt.Sprint("attempt", attempt), func(t *testing.T) { problems = frozenClientsScenario(t) })
		if len(problems) == 0 {
			return
		}
		if attempt == 2 || t.Failed() {
			for _, p := range problems {
				t.Error(p)
			}
			return
		}
		t.Logf("attempt %d missed (%v); retrying once", attempt, problems)
	}
}

// frozenClientsScenario runs the scenario and returns what was out of bounds.
func frozenClientsScenario(t *testing.T) (problems []string) {
	const dest = "/topic/tandem.freeze"
	s := startTestServer(t, ServerConfig{MaxPendingBytes: 1 << 20})
	pub := dialTest(t, LinkConfig{URL: s.Addr()})
	live := dialTest(t, LinkConfig{URL: s.Addr()})
	ls, _ := live.Subscribe(dest)

	// Never reads: small receive buffer, subscribed, no heart-beats.
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.(*net.TCPConn).SetReadBuffer(8 << 10)
	fmt.Fprint(nc, "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00SUBSCRIBE\nid:1\ndestination:"+dest+"\n\n\x00")

	// A subscriber process, frozen once it is subscribed and receiving.
	ch := startChild(t, "subscriber", s.Addr()+" "+dest)
	if l := ch.line(t, 10*time.Second); l != "READY" {
		t.Fatalf("child said %q", l)
	}
	waitSubscribed(t, s, dest, 3)
	ch.signal(syscall.SIGSTOP)
	defer ch.kill()

	probe := startJitterProbe()
	var lat []time.Duration
	var slowAt []string
	t0 := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ls.C() {
			ns, _ := strconv.ParseInt(m.Headers["sent-ns"], 10, 64)
			d := time.Since(time.Unix(0, ns))
			lat = append(lat, d)
			if d > 20*time.Millisecond {
				slowAt = append(slowAt, fmt.Sprintf("%s:%s", time.Unix(0, ns).Sub(t0).Round(time.Millisecond), d.Round(time.Millisecond)))
			}
			if m.Headers["last"] == "1" {
				return
			}
		}
	}()

	body := make([]byte, 1024)
	const perTick, tick = 10, 10 * time.Millisecond
	start := time.Now()
	sent := 0
	ticker := time.NewTicker(tick)
	// At least 3 s of load, and on until both stalled clients are gone
	// (at most 8 s).
	for time.Since(start) < 3*time.Second || (s.Stats().SlowClients < 2 && time.Since(start) < 8*time.Second) {
		<-ticker.C
		for i := 0; i < perTick; i++ {
			h := map[string]string{"sent-ns": strconv.FormatInt(time.Now().UnixNano(), 10)}
			if err := pub.Publish(context.Background(), dest, h, body); err != nil {
				t.Fatal(err)
			}
			sent++
		}
	}
	ticker.Stop()
	elapsed := time.Since(start)
	_ = pub.Publish(context.Background(), dest, map[string]string{"sent-ns": strconv.FormatInt(time.Now().UnixNano(), 10), "last": "1"}, nil)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("live subscriber did not get the last message")
	}
	st := s.Stats()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("sent %d in %s; live received %d (dropped %d); p50 %s p99 %s max %s; stats %+v",
		sent, elapsed.Round(time.Millisecond), len(lat)-1, ls.Dropped(), p50, p99, lat[len(lat)-1], st)
	if len(slowAt) > 0 {
		t.Logf("deliveries over 20ms (sent at:latency): %v", slowAt)
	}
	if got := len(lat) - 1; got != sent {
		t.Errorf("live subscriber received %d of %d", got, sent)
	}
	if st.SlowClients < 2 {
		t.Errorf("slow clients dropped: %d, want 2", st.SlowClients)
	}
	waitFor(t, 5*time.Second, "stalled connections gone", func() bool { return s.Stats().Connections == 2 })
	bound := 50 * time.Millisecond
	if jp99, load := probe.stop(); jp99 > 5*time.Millisecond || load > 2*float64(runtime.NumCPU()) {
		// The machine itself is overloaded (other test suites): a plain
		// 1 ms sleep overshoots by jp99 at p99. Allow for that noise; a
		// router blocked by a frozen client stalls for seconds and still
		// fails.
		bound = 250 * time.Millisecond
		t.Logf("machine overloaded (1 ms sleep p99 overshoot %s, load %.1f on %d CPUs): latency bound relaxed to %s", jp99, load, runtime.NumCPU(), bound)
	}
	if p99 > bound {
		problems = append(problems, fmt.Sprintf("p99 delivery latency %s, want < %s", p99, bound))
	}
	return problems
}

// jitterProbe measures how late a 1 ms sleep wakes up in this process while
// a timing test runs: a measure of machine load.
type jitterProbe struct {
	stopc chan struct{}
	done  chan []time.Duration
}

func startJitterProbe() *jitterProbe {
	p := &jitterProbe{stopc: make(chan struct{}), done: make(chan []time.Duration, 1)}
	go func() {
		var over []time.Duration
		for {
			select {
			case <-p.stopc:
				p.done <- over
				return
			default:
			}
			t := time.Now()
			time.Sleep(time.Millisecond)
			over = append(over, time.Since(t)-time.Millisecond)
		}
	}()
	return p
}

// stop returns the p99 sleep overshoot and the 1-minute load average.
func (p *jitterProbe) stop() (time.Duration, float64) {
	close(p.stopc)
	over := <-p.done
	sort.Slice(over, func(i, j int) bool { return over[i] < over[j] })
	var p99 time.Duration
	if len(over) > 0 {
		p99 = over[len(over)*99/100]
	}
	var load float64
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Sscan(string(b), &load)
	}
	return p99, load
}

// TestServerAuthFailureFloodNoLeak: a client that fails authentication and
// keeps sending frames leaves no goroutine behind (go-stomp's read loop would
// block for ever on its frame queue without the pre-CONNECT gate).
func TestServerAuthFailureFloodNoLeak(t *testing.T) {
	s := startTestServer(t, ServerConfig{Login: "tandem", Passcode: "right"})
	base := runtime.NumGoroutine()
	var b strings.Builder
	b.WriteString("CONNECT\naccept-version:1.2\nhost:/\nlogin:tandem\npasscode:wrong\n\n\x00")
	for i := 0; i < 100; i++ {
		b.WriteString("SEND\ndestination:/topic/x\n\nflood\x00")
	}
	for i := 0; i < 3; i++ {
		nc, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if _, err := nc.Write([]byte(b.String())); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "failed connections closed", func() bool {
		st := s.Stats()
		return st.AuthFailures == 3 && st.Connections == 0
	})
	goroutinesSettle(t, base, 0, 5*time.Second)
	if st := s.Stats(); st.Messages != 0 {
		t.Fatalf("unauthenticated SENDs routed: %+v", st)
	}
}

// TestServerNonReadingPublisherNoLeak: a client that floods SENDs and never
// reads is dropped without leaving go-stomp's read loop blocked on its frame
// queue.
func TestServerNonReadingPublisherNoLeak(t *testing.T) {
	s := startTestServer(t, ServerConfig{WriteTimeout: 200 * time.Millisecond})
	base := runtime.NumGoroutine()
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprint(nc, "CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00")
	// Every SEND asks for a receipt the client never reads, with a big
	// receipt id so the server's writes back up quickly.
	rid := strings.Repeat("r", 3000)
	frame := "SEND\ndestination:/topic/nobody\nreceipt:" + rid + "\n\nx\x00"
	stop := time.Now().Add(10 * time.Second)
	_ = nc.SetWriteDeadline(stop)
	for s.Stats().SlowClients == 0 && time.Now().Before(stop) {
		if _, err := nc.Write([]byte(strings.Repeat(frame, 20))); err != nil {
			break
		}
	}
	waitFor(t, 10*time.Second, "flooding client dropped", func() bool {
		st := s.Stats()
		return st.SlowClients == 1 && st.Connections == 0
	})
	goroutinesSettle(t, base, 0, 5*time.Second)
}

// TestServerContentLengthZerosBeforeLogin: "content-length:" with 60 zeros
// before the number once slipped past the guard (it read 64 bytes of a
// header line) and go-stomp allocated the declared length while reading
// CONNECT, before the login was checked, over TLS too. Now the frame is
// refused and the client disconnected, and the heap does not grow.
func TestServerContentLengthZerosBeforeLogin(t *testing.T) {
	cert, _ := selfSigned(t)
	zeros := strings.Repeat("0", 60)
	for _, tc := range []struct {
		name  string
		tls   bool
		value string
	}{
		{"plain 1MB", false, zeros + "1000000"},
		{"plain 4GiB", false, zeros + "4294967295"},
		{"tls 4GiB", true, zeros + "4294967295"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ServerConfig{Login: "tandem", Passcode: "s3cret", MaxFrameSize: 4096}
			if tc.tls {
				cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			}
			s := startTestServer(t, cfg)
			var nc net.Conn
			var err error
			if tc.tls {
				nc, err = tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true})
			} else {
				nc, err = net.Dial("tcp", s.Addr())
			}
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			before := allocated()
			fmt.Fprintf(nc, "CONNECT\naccept-version:1.2\nhost:/\ncontent-length:%s\n\n", tc.value)
			_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			r := bufio.NewReader(nc)
			f, err := frame.NewReader(r).Read()
			if err != nil || f.Command != frame.ERROR {
				t.Fatalf("want ERROR frame, got %v %v", f, err)
			}
			if _, err := r.ReadByte(); err == nil {
				t.Fatal("connection still open after ERROR")
			}
			if grew := allocated() - before; grew > 64<<20 {
				t.Fatalf("heap allocations grew by %d bytes", grew)
			}
			waitFor(t, 5*time.Second, "refusal counted", func() bool { return s.Stats().MalformedFrames == 1 })
			if st := s.Stats(); st.AuthFailures != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}
