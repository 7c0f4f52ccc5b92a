package broker

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"
	"github.com/go-stomp/stomp/v3/server/client"
	"github.com/sirupsen/logrus"
)

// Server defaults.
const (
	DefaultMaxFrameSize    = 1 << 20
	DefaultMaxConns        = 4096
	DefaultWriteTimeout    = 2 * time.Second
	DefaultServerHeartBeat = time.Second
	MinServerHeartBeat     = 100 * time.Millisecond
	DefaultConnectTimeout  = 10 * time.Second
	DefaultMaxPendingBytes = 4 << 20
)

// ServerConfig configures the embedded broker. Zero values take the defaults
// above.
type ServerConfig struct {
	// Listen is the TCP address, e.g. "127.0.0.1:61620"; port 0 picks one.
	Listen string
	// MaxFrameSize bounds every frame a client sends (command, headers and
	// body). A larger frame is refused before it is read into memory: the
	// client gets an ERROR frame and is disconnected. Default 1 MiB.
	MaxFrameSize int
	// MaxHeaderLine bounds each command and header line of a frame (bytes,
	// without the LF) and MaxHeaders the header lines of one frame; a frame
	// over either is refused like an oversized one. Defaults 8 KiB (at most
	// MaxFrameSize) and 64.
	MaxHeaderLine, MaxHeaders int
	// MaxConns bounds concurrent connections; further ones are closed at
	// once. Default 4096.
	MaxConns int
	// WriteTimeout: a client that stops reading is disconnected when one
	// write to it blocks this long. Default 2s.
	WriteTimeout time.Duration
	// MaxPendingBytes bounds the messages queued for one client that is not
	// keeping up; past it the client is disconnected. Default 4 MiB.
	MaxPendingBytes int
	// HeartBeat is the smallest heart-beat interval the broker agrees to
	// (go-stomp's Server.HeartBeat); clients asking for less get this.
	// Default 1s, lowest allowed 100ms.
	HeartBeat time.Duration
	// ConnectTimeout closes connections that send no complete frame (such
	// as CONNECT) within it. Default 10s.
	ConnectTimeout time.Duration
	// Login and Passcode, if either is set, are required from every client
	// (compared in constant time).
	Login, Passcode string
	// TLS, if set, makes the listener speak TLS only.
	TLS *tls.Config
	// Log receives structured logs; default logrus.StandardLogger().
	Log logrus.FieldLogger
}

