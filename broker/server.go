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
	DefaultConnectTimeout  = 5 * time.Second
	DefaultMaxPendingBytes = 4 << 20
	DefaultIdleTimeout     = 30 * time.Second
	DefaultMaxSubs         = 256
	DefaultMaxPerSource    = 256
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
	// MaxConns bounds concurrent connections. When it is reached, a new
	// connection takes the place of the oldest one that has not completed
	// CONNECT yet, or is closed at once if there is none. Default 4096.
	MaxConns int
	// MaxConnsPerSource bounds the connections from one source IP address
	// (loopback included) that are not trusted. When login/passcode are set,
	// a connection is trusted once it has authenticated (with the broker's
	// login: the servers' own links and agents) and no longer counts; the
	// bound then only applies to connections still before CONNECT, and as
	// with MaxConns a new one takes the place of the oldest of them. With
	// no login set nothing is trusted: every connection counts, and past the
	// bound new connections are closed at once. Default 256.
	MaxConnsPerSource int
	// MaxSubscriptions bounds the subscriptions of one connection; a client
	// that asks for more gets an ERROR frame and is disconnected. Default
	// 256.
	MaxSubscriptions int
	// IdleTimeout closes a connection that sends neither a frame nor a
	// heart-beat for this long (clients must heart-beat more often; the
	// embedded broker's Link does every second by default). Default 30s;
	// at least 2×HeartBeat.
	IdleTimeout time.Duration
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
	// ConnectTimeout closes connections that have not completed CONNECT
	// (authenticated, when login/passcode are set) within it, TLS handshake
	// included. Default 5s.
	ConnectTimeout time.Duration
	// Login and Passcode, if either is set, are required from every client
	// (compared in constant time).
	Login, Passcode string
	// TrustedLogin and TrustedPasscode, when set, are a second credential:
	// a client presenting it is accepted (whatever Login says) and trusted
	// from its CONNECT on — it never counts toward MaxConnsPerSource and is
	// never evicted for a newcomer. The servers of a group present one
	// derived from their group key, so that nobody else's connections can
	// crowd their own links out, while agents may still connect without a
	// login.
	TrustedLogin, TrustedPasscode string
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
	if c.MaxConnsPerSource == 0 {
		c.MaxConnsPerSource = DefaultMaxPerSource
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = DefaultMaxSubs
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = max(DefaultIdleTimeout, 2*c.HeartBeat)
	}
	if c.Log == nil {
		c.Log = logrus.StandardLogger()
	}
	switch {
	case c.MaxConnsPerSource < 1:
		return c, fmt.Errorf("%w: MaxConnsPerSource (%d) must be positive", ErrInvalidConfig, c.MaxConnsPerSource)
	case c.MaxSubscriptions < 1:
		return c, fmt.Errorf("%w: MaxSubscriptions (%d) must be positive", ErrInvalidConfig, c.MaxSubscriptions)
	case c.IdleTimeout < 2*c.HeartBeat:
		return c, fmt.Errorf("%w: IdleTimeout (%s) must be at least twice HeartBeat (%s)", ErrInvalidConfig, c.IdleTimeout, c.HeartBeat)
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
	RefusedConns     uint64 // closed at once because MaxConns or MaxConnsPerSource was reached
	EvictedConns     uint64 // closed before CONNECT to make room for a new connection
	ConnectTimeouts  uint64 // closed for not completing CONNECT within ConnectTimeout
	IdleTimeouts     uint64 // closed for sending nothing within IdleTimeout
	TooManySubs      uint64 // closed for asking for more than MaxSubscriptions
	DroppedMessages  uint64 // copies not queued for a subscriber whose backlog was twice MaxPendingBytes
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

	mu        sync.Mutex
	conns     map[*serverConn]struct{} // every connection until its goroutines are done
	live      int                      // connections holding a slot (not evicted or dead)
	untrusted map[string]int           // live untrusted connections per source IP
	probation int                      // connections admitted past MaxConnsPerSource, to present TrustedLogin
	closed    bool

	topicsMu sync.RWMutex
	topics   map[string]map[*client.Subscription]*serverConn
	locals   map[string]map[*localSub]struct{} // Local buses' subscriptions

	acceptDone chan struct{}
	connWG     sync.WaitGroup // per-connection goroutines we own
	closeOnce  sync.Once

	totalConns, refused, evicted, connTimeouts, idleTimeouts, tooManySubs, dropped atomic.Uint64
	authFail, oversized, malformed, slow, messages                                 atomic.Uint64
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
		untrusted:  make(map[string]int),
		topics:     make(map[string]map[*client.Subscription]*serverConn),
		locals:     make(map[string]map[*localSub]struct{}),
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
		EvictedConns:     s.evicted.Load(),
		ConnectTimeouts:  s.connTimeouts.Load(),
		IdleTimeouts:     s.idleTimeouts.Load(),
		TooManySubs:      s.tooManySubs.Load(),
		DroppedMessages:  s.dropped.Load(),
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
	src := sourceOf(nc.RemoteAddr())
	var victims []*serverConn
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	refuse := ""
	probation := false
	if s.untrusted[src] >= s.cfg.MaxConnsPerSource {
		if v := s.oldestPending(src); v != nil {
			s.releaseLocked(v)
			victims = append(victims, v)
		} else if s.cfg.TrustedLogin != "" {
			// Every slot of this source is taken by a connected client:
			// admit it on probation, so that a server presenting the
			// trusted credential still gets in (anyone else is closed at
			// CONNECT). The probation pool is small; a newcomer takes the
			// place of its oldest member still before CONNECT.
			if s.probation >= probationSlots {
				if v := s.oldestProbation(); v != nil {
					s.releaseLocked(v)
					victims = append(victims, v)
				}
			}
			if s.probation < probationSlots {
				probation = true
			} else {
				refuse = "too many connections from this source"
			}
		} else {
			refuse = "too many connections from this source"
		}
	}
	if refuse == "" && s.live >= s.cfg.MaxConns {
		if v := s.oldestPending(""); v != nil {
			s.releaseLocked(v)
			victims = append(victims, v)
		} else {
			refuse = "too many connections"
		}
	}
	if refuse != "" {
		s.mu.Unlock()
		nc.Close()
		s.refused.Add(1)
		log.WithFields(logrus.Fields{"max_conns": s.cfg.MaxConns, "max_conns_per_source": s.cfg.MaxConnsPerSource}).Warn("connection refused: " + refuse)
		return
	}
	c := newServerConn(s, nc, log)
	c.src = src
	c.holdsSlot = true
	s.conns[c] = struct{}{}
	s.live++
	if probation {
		c.probation = true
		s.probation++
	} else {
		s.untrusted[src]++
	}
	s.mu.Unlock()
	for _, v := range victims {
		s.evicted.Add(1)
		v.log.Warn("connection closed before CONNECT: its slot went to a newer connection")
		v.kill("evicted before CONNECT")
	}
	s.totalConns.Add(1)

	c.connectTimer.Store(time.AfterFunc(s.cfg.ConnectTimeout, c.connectTimedOut))
	s.connWG.Add(2)
	go c.forward()
	go c.pump()
	// go-stomp's per-connection state machine: a read goroutine and a
	// process goroutine, both ending when the connection closes.
	client.NewConn(c, c, c.reqs)
}

