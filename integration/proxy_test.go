package integration

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// proxy is a controllable TCP proxy on a loopback port in front of target.
// Tests point one side of a link at it (a backup's primary_location, an
// agent file's stomp_port via a server's advertise, heartbeat_broker) so
// they can cut, freeze or slow that link alone.
//
//	Cut       closes every open connection and refuses new ones (the peer
//	          sees a reset: a partition the kernel reports at once)
//	Blackhole keeps connections open (and accepts new ones) but forwards
//	          nothing: the peer looks frozen, only heart-beats notice
//	Delay(d)  forwards everything d late (per chunk)
//	Heal      back to normal; held connections are closed so that clients
//	          reconnect on a clean stream
type proxy struct {
	t      testing.TB
	target string
	ln     net.Listener

	mu     sync.Mutex
	mode   int // modeOK, modeCut, modeHole
	delay  time.Duration
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

const (
	modeOK = iota
	modeCut
	modeHole
)

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, target: target, ln: ln, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode, closed := p.mode, p.closed
		if mode == modeCut || closed {
			p.mu.Unlock()
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) // RST: refused as fast as the kernel can say it
			}
			c.Close()
			continue
		}
		p.conns[c] = true
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.mode == modeCut {
		return false
	}
	p.conns[c] = true
	return true
}

func (p *proxy) forget(cs ...net.Conn) {
	p.mu.Lock()
	for _, c := range cs {
		delete(p.conns, c)
	}
	p.mu.Unlock()
}

func (p *proxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer client.Close()
	// A blackholed proxy accepts but never reaches the target: like a frozen
	// peer whose kernel still completes the handshake.
	for p.current() == modeHole {
		if !p.waitChange(client) {
			p.forget(client)
			return
		}
	}
	server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil || !p.track(server) {
		if server != nil {
			server.Close()
		}
		p.forget(client)
		return
	}
	defer server.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client) }()
	go func() { defer wg.Done(); p.pipe(client, server) }()
	wg.Wait()
	p.forget(client, server)
}

func (p *proxy) current() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return modeCut
	}
	return p.mode
}

// waitChange waits while the proxy is blackholed; false when c should end.
func (p *proxy) waitChange(c net.Conn) bool {
	time.Sleep(5 * time.Millisecond)
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && p.conns[c]
}

// pipe copies src to dst, honouring blackhole (hold the bytes back, forward
// nothing) and delay (each chunk leaves d after it arrived: latency, not a
// bandwidth limit).
func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	type chunk struct {
		b  []byte
		at time.Time
	}
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{buf[:n], time.Now()}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		for {
			p.mu.Lock()
			mode, d, alive := p.mode, p.delay, p.conns[src] && p.conns[dst] && !p.closed
			p.mu.Unlock()
			if !alive {
				src.Close()
				for range ch {
				}
				return
			}
			if mode == modeHole {
				time.Sleep(5 * time.Millisecond) // held, never delivered while frozen
				continue
			}
			if w := time.Until(c.at.Add(d)); w > 0 {
				time.Sleep(w)
			}
			break
		}
		if _, err := dst.Write(c.b); err != nil {
			src.Close()
			for range ch {
			}
			return
		}
	}
}

// dropAll closes every connection through the proxy.
func (p *proxy) dropAll() {
	p.mu.Lock()
	cs := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	p.conns = map[net.Conn]bool{}
	p.mu.Unlock()
	for _, c := range cs {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

// Cut closes every connection and refuses new ones until Heal.
func (p *proxy) Cut() {
	p.mu.Lock()
	p.mode = modeCut
	p.mu.Unlock()
	p.dropAll()
}

// Blackhole keeps connections (and accepts new ones) but forwards nothing.
func (p *proxy) Blackhole() {
	p.mu.Lock()
	p.mode = modeHole
	p.mu.Unlock()
}

// Delay forwards every chunk d late (0: no delay).
func (p *proxy) Delay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Heal restores forwarding. Connections held by a blackhole are closed (their
// streams may be half-delivered); the clients reconnect.
func (p *proxy) Heal() {
	p.mu.Lock()
	wasHole := p.mode == modeHole
	p.mode, p.delay = modeOK, 0
	p.mu.Unlock()
	if wasHole {
		p.dropAll()
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.dropAll()
	p.wg.Wait()
}

func TestProxyCutBlackholeDelayHeal(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	p := newProxy(t, echo.Addr().String())
	roundTrip := func(timeout time.Duration) error {
		c, err := net.DialTimeout("tcp", p.addr(), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		_, err = io.ReadFull(c, b)
		return err
	}
	if err := roundTrip(time.Second); err != nil {
		t.Fatalf("normal: %v", err)
	}
	p.Cut()
	if err := roundTrip(300 * time.Millisecond); err == nil {
		t.Fatal("cut proxy forwarded")
	}
	p.Heal()
	if err := roundTrip(time.Second); err != nil {
		t.Fatalf("healed: %v", err)
	}
	p.Blackhole()
	if err := roundTrip(300 * time.Millisecond); err == nil {
		t.Fatal("blackholed proxy forwarded")
	}
	p.Heal()
	p.Delay(200 * time.Millisecond)
	t0 := time.Now()
	if err := roundTrip(2 * time.Second); err != nil {
		t.Fatalf("delayed: %v", err)
	}
	if d := time.Since(t0); d < 350*time.Millisecond {
		t.Fatalf("delay not applied: %s", d)
	}
	p.Heal()
	// An open connection is cut.
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(b); err == nil {
		t.Fatal("open connection survived Cut")
	}
}