func (c ServerConfig) withDefaults() (ServerConfig, error) {
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = DefaultMaxFrameSize
	}
	if c.MaxHeaderLine == 0 {
		c.MaxHeaderLine = min(DefaultMaxHeaderLine, c.MaxFrameSize)
	}
	if c.MaxHeaders == 0 {
		c.MaxHeaders = DefaultMaxHeaders
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.MaxPendingBytes == 0 {
		c.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if c.HeartBeat == 0 {
		c.HeartBeat = DefaultServerHeartBeat
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Log == nil {
		c.Log = logrus.StandardLogger()
	}
	switch {
	case c.MaxFrameSize < 256:
		return c, fmt.Errorf("%w: MaxFrameSize (%d) must be at least 256 bytes", ErrInvalidConfig, c.MaxFrameSize)
	case c.MaxHeaderLine < 64 || c.MaxHeaderLine > c.MaxFrameSize:
		return c, fmt.Errorf("%w: MaxHeaderLine (%d) must be between 64 and MaxFrameSize (%d)", ErrInvalidConfig, c.MaxHeaderLine, c.MaxFrameSize)
	case c.MaxHeaders < 8:
		return c, fmt.Errorf("%w: MaxHeaders (%d) must be at least 8", ErrInvalidConfig, c.MaxHeaders)
	case c.MaxConns < 1:
		return c, fmt.Errorf("%w: MaxConns (%d) must be positive", ErrInvalidConfig, c.MaxConns)
	case c.WriteTimeout < 0:
		return c, fmt.Errorf("%w: WriteTimeout (%s) must be positive", ErrInvalidConfig, c.WriteTimeout)
	case c.HeartBeat < MinServerHeartBeat:
		return c, fmt.Errorf("%w: HeartBeat (%s) must be at least %s", ErrInvalidConfig, c.HeartBeat, MinServerHeartBeat)
	case c.MaxPendingBytes < c.MaxFrameSize:
		return c, fmt.Errorf("%w: MaxPendingBytes (%d) must be at least MaxFrameSize (%d)", ErrInvalidConfig, c.MaxPendingBytes, c.MaxFrameSize)
	case c.ConnectTimeout < 0:
		return c, fmt.Errorf("%w: ConnectTimeout (%s) must be positive", ErrInvalidConfig, c.ConnectTimeout)
	}
	return c, nil
}

// ServerStats are counters of a Server.
type ServerStats struct {
	Connections      int    // open now
	TotalConnections uint64 // accepted since start
	RefusedConns     uint64 // closed at once because MaxConns was reached
	AuthFailures     uint64
	OversizedFrames  uint64 // frames refused for exceeding MaxFrameSize, MaxHeaderLine or MaxHeaders
	MalformedFrames  uint64 // frames refused for a content-length that is not plain decimal
	SlowClients      uint64 // clients dropped for not reading (WriteTimeout or MaxPendingBytes)
	Messages         uint64 // SEND frames routed
}

// Server is the embedded STOMP broker. See the package documentation for how
// it is built from go-stomp's server/client package.
type Server struct {
	cfg ServerConfig
	log logrus.FieldLogger
	ln  net.Listener

	mu     sync.Mutex
	conns  map[*serverConn]struct{}
	closed bool

	topicsMu sync.RWMutex
	topics   map[string]map[*client.Subscription]*serverConn

	acceptDone chan struct{}
	connWG     sync.WaitGroup // per-connection goroutines we own
	closeOnce  sync.Once

	totalConns, refused, authFail, oversized, malformed, slow, messages atomic.Uint64
}

// StartServer listens on cfg.Listen and serves in the background. It returns
// once the listener is open.
func StartServer(cfg ServerConfig) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("broker: listen %s: %w", cfg.Listen, err)
	}
	if cfg.TLS != nil {
		ln = tls.NewListener(ln, cfg.TLS)
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Log.WithField("component", "broker"),
		ln:         ln,
		conns:      make(map[*serverConn]struct{}),
		topics:     make(map[string]map[*client.Subscription]*serverConn),
		acceptDone: make(chan struct{}),
	}
	go s.acceptLoop()
	s.log.WithFields(logrus.Fields{"addr": s.Addr(), "tls": cfg.TLS != nil, "auth": s.authRequired()}).Info("embedded broker listening")
	return s, nil
}

// Addr is the bound listen address (host:port), useful with port 0.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	return ServerStats{
		Connections:      n,
		TotalConnections: s.totalConns.Load(),
		RefusedConns:     s.refused.Load(),
		AuthFailures:     s.authFail.Load(),
		OversizedFrames:  s.oversized.Load(),
		MalformedFrames:  s.malformed.Load(),
		SlowClients:      s.slow.Load(),
		Messages:         s.messages.Load(),
	}
}

// closeWait bounds how long Close waits for connection goroutines.
const closeWait = 5 * time.Second

// Close stops accepting, closes every open connection and waits (bounded)
// for every goroutine of the server to end. Safe to call more than once.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := make([]*serverConn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		err = s.ln.Close()
		<-s.acceptDone
		for _, c := range conns {
			c.kill("broker closing")
		}
		done := make(chan struct{})
		go func() { s.connWG.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(closeWait):
			err = errors.Join(err, fmt.Errorf("%w: connection goroutines still running after %s", ErrCloseTimeout, closeWait))
		}
		s.log.WithField("addr", s.Addr()).Info("embedded broker closed")
	})
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (s *Server) authRequired() bool { return s.cfg.Login != "" || s.cfg.Passcode != "" }

func (s *Server) acceptLoop() {
	defer close(s.acceptDone)
	var backoff time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, like net/http.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			s.log.WithError(err).WithField("retry_in", backoff).Warn("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.serve(nc)
	}
}

func (s *Server) serve(nc net.Conn) {
	log := s.log.WithField("remote", nc.RemoteAddr().String())
	s.mu.Lock()
	if s.closed || len(s.conns) >= s.cfg.MaxConns {
		closed := s.closed
		s.mu.Unlock()
		nc.Close()
		if !closed {
			s.refused.Add(1)
			log.WithField("max_conns", s.cfg.MaxConns).Warn("connection refused: too many connections")
		}
		return
	}
	c := newServerConn(s, nc, log)
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.totalConns.Add(1)

	s.connWG.Add(2)
	go c.forward()
	go c.pump()
	// go-stomp's per-connection state machine: a read goroutine and a
	// process goroutine, both ending when the connection closes.
	client.NewConn(c, c, c.reqs)
}