// sourceOf is the IP address MaxConnsPerSource counts by.
func sourceOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// oldestPending is the oldest connection (from src, or any source if src is
// empty) that holds a slot and has not completed CONNECT. Caller holds s.mu.
func (s *Server) oldestPending(src string) *serverConn {
	var old *serverConn
	for c := range s.conns {
		if !c.holdsSlot || c.connected.Load() || c.dead.Load() || (src != "" && c.src != src) {
			continue
		}
		if old == nil || c.accepted.Before(old.accepted) {
			old = c
		}
	}
	return old
}

// probationSlots is how many connections may wait past MaxConnsPerSource
// to present the servers' trusted credential.
const probationSlots = 8

// oldestProbation is the oldest connection on probation still before
// CONNECT. Caller holds s.mu.
func (s *Server) oldestProbation() *serverConn {
	var old *serverConn
	for c := range s.conns {
		if !c.probation || !c.holdsSlot || c.connected.Load() || c.dead.Load() {
			continue
		}
		if old == nil || c.accepted.Before(old.accepted) {
			old = c
		}
	}
	return old
}

// releaseLocked gives up c's slot (once). Caller holds s.mu.
func (s *Server) releaseLocked(c *serverConn) {
	if !c.holdsSlot {
		return
	}
	c.holdsSlot = false
	s.live--
	if c.probation {
		c.probation = false
		s.probation--
		return
	}
	if !c.trusted {
		if s.untrusted[c.src]--; s.untrusted[c.src] <= 0 {
			delete(s.untrusted, c.src)
		}
	}
}

// trust marks c as authenticated with the broker's login: it no longer
// counts against MaxConnsPerSource.
func (s *Server) trust(c *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.trusted || !c.holdsSlot {
		return
	}
	c.trusted = true
	if c.probation {
		c.probation = false
		s.probation--
		return
	}
	if s.untrusted[c.src]--; s.untrusted[c.src] <= 0 {
		delete(s.untrusted, c.src)
	}
}