func (s *Server) subscribe(sub *client.Subscription, c *serverConn) {
	s.topicsMu.Lock()
	m := s.topics[sub.Destination()]
	if m == nil {
		m = make(map[*client.Subscription]*serverConn)
		s.topics[sub.Destination()] = m
	}
	m[sub] = c
	s.topicsMu.Unlock()
}

func (s *Server) unsubscribe(sub *client.Subscription) {
	s.topicsMu.Lock()
	if m := s.topics[sub.Destination()]; m != nil {
		delete(m, sub)
		if len(m) == 0 {
			delete(s.topics, sub.Destination())
		}
	}
	s.topicsMu.Unlock()
}

// route fans one MESSAGE out to every subscriber of its destination. It never
// blocks: each copy goes to the subscriber connection's bounded queue.
func (s *Server) route(f *frame.Frame) {
	s.messages.Add(1)
	dest := f.Header.Get(frame.Destination)
	size := len(f.Body) + 64 // + the headers go-stomp adds per copy
	for i := 0; i < f.Header.Len(); i++ {
		k, v := f.Header.GetAt(i)
		size += len(k) + len(v) + 2
	}
	s.topicsMu.RLock()
	defer s.topicsMu.RUnlock()
	for sub, c := range s.topics[dest] {
		// Share the body; each subscriber needs its own header (the
		// subscription and message-id headers are set per copy).
		c.enqueue(sub, &frame.Frame{Command: f.Command, Header: f.Header.Clone(), Body: f.Body}, size)
	}
}

// A serverConn is one accepted connection: the net.Conn go-stomp's
// client.Conn reads and writes (with a frame-size guard on reads and a
// deadline on writes), the client.Config it sees, and two goroutines of
// ours: forward (requests from go-stomp to the router) and pump (messages
// from the router to go-stomp).
type serverConn struct {
	net.Conn
	srv  *Server
	log  logrus.FieldLogger
	reqs chan client.Request

	guard       frameGuard
	sawFrame    atomic.Bool
	connectDL   time.Time
	wmu         sync.Mutex    // serialises writes to the socket
	dead        atomic.Bool   // no more traffic: set by markDead
	deadOnce    sync.Once     //
	deadCh      chan struct{} // closed by markDead
	killOnce    sync.Once
	connected   atomic.Bool   // go-stomp accepted CONNECT
	connectedCh chan struct{} // closed when connected is set
	held        []byte        // read but not yet handed to go-stomp (before CONNECT)

	qmu      sync.Mutex
	queue    []queued
	qbytes   int
	qsignal  chan struct{}
	pumpDone chan struct{}

	// Flow control between pump and go-stomp's process loop: frames handed
	// over (sent) minus MESSAGE frames it has started writing (written) is
	// what sits in go-stomp's 16-frame queue; pump keeps it below that so it
	// never blocks on the queue, even after the process loop has ended.
	sent    uint64
	written atomic.Uint64
	credit  chan struct{}
}

// maxInFlight is how many frames pump lets sit in go-stomp's per-connection
// write queue (capacity 16).
const maxInFlight = 8

type queued struct {
	sub  *client.Subscription
	f    *frame.Frame
	size int // bytes counted against MaxPendingBytes
}

func newServerConn(s *Server, nc net.Conn, log logrus.FieldLogger) *serverConn {
	c := &serverConn{
		Conn:        nc,
		srv:         s,
		log:         log,
		reqs:        make(chan client.Request, 64),
		connectDL:   time.Now().Add(s.cfg.ConnectTimeout),
		deadCh:      make(chan struct{}),
		connectedCh: make(chan struct{}),
		qsignal:     make(chan struct{}, 1),
		pumpDone:    make(chan struct{}),
		credit:      make(chan struct{}, 1),
	}
	c.guard = frameGuard{max: s.cfg.MaxFrameSize, maxLine: s.cfg.MaxHeaderLine, maxHeaders: s.cfg.MaxHeaders}
	_ = nc.SetReadDeadline(c.connectDL)
	return c
}

// kill closes the socket once; go-stomp's goroutines then see errors and
// clean up, after which forward and pump end.
func (c *serverConn) kill(reason string) {
	c.killOnce.Do(func() {
		c.markDead()
		// Close the TCP socket itself: tls.Conn.Close would first try to
		// write close_notify, which blocks (up to 5 s) on a client that
		// does not read, and kill runs on the routing path.
		if tc, ok := c.Conn.(*tls.Conn); ok {
			tc.NetConn().Close()
		} else {
			c.Conn.Close()
		}
		c.log.WithField("reason", reason).Debug("connection closed by broker")
	})
}

// markDead stops all traffic to the connection (the socket may stay open a
// moment longer).
func (c *serverConn) markDead() {
	c.dead.Store(true)
	c.deadOnce.Do(func() { close(c.deadCh) })
}

// Read implements net.Conn for go-stomp with the frame-size guard. Until
// go-stomp has accepted CONNECT it hands over one frame only and holds the
// rest back: go-stomp's read loop would otherwise block for ever on its
// 16-frame queue when the process loop gives up on the connection (failed
// authentication, say) while the client keeps sending.
func (c *serverConn) Read(p []byte) (int, error) {
	gated := !c.connected.Load()
	if gated && c.sawFrame.Load() {
		select {
		case <-c.connectedCh:
			gated = false
		case <-c.deadCh:
			return 0, net.ErrClosed
		}
	}
	var n int
	var err error
	if len(c.held) > 0 {
		n = copy(p, c.held)
		c.held = c.held[n:]
	} else {
		n, err = c.Conn.Read(p)
	}
	if n > 0 {
		used, frames, gerr := c.guard.scan(p[:n], gated)
		if frames > 0 {
			c.sawFrame.Store(true)
		}
		if gerr != nil {
			if errors.Is(gerr, ErrMalformedFrame) {
				c.srv.malformed.Add(1)
				c.log.WithError(gerr).Warn("malformed frame: refused, disconnecting client")
				c.writeError("malformed frame", gerr.Error())
			} else {
				c.srv.oversized.Add(1)
				c.log.WithError(gerr).WithFields(logrus.Fields{"max_frame_size": c.guard.max}).Warn("frame too large: refused, disconnecting client")
				c.writeError("frame too large", fmt.Sprintf("%v (frames up to %d bytes, lines up to %d, %d headers)", gerr, c.guard.max, c.guard.maxLine, c.guard.maxHeaders))
			}
			c.kill("refused frame")
			return 0, gerr
		}
		if used < n {
			c.held = append(append([]byte(nil), p[used:n]...), c.held...)
			n = used
		}
	}
	if err != nil {
		c.markDead()
	}
	return n, err
}

// SetReadDeadline keeps the connect deadline in force until the first frame
// has arrived (go-stomp clears the deadline before CONNECT).
func (c *serverConn) SetReadDeadline(t time.Time) error {
	if !c.sawFrame.Load() && (t.IsZero() || t.After(c.connectDL)) {
		t = c.connectDL
	}
	return c.Conn.SetReadDeadline(t)
}