// onProbation reports whether c was admitted past MaxConnsPerSource and
// has not proved to be a server.
func (s *Server) onProbation(c *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.probation
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
// blocks: each copy goes to the subscriber connection's bounded queue (or a
// Local subscription's drop-oldest buffer). It
// returns the subscribers whose backlog it took past MaxPendingBytes while
// they were still taking bytes (see throttle).
func (s *Server) route(f *frame.Frame) (full []*serverConn) {
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
		if c.enqueue(sub, &frame.Frame{Command: f.Command, Header: f.Header.Clone(), Body: f.Body}, size) {
			full = append(full, c)
		}
	}
	s.deliverLocal(dest, f)
	return full
}

// drainTimeout is how long a subscriber past MaxPendingBytes that is still
// taking bytes gets to come back under it (and how long one blocked write
// marks a subscriber as stalled) before it is dropped as slow.
func (s *Server) drainTimeout() time.Duration {
	return min(max(s.cfg.WriteTimeout/8, 50*time.Millisecond), 250*time.Millisecond)
}

// throttle makes the publisher pub wait (its forward goroutine; go-stomp and
// then TCP push back on its socket) until every subscriber in full is back
// under MaxPendingBytes. A subscriber that does not get there within
// drainTimeout is dropped as slow: a client that reads fast is never dropped
// because others publish large frames quickly, and one that reads slowly
// delays a publisher by drainTimeout at most.
func (s *Server) throttle(pub *serverConn, full []*serverConn) {
	deadline := time.Now().Add(s.drainTimeout())
	for _, c := range full {
		for {
			c.qmu.Lock()
			q := c.qbytes
			c.qmu.Unlock()
			if q <= s.cfg.MaxPendingBytes || c.dead.Load() || pub.dead.Load() {
				break
			}
			if time.Now().After(deadline) {
				c.dropSlow(c.log.WithFields(logrus.Fields{"pending_bytes": q, "drain_timeout": s.drainTimeout()}), "backlog not drained in time")
				break
			}
			time.Sleep(time.Millisecond)
		}
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

	src          string      // source IP (MaxConnsPerSource)
	accepted     time.Time   //
	holdsSlot    bool        // counted in srv.live (guarded by srv.mu)
	probation    bool        // admitted past MaxConnsPerSource: must present TrustedLogin (guarded by srv.mu)
	trusted      bool        // authenticated with the login (guarded by srv.mu)
	trustedCred  atomic.Bool // presented TrustedLogin/TrustedPasscode
	connectTimer atomic.Pointer[time.Timer]
	writing      atomic.Int64 // UnixNano when the Write in progress began, 0 if none
	connTimedOut atomic.Bool
	connectOnce  sync.Once
	droppedSlow  atomic.Bool

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
		accepted:    time.Now(),
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
		c.srv.mu.Lock()
		c.srv.releaseLocked(c)
		c.srv.mu.Unlock()
		if tm := c.connectTimer.Load(); tm != nil {
			tm.Stop()
		}
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

// onConnected runs once go-stomp has accepted CONNECT: when it writes
// CONNECTED (so the client never sees CONNECTED before the broker counts the
// connection as connected) or, at the latest, on go-stomp's ConnectedOp.
func (c *serverConn) onConnected() {
	c.connectOnce.Do(func() {
		if tm := c.connectTimer.Load(); tm != nil {
			tm.Stop()
		}
		if c.srv.authRequired() || c.trustedCred.Load() {
			// go-stomp accepted the broker's login and passcode, or the
			// servers' trusted credential.
			c.srv.trust(c)
		}
		if c.srv.onProbation(c) {
			// Admitted past MaxConnsPerSource for a server's sake, and not
			// a server.
			c.srv.refused.Add(1)
			c.log.Warn("connection refused: too many connections from this source")
			c.kill("too many connections from this source")
			return
		}
		c.connected.Store(true)
		close(c.connectedCh)
		c.log.Debug("client connected")
	})
}

// connectTimedOut closes a connection that has not completed CONNECT in
// ConnectTimeout.
func (c *serverConn) connectTimedOut() {
	if c.connected.Load() || c.dead.Load() {
		return
	}
	c.noteConnectTimeout()
	c.kill("connect timeout")
}

// noteConnectTimeout counts and logs a connect timeout once (the timer and
// the read deadline race for it).
func (c *serverConn) noteConnectTimeout() {
	if c.connTimedOut.CompareAndSwap(false, true) {
		c.srv.connTimeouts.Add(1)
		c.log.WithField("connect_timeout", c.srv.cfg.ConnectTimeout).Info("no CONNECT in time: disconnecting")
	}
}

// dropSlow disconnects c as a slow client, counted and logged once.
func (c *serverConn) dropSlow(log logrus.FieldLogger, why string) {
	if !c.dead.Load() && c.droppedSlow.CompareAndSwap(false, true) {
		c.srv.slow.Add(1)
		log.Warn("slow client: " + why + ", disconnecting")
	}
	c.kill("slow client: " + why)
}

// stalled reports whether a write to the client has been blocked for d.
func (c *serverConn) stalled(d time.Duration) bool {
	w := c.writing.Load()
	return w != 0 && time.Since(time.Unix(0, w)) >= d
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
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && !c.dead.Load() {
			if c.connected.Load() {
				c.srv.idleTimeouts.Add(1)
				c.log.WithField("idle_timeout", c.srv.cfg.IdleTimeout).Info("client sent nothing (no frame, no heart-beat) in time: disconnecting")
			} else {
				c.noteConnectTimeout()
			}
		}
		c.markDead()
	}
	return n, err
}

// SetReadDeadline keeps the connect deadline in force until the first frame
// has arrived (go-stomp clears the deadline before CONNECT), and then never
// lets a read wait longer than IdleTimeout (go-stomp sets no deadline for a
// client without heart-beats, and twice the client's own interval for one
// with). go-stomp sets it before every frame and heart-beat.
func (c *serverConn) SetReadDeadline(t time.Time) error {
	if !c.sawFrame.Load() {
		if t.IsZero() || t.After(c.connectDL) {
			t = c.connectDL
		}
	} else if idle := time.Now().Add(c.srv.cfg.IdleTimeout); t.IsZero() || t.After(idle) {
		t = idle
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
	if !c.connected.Load() && len(p) >= 10 && string(p[:10]) == "CONNECTED\n" {
		c.onConnected()
	}
	now := time.Now()
	_ = c.Conn.SetWriteDeadline(now.Add(c.srv.cfg.WriteTimeout))
	c.writing.Store(now.UnixNano())
	_, err := c.Conn.Write(p)
	c.writing.Store(0)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.dropSlow(c.log.WithField("write_timeout", c.srv.cfg.WriteTimeout), "not reading")
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
	if tl, tp := c.srv.cfg.TrustedLogin, c.srv.cfg.TrustedPasscode; tl != "" && tp != "" {
		okL := subtle.ConstantTimeCompare([]byte(login), []byte(tl))
		okP := subtle.ConstantTimeCompare([]byte(passcode), []byte(tp))
		if okL&okP == 1 {
			c.trustedCred.Store(true)
			return true
		}
	}
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
				if len(subs) >= c.srv.cfg.MaxSubscriptions {
					if !c.dead.Load() {
						c.srv.tooManySubs.Add(1)
						c.log.WithField("max_subscriptions", c.srv.cfg.MaxSubscriptions).Warn("too many subscriptions: disconnecting client")
						c.writeError("too many subscriptions", fmt.Sprintf("at most %d subscriptions per connection", c.srv.cfg.MaxSubscriptions))
						c.kill("too many subscriptions")
					}
					continue
				}
				subs[r.Sub] = struct{}{}
				c.srv.subscribe(r.Sub, c)
			}
		case client.UnsubscribeOp:
			delete(subs, r.Sub)
			c.srv.unsubscribe(r.Sub)
		case client.EnqueueOp:
			if full := c.srv.route(r.Frame); len(full) > 0 {
				c.srv.throttle(c, full)
			}
		case client.ConnectedOp:
			c.onConnected()
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

// enqueue adds one message for sub. Past MaxPendingBytes, a connection
// whose socket has not taken bytes for drainTimeout is dropped as a slow
// client; one that is still reading gets the message (up to twice
// MaxPendingBytes; past that the copy is dropped) and enqueue reports true
// so that the publisher is throttled.
func (c *serverConn) enqueue(sub *client.Subscription, f *frame.Frame, size int) (full bool) {
	if c.dead.Load() {
		return false
	}
	limit := c.srv.cfg.MaxPendingBytes
	c.qmu.Lock()
	if c.qbytes+size > limit {
		if c.stalled(c.srv.drainTimeout()) {
			q := c.qbytes
			c.qmu.Unlock()
			c.dropSlow(c.log.WithField("pending_bytes", q), "backlog full and not reading")
			return false
		}
		if c.qbytes+size > 2*limit {
			c.qmu.Unlock()
			c.srv.dropped.Add(1)
			return true
		}
		full = true
	}
	c.queue = append(c.queue, queued{sub, f, size})
	c.qbytes += size
	c.qmu.Unlock()
	select {
	case c.qsignal <- struct{}{}:
	default:
	}
	return full
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