// Write implements net.Conn for go-stomp: every write has a deadline, and a
// client that does not take the bytes in time is disconnected.
//
// Failed writes are not reported to go-stomp: the socket is closed and the
// bytes dropped, so go-stomp's process loop keeps draining its 16-frame read
// queue until its read loop sees the closed socket and ends. (Had the
// process loop returned on the write error, a read loop blocked on a full
// queue would never end.)
func (c *serverConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.dead.Load() {
		return len(p), nil
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	_, err := c.Conn.Write(p)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.srv.slow.Add(1)
			c.log.WithField("write_timeout", c.srv.cfg.WriteTimeout).Warn("slow client: not reading, disconnecting")
		}
		c.kill("write failed")
		return len(p), nil
	}
	// go-stomp ends the connection after it writes an ERROR frame (each
	// frame up to 4 KiB is one Write). Mark it dead now so the pump stops
	// handing it messages before go-stomp's process loop is gone.
	if len(p) >= 6 && string(p[:6]) == "ERROR\n" {
		c.markDead()
	}
	if len(p) >= 8 && string(p[:8]) == "MESSAGE\n" {
		c.written.Add(1)
		select {
		case c.credit <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// writeError sends a best-effort ERROR frame directly on the socket.
func (c *serverConn) writeError(msg, detail string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.dead.Load() {
		return
	}
	f := frame.New(frame.ERROR, frame.Message, msg)
	f.Body = []byte(detail)
	_ = c.Conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_ = frame.NewWriter(c.Conn).Write(f)
	c.markDead()
}

// client.Config for go-stomp.

func (c *serverConn) HeartBeat() time.Duration { return c.srv.cfg.HeartBeat }

func (c *serverConn) Authenticate(login, passcode string) bool {
	if !c.srv.authRequired() {
		return true
	}
	okLogin := subtle.ConstantTimeCompare([]byte(login), []byte(c.srv.cfg.Login))
	okPass := subtle.ConstantTimeCompare([]byte(passcode), []byte(c.srv.cfg.Passcode))
	if okLogin&okPass == 1 {
		return true
	}
	c.srv.authFail.Add(1)
	c.log.WithField("login", login).Warn("authentication failed")
	return false
}

func (c *serverConn) Logger() stomp.Logger { return stompLogger{c.log} }

// Close is how go-stomp closes the socket when it is done.
func (c *serverConn) Close() error {
	c.kill("closed by go-stomp")
	return nil
}

// forward reads go-stomp's requests for this connection until it reports the
// connection gone.
func (c *serverConn) forward() {
	defer c.srv.connWG.Done()
	subs := make(map[*client.Subscription]struct{})
	for r := range c.reqs {
		switch r.Op {
		case client.SubscribeOp:
			if _, ok := subs[r.Sub]; !ok {
				subs[r.Sub] = struct{}{}
				c.srv.subscribe(r.Sub, c)
			}
		case client.UnsubscribeOp:
			delete(subs, r.Sub)
			c.srv.unsubscribe(r.Sub)
		case client.EnqueueOp:
			c.srv.route(r.Frame)
		case client.ConnectedOp:
			c.connected.Store(true)
			close(c.connectedCh)
			c.log.Debug("client connected")
		case client.DisconnectedOp:
			for sub := range subs {
				c.srv.unsubscribe(sub)
			}
			c.kill("disconnected")
			<-c.pumpDone
			c.srv.mu.Lock()
			delete(c.srv.conns, c)
			c.srv.mu.Unlock()
			return
		case client.RequeueOp:
			// Only queue destinations requeue; every destination here is
			// a topic.
		}
	}
}

// enqueue adds one message for sub; a connection whose backlog exceeds
// MaxPendingBytes is dropped as a slow client.
func (c *serverConn) enqueue(sub *client.Subscription, f *frame.Frame, size int) {
	if c.dead.Load() {
		return
	}
	c.qmu.Lock()
	if c.qbytes+size > c.srv.cfg.MaxPendingBytes {
		c.qmu.Unlock()
		c.srv.slow.Add(1)
		c.log.WithField("pending_bytes", c.qbytes).Warn("slow client: backlog full, disconnecting")
		c.kill("backlog full")
		return
	}
	c.queue = append(c.queue, queued{sub, f, size})
	c.qbytes += size
	c.qmu.Unlock()
	select {
	case c.qsignal <- struct{}{}:
	default:
	}
}

// pump hands queued messages to go-stomp's connection. go-stomp's
// Subscription.SendTopicFrame blocks when the connection's 16-frame write
// queue is full; pump never lets it fill (see sent/written), so it never
// blocks and a client that does not read stalls nobody else: its backlog
// grows here until MaxPendingBytes or WriteTimeout drops it.
func (c *serverConn) pump() {
	defer c.srv.connWG.Done()
	defer close(c.pumpDone)
	for {
		select {
		case <-c.qsignal:
		case <-c.deadCh:
			return
		}
		for {
			c.qmu.Lock()
			if len(c.queue) == 0 {
				c.queue = nil
				c.qmu.Unlock()
				break
			}
			q := c.queue[0]
			c.queue[0] = queued{}
			c.queue = c.queue[1:]
			c.qbytes -= q.size
			c.qmu.Unlock()
			for c.sent-c.written.Load() >= maxInFlight {
				select {
				case <-c.credit:
				case <-c.deadCh:
					return
				}
			}
			if c.dead.Load() {
				return
			}
			c.sent++
			q.sub.SendTopicFrame(q.f)
		}
	}
}
